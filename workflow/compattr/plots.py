"""Figures of the study."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from compattr.analysis import LdsTable, bootstrap_curves

__all__ = [
    "plot_lds_vs_ablations",
    "plot_headline",
    "headline_methods",
    "plot_unified",
    "plot_sweep",
    "plot_top_k",
    "plot_fixing",
    "plot_forgetting",
    "method_colors",
]

LABELS = {
    "coar": "COAR (min-norm least squares, as its code runs)",
    "ls_early_stopped": "least squares, early-stopped",
    "ridge": "ridge (CV penalty)",
    "lasso": "lasso (CV penalty)",
    "relu_collapse": "ReLU-collapse",
    "relu_collapse_raw": "ReLU-collapse as the seed writes it (raw collapse)",
    "linear_collapse": "linear-collapse (no ReLU)",
    "relu_net": "ReLU net (uncollapsed)",
    "gradient_prior": "gradient prior + ridge correction",
    "gradient_prior_lasso": "gradient prior + lasso correction",
    "relu_collapse_prior": "ReLU-collapse from the gradient prior",
    "atp": "attribution patching",
    "atp_relu": "attribution patching, exact through the first ReLU",
    "atp_mean": "gradient at the mask mean",
    "atp_path": "gradient along a path (integrated)",
    "atp_masks_4": "gradient averaged over 4 random masks",
    "atp_masks_16": "gradient averaged over 16 random masks",
    "atp_relu_mean": "exact through the first ReLU, at the mean",
    "atp_relu_masks_16": "exact through the first ReLU, 16 masks",
    "atp_top_8": "attribution patching, top 8 measured",
    "atp_top_32": "attribution patching, top 32 measured",
    "atp_relu_top_8": "exact through the first ReLU, top 8 measured",
    "atp_relu_top_32": "exact through the first ReLU, top 32 measured",
    "atp_mean_top_32": "gradient at the mask mean, top 32 measured there",
    "atp_relu_mean_top_32": "exact through the first ReLU at the mean, top 32 measured there",
    "atp_margin": "margin's maximum exact (every class)",
    "atp_margin_top_8": "margin's maximum exact, top 8 measured",
    "atp_relu_margin": "margin's maximum and first ReLU exact",
    "atp_relu_margin_2": "margin's maximum (2 closest classes) and first ReLU exact",
    "atp_relu_margin_2_top_8": "margin's maximum (2 closest classes) and first ReLU exact, top 8 measured",
    "atp_relu_margin_mean": "margin's maximum and first ReLU exact, at the mean",
    "atp_relu_margin_mean_2": "margin's maximum (2 closest classes) and first ReLU exact, at the mean",
    "atp_relu_margin_mean_2_top_8": "margin's maximum (2 closest), first ReLU exact at the mean, top 8 measured there",
    "influence": "influence function (data)",
    "loo": "leave-one-out",
    "random": "random components (mean over draws)",
}


def _panel(
    ax: Axes,
    scores: Mapping[str, np.ndarray],
    sizes: Mapping[str, np.ndarray],
    colors: Mapping[str, str],
    baselines: Sequence[str],
    n_bootstrap: int,
    ci: float,
    seed: int,
    per_component: int | None = None,
    cost: str = "forward-equivalent passes (one per ablated mask; 3 per gradient point)",
) -> None:
    if per_component:  # x in passes / components
        sizes = {e: s / per_component for e, s in sizes.items()}
    for estimator, values in scores.items():
        mean, low, high, _ = bootstrap_curves(values, n_bootstrap, ci, np.random.default_rng(seed))
        color, label = colors[estimator], LABELS.get(estimator, estimator)
        if estimator in baselines:  # a single point at its cost: a prior, or leave-one-out (a star and a line)
            spent = sizes[estimator][0] * (per_component or 1)
            label = f"{label} ({spent:,.0f} passes)"
        _draw(ax, sizes[estimator], (mean, low, high), color, estimator in baselines, estimator == "loo", label)
    ax.set_xscale("log")
    if per_component:
        ax.axvline(1.0, color="0.3", linewidth=0.8)
        ax.set_xlabel(textwrap.fill(f"forward-equivalent passes / components ({per_component} components)", 48))
    else:
        ax.set_xlabel(textwrap.fill(cost, 48))  # wrapped: a long label is cut at the figure's edge
    ax.grid(True, which="both", alpha=0.3)


def _draw(
    ax: Axes,
    sizes: np.ndarray,
    curve: tuple[np.ndarray, np.ndarray, np.ndarray],
    color: object,
    point: bool,
    exact: bool,
    label: str | None = None,
) -> object:
    """One method's mean and interval: a curve with a band, or a point with error bars (leave-one-out a
    star with a dashed line at its level). Returns the legend handle."""
    mean, low, high = curve
    if not point:
        (handle,) = ax.plot(sizes, mean, marker="o", ms=3.5, color=color, label=label)
        ax.fill_between(sizes, low, high, color=color, alpha=0.2, linewidth=0)
        return handle
    handle = ax.errorbar(
        sizes,
        mean,
        yerr=[mean - low, high - mean],
        marker="*" if exact else "D",
        ms=11 if exact else 5,
        color=color,
        linestyle="none",
        capsize=2,
        label=label,
    )
    if exact:
        ax.axhline(mean[0], color=color, linestyle="--", linewidth=1)
    return handle


def method_colors(methods: Sequence[str] | Mapping[str, object]) -> dict[str, tuple[float, ...]]:
    """One colour per method, in order: tab20's ten strong colours, then their light pairs, then tab20b's
    and tab20c's 40 (distinct for up to 60 methods; a study runs about 20)."""
    tab20 = plt.get_cmap("tab20").colors
    palette = tab20[0::2] + tab20[1::2] + plt.get_cmap("tab20b").colors + plt.get_cmap("tab20c").colors
    return {name: palette[k % len(palette)] for k, name in enumerate(methods)}


def plot_lds_vs_ablations(
    table: LdsTable,
    *,
    ood: Mapping[float, LdsTable] | None = None,
    baselines: Sequence[str] = (),
    targets: Sequence[float] = (),
    ablation_rate: float | None = None,
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    title: str = "",
    per_component: int | None = None,
    cost: str = "forward-equivalent passes (one per ablated mask; 3 per gradient point)",
) -> Figure:
    """Mean LDS over inputs against forward-equivalent passes, one line per estimator.

    Panels: LDS (Spearman) and Pearson on held-out masks at the training ablation
    rate, then LDS on each out-of-distribution rate in ``ood``. Shaded bands and
    error bars are percentile bootstrap intervals over inputs, models and mask
    replicates together; ``baselines`` (the priors and leave-one-out) are points
    at their cost, leave-one-out a star with a dashed line; dotted grey lines mark
    the LDS targets of the summary table. With ``per_component`` (the number of
    components) the x axis is passes / components, with a line at 1, where
    minimum-norm least squares dips. ``cost`` labels the x axis (a data study's: trained models).
    """
    ood = ood or {}
    colors = method_colors(table.estimators)
    rate = ablation_rate
    panels = [("LDS (Spearman)", table.spearman, table.sizes, rate), ("Pearson", table.pearson, table.sizes, rate)]
    panels += [("LDS (Spearman)", t.spearman, t.sizes, a) for a, t in ood.items()]
    ncols = 2
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(11, 4.3 * nrows), sharey=True, layout="constrained", squeeze=False)
    for ax, (metric, scores, sizes, rate) in zip(axes.flat, panels, strict=False):
        _panel(ax, scores, sizes, colors, baselines, n_bootstrap, ci, seed, per_component, cost)
        for target in targets:
            ax.axhline(target, color="0.5", linestyle=":", linewidth=1)
        where = "held-out masks" if rate is None else f"held-out masks, ablation rate {rate:g}"
        if ax is not axes.flat[0] and ax is not axes.flat[1]:
            where += " (out of distribution)"
        ax.set_title(f"{metric}: {where}", fontsize=10)
        ax.set_ylabel(f"mean {metric} over inputs")
        ax.tick_params(labelleft=True)
    legend = {"title": f"{ci:.0%} bootstrap CI (sources in the title)", "title_fontsize": 8}
    spare = axes.flat[len(panels) :]
    for ax in spare:
        ax.axis("off")
    handles = axes.flat[0].get_legend_handles_labels()
    if len(spare):
        spare[0].legend(*handles, loc="center", fontsize=9, **legend)
    else:
        fig.legend(*handles, loc="outside lower center", ncols=3, fontsize=8, **legend)
    if title:
        fig.suptitle(title)
    return fig


#: The seed's comparison, in the headline figure's order: COAR as run, ReLU-collapse and the seed's
#: literal variant, the tuned linear estimators; then the best prior and leave-one-out.
HEADLINE = ("coar", "relu_collapse", "relu_collapse_raw", "ridge", "lasso")


def headline_methods(table: LdsTable, priors: Sequence[str]) -> list[str]:
    """The headline figure's methods the study has: :data:`HEADLINE`, the prior with the best mean LDS, ``loo``."""
    methods = [name for name in HEADLINE if name in table.estimators]
    scored = [name for name in priors if name in table.estimators]
    if scored:
        methods.append(max(scored, key=lambda name: float(np.mean(table.spearman[name]))))
    return methods + (["loo"] if "loo" in table.estimators else [])


def plot_headline(
    table: LdsTable,
    *,
    priors: Sequence[str] = (),
    targets: Sequence[float] = (),
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    title: str = "",
    cost: str = "forward-equivalent passes (one per ablated mask; 3 per gradient point)",
) -> Figure:
    """The seed's comparison alone: held-out LDS against passes for :func:`headline_methods`, one panel.

    The same curves, intervals and markers as :func:`plot_lds_vs_ablations` (priors and
    leave-one-out as points at their cost), for the few methods a reader compares first.
    """
    methods = headline_methods(table, priors)
    points = [name for name in methods if name in priors or name == "loo"]
    palette = plt.get_cmap("tab10").colors
    colors = {name: palette[k % len(palette)] for k, name in enumerate(methods)}
    fig, ax = plt.subplots(figsize=(8, 5.2), layout="constrained")
    scores = {name: table.spearman[name] for name in methods}
    _panel(ax, scores, {name: table.sizes[name] for name in methods}, colors, points, n_bootstrap, ci, seed, None, cost)
    for target in targets:
        ax.axhline(target, color="0.5", linestyle=":", linewidth=1)
    ax.set_ylabel("mean LDS (Spearman) over inputs, held-out masks")
    # below the panel: inside it, the legend would hide a curve's dip (COAR's, where masks equal components)
    handles = ax.get_legend_handles_labels()
    fig.legend(
        *handles, loc="outside lower center", ncols=2, fontsize=8, title=f"{ci:.0%} bootstrap CI", title_fontsize=8
    )
    if title:
        ax.set_title(title, fontsize=10)
    return fig


#: What one perturbed evaluation is, per kind of unit (the unified figure's x axes).
EVALUATIONS = {"components": "ablated forward passes", "features": "masked inputs", "data": "trained models"}


def plot_unified(
    studies: Mapping[str, tuple[str, LdsTable]],
    *,
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> Figure:
    """Mean LDS against perturbed evaluations for several kinds of unit: one panel per study.

    ``studies`` maps a panel title to ``(kind, table)``, the table read with
    ``read_lds_csv(..., by="evaluations")``. Every estimator has one colour across
    the panels; a method at one size is a diamond with error bars (first-order priors at
    zero evaluations, or at the units they measure by ablation; the x axis is linear
    below 10), leave-one-out a star at one evaluation per unit with a dashed line.
    """
    colors = method_colors(dict.fromkeys(e for _, table in studies.values() for e in table.estimators))
    fig, axes = plt.subplots(
        1, len(studies), figsize=(5.2 * len(studies), 4.6), sharey=True, layout="constrained", squeeze=False
    )
    shown: dict[str, object] = {}
    for ax, (title, (kind, table)) in zip(axes.flat, studies.items(), strict=True):
        for estimator in table.estimators:
            sizes = table.sizes[estimator]
            mean, low, high, _ = bootstrap_curves(
                table.spearman[estimator], n_bootstrap, ci, np.random.default_rng(seed)
            )
            exact = estimator == "loo"
            point = len(sizes) == 1  # a prior, leave-one-out, or an estimator fitted at one size
            shown.setdefault(estimator, _draw(ax, sizes, (mean, low, high), colors[estimator], point, exact))
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlim(left=0)
        ax.set_xlabel(f"perturbed evaluations ({EVALUATIONS.get(kind, kind)})")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.tick_params(labelleft=True)
    axes.flat[0].set_ylabel("mean LDS (Spearman) over inputs")
    fig.legend(
        list(shown.values()),
        [LABELS.get(e, e) for e in shown],
        loc="outside lower center",
        ncols=3,
        fontsize=9,
        title=f"{ci:.0%} bootstrap CI over inputs (and models, mask draws where a study has several)",
        title_fontsize=8,
    )
    return fig


def plot_sweep(
    table: LdsTable,
    selection: Mapping[int, str],
    *,
    reference: LdsTable | None = None,
    reference_estimators: Sequence[str] = ("coar", "ridge"),
    title: str = "",
) -> Figure:
    """Mean held-out LDS of every sweep setting against training masks, the validation-selected path in bold.

    ``reference`` (the main study's table) adds dashed lines for ``reference_estimators``.
    """
    fig, ax = plt.subplots(figsize=(8.5, 5), layout="constrained")
    cmap = plt.get_cmap("tab20")
    for k, setting in enumerate(table.estimators):
        ax.plot(
            table.sizes[setting],
            table.mean_curve(setting),
            color=cmap(k % 20),
            linewidth=1,
            marker="o",
            ms=2.5,
            label=setting,
        )
    sizes = np.array(sorted(selection))
    chosen = [table.mean_curve(selection[n])[list(table.sizes[selection[n]]).index(n)] for n in sizes]
    ax.plot(sizes, chosen, color="black", linewidth=2.5, label="selected on validation", zorder=5)
    for estimator in reference_estimators:
        if reference is not None and estimator in reference.sizes:
            ax.plot(
                reference.sizes[estimator],
                reference.mean_curve(estimator),
                color="0.3",
                linestyle="--" if estimator == "coar" else ":",
                linewidth=1.5,
                label=f"{estimator} (reference)",
            )
    ax.set_xscale("log")
    ax.set_xlabel("ablated forward passes per input (training masks)")
    ax.set_ylabel("mean LDS (Spearman) on held-out masks")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    if title:
        ax.set_title(title)
    return fig


def plot_top_k(
    rows: Sequence[Mapping[str, str]], n_bootstrap: int = 1000, ci: float = 0.95, seed: int = 0, title: str = ""
) -> Figure:
    """True margin drop against the number of components ablated, per method at its largest train size.

    ``rows`` is the top-k table (:data:`compattr.editing.TOP_K_COLUMNS`); each line is the mean
    over inputs (and models) of replicate 0, with a bootstrap band over inputs.
    """
    rows = [row for row in rows if row["replicate"] == "0"]
    drops, largest = _by_method_and_k(rows, lambda row: -float(row["true_change"]))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    _k_lines(ax, drops, largest, np.random.default_rng(seed), n_bootstrap, ci)
    ax.set_ylabel("true margin drop (mean over inputs)")
    ax.set_title(title or f"top-k ablation; {ci:.0%} bootstrap band over inputs", fontsize=9)
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def plot_fixing(
    rows: Sequence[Mapping[str, str]], n_bootstrap: int = 1000, ci: float = 0.95, seed: int = 0, title: str = ""
) -> Figure:
    """Fraction of mistakes fixed, and the edited model's accuracy on other images, against k.

    ``rows`` is the fixing table (:data:`compattr.editing.FIX_COLUMNS`): one line per method at
    its largest train size, mean over misclassified inputs with a bootstrap band over them; the
    dotted line is the unedited model's accuracy.
    """
    rng = np.random.default_rng(seed)
    edits = [row for row in rows if int(row["k"]) > 0]
    fig, (fixed_ax, other_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    fixed, largest = _by_method_and_k(edits, lambda row: float(row["fixed"]))
    _k_lines(fixed_ax, fixed, largest, rng, n_bootstrap, ci)
    fixed_ax.set_ylabel("fraction of mistakes fixed")
    others, largest = _by_method_and_k(edits, lambda row: float(row["other_accuracy"]))
    _k_lines(other_ax, others, largest, rng, n_bootstrap, ci)
    unedited = [float(row["other_accuracy"]) for row in rows if int(row["k"]) == 0]
    if unedited:
        other_ax.axhline(np.mean(unedited), color="k", linestyle=":", linewidth=1, label="unedited")
    other_ax.set_ylabel("accuracy of the edited model on other images")
    fig.suptitle(
        title or f"fixing a mistake: each input's top k by predicted rise; {ci:.0%} bootstrap band over inputs",
        fontsize=9,
    )
    other_ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def _by_method_and_k(
    rows: Sequence[Mapping[str, str]], value: Callable[[Mapping[str, str]], float]
) -> tuple[dict[str, dict[int, list[float]]], dict[str, int]]:
    """``value`` of each row at its method's largest train size, by method and k; and those sizes."""
    largest: dict[str, int] = {}
    for row in rows:
        largest[row["estimator"]] = max(largest.get(row["estimator"], 0), int(row["n_train"]))
    values: dict[str, dict[int, list[float]]] = {}
    for row in rows:
        if int(row["n_train"]) == largest[row["estimator"]]:
            values.setdefault(row["estimator"], {}).setdefault(int(row["k"]), []).append(value(row))
    return values, largest


def _k_lines(
    ax: Axes,
    values: dict[str, dict[int, list[float]]],
    largest: dict[str, int],
    rng: np.random.Generator,
    n_bootstrap: int,
    ci: float,
) -> None:
    """One line per method: the mean against k (log axis), with a bootstrap band over inputs; random dashed."""
    for index, (method, by_k) in enumerate(values.items()):
        ks = sorted(by_k)
        table = np.array([by_k[k] for k in ks])  # (k, inputs)
        if not np.isfinite(table).any():
            continue
        means = np.nanmean(table, axis=1)
        draws = rng.integers(0, table.shape[1], size=(n_bootstrap, table.shape[1]))
        boot = np.nanmean(table[:, draws], axis=2)  # (k, draws)
        low, high = np.nanquantile(boot, [(1 - ci) / 2, (1 + ci) / 2], axis=1)
        style = {"color": "0.4", "linestyle": "--"} if method == "random" else {"linestyle": "-:"[index // 10 % 2]}
        n = largest[method]
        label = LABELS.get(method, method) + (f" ({n} masks)" if n else "")
        (line,) = ax.plot(ks, means, marker="o", markersize=3, label=label, **style)
        ax.fill_between(ks, low, high, alpha=0.15, color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("components ablated (top k per input)")


def plot_forgetting(rows: Sequence[Mapping[str, str]], title: str = "") -> Figure:
    """Accuracy on the forgotten class against the other classes' accuracy, per method, as k grows.

    ``rows`` is the forgetting table (:data:`compattr.editing.FORGET_COLUMNS`), averaged over
    classes and models; the unedited model is the point at k = 0.
    """
    points: dict[str, dict[int, list[tuple[float, float]]]] = {}
    for row in rows:
        cell = (float(row["class_accuracy"]), float(row["other_accuracy"]))
        points.setdefault(row["estimator"], {}).setdefault(int(row["k"]), []).append(cell)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for index, (method, by_k) in enumerate(points.items()):
        ks = sorted(by_k)
        mean = np.array([np.mean(by_k[k], axis=0) for k in ks])
        style = "-:"[index // 10 % 2]
        ax.plot(mean[:, 1], mean[:, 0], style, marker="o", markersize=3, label=LABELS.get(method, method))
    ax.set_xlabel("accuracy on the other classes")
    ax.set_ylabel("accuracy on the forgotten class")
    ax.set_title(
        title or "forgetting a class: top-k components of its inputs ablated (k grows along a line)", fontsize=9
    )
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig
