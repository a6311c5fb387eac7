"""Every Markdown report compattr writes: the study's ``summary.md`` and its sections, and the tables in them.

The numbers come from :mod:`compattr.analysis` (LDS tables, passes needed, bootstrap intervals) and
:mod:`compattr.editing` (what the edits did); this module only words and lays them out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from compattr.analysis import (
    LdsTable,
    coefficient_agreement,
    curve_dips,
    error_by_module,
    fit_quality_rows,
    needed_per_model,
    prior_choice_rows,
)
from compattr.editing import editing_summary, fixing_summary, forgetting_summary

__all__ = [
    "markdown_table",
    "scale_markdown",
    "two_layer_markdown",
    "summary_markdown",
    "cheapest_markdown",
    "mean_lds_markdown",
    "per_model_markdown",
    "prior_choice_markdown",
    "fit_quality_markdown",
    "grouped_markdown",
    "grouped_gain_markdown",
    "summary_section",
    "study_notes",
]


def markdown_table(rows: Sequence[dict[str, object]], columns: Sequence[str]) -> str:
    """A GitHub-flavoured Markdown table; NaN cells are left empty."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            if np.isnan(value):
                return ""
            return f"{value:.0f}" if abs(value) >= 10 else f"{value:.2f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def scale_markdown(fits: Sequence[dict[str, object]]) -> str:
    """The scale benchmark's table (``results/bench/scale.json``'s ``fits``): time, memory and LDS per fit.

    The estimate column is the estimator's :meth:`~compattr.estimators.ComponentModel.memory_bytes` now.
    """
    from compattr.estimators import make_estimator

    rows = []
    for fit in fits:
        done = fit.get("status") == "ok"
        sizes = (fit["n_masks"], fit["n_components"], fit["n_inputs"])
        rows.append(
            {
                "estimator": f"`{fit['estimator']}`",
                "components": f"{fit['n_components']:,}",
                "masks": f"{fit['n_masks']:,}",
                "form": ("masks x masks" if fit["dual"] else "components x components") if done else "",
                "time": f"{fit['seconds']:.1f} s" if done else fit["status"],
                "peak memory of the fit": f"{fit['peak_bytes'] / 2**30:.2f} GiB" if done else "",
                "estimate": f"{make_estimator(fit['estimator']).memory_bytes(*sizes) / 2**30:.2f} GiB" if done else "",
                "held-out LDS": f"{fit['lds']:.3f}" if done else "",
            }
        )
    return markdown_table(rows, list(rows[0]) if rows else ["estimator"])


def two_layer_markdown(
    summary: Sequence[dict[str, object]],
    fits: Sequence[dict[str, object]],
    shared: Sequence[dict[str, Any]] = (),
) -> str:
    """The 2-layer settings benchmark's tables (``results/bench/two_layer.json``): totals, every size, and
    the estimators that train the same networks fitted one by one and with one training (``shared``)."""
    totals = [
        {
            "estimator": f"`{row['estimator']}`",
            "reference settings": f"{row['reference_s']:.1f} s",
            "current settings": f"{row['current_s']:.1f} s",
            "speedup": f"{row['speedup']:.1f}x",
            "lowest held-out LDS change": f"{row['lowest_lds_change']:+.4f} at {row['lowest_lds_change_at']:,} masks",
        }
        for row in summary
    ]
    by = {(f["estimator"], f["settings"], f["n_train"]): f for f in fits}
    sizes = dict.fromkeys((estimator, n) for estimator, _, n in by)
    detail = [
        {
            "estimator": f"`{estimator}`",
            "masks": f"{n:,}",
            "time, reference / current": f"{by[estimator, 'reference', n]['seconds']:.2f} / "
            f"{by[estimator, 'current', n]['seconds']:.2f} s",
            "median steps kept": f"{by[estimator, 'reference', n]['median_steps']:.0f} / "
            f"{by[estimator, 'current', n]['median_steps']:.0f}",
            "validation Spearman, reference / current": f"{by[estimator, 'reference', n]['validation_spearman']:.4f}"
            f" / {by[estimator, 'current', n]['validation_spearman']:.4f}",
            "held-out LDS, reference / current": f"{by[estimator, 'reference', n]['lds']:.4f} / "
            f"{by[estimator, 'current', n]['lds']:.4f}",
        }
        for estimator, n in sizes
    ]
    tables = markdown_table(totals, list(totals[0])) + "\n" + markdown_table(detail, list(detail[0]))
    together = [
        {
            "estimators": ", ".join(f"`{name}`" for name in row["estimators"]),
            "one by one": f"{row['alone_s']:.1f} s",
            "one training": f"{row['together_s']:.1f} s",
            "speedup": f"{row['speedup']:.2f}x",
            "largest held-out LDS difference": f"{row['max_lds_difference']:.1e}",
        }
        for row in shared
    ]
    return tables + ("\n" + markdown_table(together, list(together[0])) if together else "")


def summary_markdown(
    rows: Sequence[dict[str, object]],
    study: str,
    smallest: int,
    largest: int,
    notes: Sequence[str] = (),
    references: Sequence[str] = ("coar",),
    headings: dict[float, str] | None = None,
    sources: str = "test inputs",
    passes: str = "forward-equivalent passes",
    ci: float = 0.95,
) -> str:
    """The generated ``summary.md``: per LDS target, passes needed and reductions with their intervals.

    ``references`` name the ``reduction_vs_<reference>`` columns of ``rows`` to show;
    ``headings`` replace the heading of some targets (e.g. a fraction of the ceiling);
    ``sources`` says what the bootstrap intervals resample; ``passes`` what the cost counts
    (a data study's: trained models); ``ci`` the intervals' coverage (``analysis.ci``).
    """

    def interval(row: dict[str, object], key: str, percent: bool) -> str:
        value, low, high = (float(row[k]) for k in (key, f"{key}_low", f"{key}_high"))  # type: ignore[arg-type]
        if np.isnan(value):
            return "not reached"
        fmt = (lambda v: f"{v:+.0%}") if percent else (lambda v: f"{v:.0f}")
        bounds = "" if np.isnan(low) or np.isnan(high) else f" [{fmt(low)}, {fmt(high)}]"
        return fmt(value) + bounds

    lines = [f"# {study}: {passes} needed per LDS target", ""]
    for target in dict.fromkeys(r["target_lds"] for r in rows):
        header = ["method", "passes needed", *(f"vs {name}" for name in references), "vs best tuned linear"]
        heading = (headings or {}).get(target, f"LDS {target}")  # type: ignore[call-overload]
        lines += [f"## {heading}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in (r for r in rows if r["target_lds"] == target):
            ablations = interval(
                {**r, "ablations_needed_low": r["ablations_low"], "ablations_needed_high": r["ablations_high"]},
                "ablations_needed",
                False,
            )
            cells = [interval(r, f"reduction_vs_{name}", True) for name in (*references, "best_linear")]
            lines.append(f"| {r['estimator']} | {ablations} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "Costs are forward-equivalent passes per input batch: one per ablated mask (an ablated forward pass over "
        "every input), three per point of a first-order prior (a forward and a backward pass, the backward counting "
        "as two) and one more for a prior's unablated margin when it is taken away from the unablated point. "
        "Passes needed are read off the mean LDS curve (interpolated in log passes) and count every training "
        "mask, the estimator's validation split included (an estimator that chooses a setting on validation is "
        f"refitted on all the masks); brackets are {ci:.0%} percentile bootstrap intervals, each resample drawing "
        f"{sources} with replacement. Reductions are 1 - passes(estimator) / passes(other): positive means fewer "
        "passes. 'Best tuned linear' is, per target and per bootstrap resample, whichever of "
        "the tuned linear estimators needs fewest. A need equal to a method's first point (the smallest train "
        f"size, {smallest} masks, or a prior's cost) means the target was already reached there; 'not reached': "
        f"not with {largest} masks. Priors and leave-one-out are single points at their cost (leave-one-out: one "
        "pass per component). Estimators with a prior (gradient_prior*, relu_collapse_prior) start from it: their "
        "curve begins at the prior alone, and every later point adds the prior's cost to the masks.",
        "",
        *notes,
    ]
    return "\n".join(lines).rstrip() + "\n"


def cheapest_markdown(rows: Sequence[dict[str, object]], reference: str = "coar") -> str:
    """Per LDS target, the methods that need the fewest passes, and their cost against ``reference``'s.

    ``rows`` are :func:`summary_rows`. A Markdown table: target, the cheapest
    methods (all that tie) and their passes, the reference's passes and the
    ratio of the two.
    """
    header = ["target", "cheapest method", "passes", f"{reference} passes", f"{reference} / cheapest"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for target in dict.fromkeys(r["target_lds"] for r in rows):
        at = [r for r in rows if r["target_lds"] == target and not np.isnan(float(r["ablations_needed"]))]  # type: ignore[arg-type]
        if not at:
            lines.append(f"| {target} | none reaches it | | | |")
            continue
        cost = min(float(r["ablations_needed"]) for r in at)  # type: ignore[arg-type]
        cheapest = ", ".join(str(r["estimator"]) for r in at if float(r["ablations_needed"]) == cost)  # type: ignore[arg-type]
        ref = next((float(r["ablations_needed"]) for r in at if r["estimator"] == reference), float("nan"))  # type: ignore[arg-type]
        # a cost of 0: a first-order prior of a data study, which trains no model beyond the one
        ratio = "" if np.isnan(ref) else ("prior alone" if cost == 0 else f"{ref / cost:.1f}x")
        ref_cell = "not reached" if np.isnan(ref) else f"{ref:.0f}"
        lines.append(f"| {target} | {cheapest} | {cost:.0f} | {ref_cell} | {ratio} |")
    return "\n".join(lines) + "\n"


def mean_lds_markdown(
    curves: LdsTable,
    passes: LdsTable,
    ood: dict[float, LdsTable] | None = None,
    units: str = "masks",
    cost: str = "passes",
) -> str:
    """Mean LDS of every method (over models, mask draws and inputs): the regressions by train size, at
    their largest size out of distribution, and the sampling-free methods at their cost.

    ``curves`` is the study's LDS table by evaluations (``read_lds_csv(..., by="evaluations")``: a
    regression's sizes are its training ``units``, a prior alone is size 0), ``passes`` the same by
    forward-equivalent passes, ``ood`` the out-of-distribution tables by ablation rate (by passes);
    ``cost`` names what a sampling-free method's cost counts (a data study's: trained models).
    """
    ood = ood or {}
    regressions = [e for e in curves.estimators if len(curves.sizes[e]) > 1]
    single = [e for e in curves.estimators if len(curves.sizes[e]) == 1]

    def at(table: LdsTable, estimator: str, size: int) -> str:
        """``estimator``'s mean LDS at ``size`` in ``table`` (empty where it was not scored there)."""
        if estimator not in table.estimators or size not in table.sizes[estimator]:
            return ""
        return f"{table.mean_curve(estimator)[list(table.sizes[estimator]).index(size)]:.3f}"

    rates = {f"at rate {rate:g}": table for rate, table in ood.items()}
    sections = []
    if regressions:
        sizes = sorted({int(n) for e in regressions for n in curves.sizes[e] if n > 0})
        columns = {f"{n:,}": n for n in sizes}
        if any(0 in curves.sizes[e] for e in regressions):
            columns = {"prior alone": 0, **columns}
        rows = [{"method": e, **{c: at(curves, e, n) for c, n in columns.items()}} for e in regressions]
        sections.append((f"By number of training {units}:", rows, ["method", *columns]))
    if regressions and ood:
        rows = []
        for e in regressions:
            largest = int(passes.sizes[e][-1])
            row = {"method": e, units: f"{int(curves.sizes[e][-1]):,}", "LDS": at(passes, e, largest)}
            rows.append(row | {c: at(table, e, largest) for c, table in rates.items()})
        heading = f"At each regression's largest train size, on the held-out {units} and out of distribution:"
        sections.append((heading, rows, ["method", units, "LDS", *rates]))
    if single:
        rows = []
        for e in single:
            spent = int(passes.sizes[e][0])
            row = {"method": e, cost: f"{spent:,}", "LDS": at(passes, e, spent)}
            rows.append(row | {c: at(table, e, spent) for c, table in rates.items()})
        sections.append(
            ("The sampling-free methods, each a single point at its cost:", rows, ["method", cost, "LDS", *rates])
        )
    return "\n".join(f"{heading}\n\n{markdown_table(rows, columns)}" for heading, rows, columns in sections)


def per_model_markdown(table: LdsTable, targets: Sequence[float], reference: str = "coar") -> str:
    """Per LDS target, the passes each regression needs on each model's own mean curve
    (:func:`compattr.analysis.needed_per_model`), its reduction against ``reference`` on that model, and on
    how many of the models it needs fewer passes than ``reference`` (of those where either reaches the target).

    Regressions are the methods with more than one train size (not the priors, single points).
    """
    n_models = table.spearman[reference].shape[1]
    header = ["target", "method", *(f"model {m}" for m in range(n_models)), f"fewer than {reference}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    methods = [e for e in table.estimators if len(table.sizes[e]) > 1]
    for target in targets:
        ref = needed_per_model(table, reference, target)
        for method in methods:
            need = needed_per_model(table, method, target)
            if np.isnan(need).all() and np.isnan(ref).all():
                continue
            cells = []
            for mine, theirs in zip(need, ref, strict=True):
                cell = "not reached" if np.isnan(mine) else f"{mine:.0f}"
                if method != reference and not np.isnan(mine) and not np.isnan(theirs):
                    cell += f" ({1 - mine / theirs:+.0%})"
                cells.append(cell)
            either = ~(np.isnan(need) & np.isnan(ref))
            fewer = np.nan_to_num(need, nan=np.inf) < np.nan_to_num(ref, nan=np.inf)
            count = "" if method == reference else f"{int(fewer.sum())} of {int(either.sum())}"
            lines.append(f"| {target} | {method} | " + " | ".join(cells) + f" | {count} |")
    return "\n".join(lines) + "\n"


def prior_choice_markdown(rows: Sequence[dict[str, object]]) -> str:
    """Markdown tables, one per estimator, of the share of inputs that chose each prior at each train size.

    ``rows`` are :func:`compattr.analysis.prior_choice_rows`; the per-input choices are in
    the fits' diagnostics tables (their ``prior`` column).
    """
    out = []
    for estimator in dict.fromkeys(str(r["estimator"]) for r in rows):
        own = [r for r in rows if r["estimator"] == estimator]
        priors = [k for k in own[0] if k not in ("estimator", "n_train", "fits")]
        out += [
            f"`{estimator}`:",
            "",
            "| masks | inputs | " + " | ".join(priors) + " |",
            "|" + "---|" * (2 + len(priors)),
        ]
        out += [
            f"| {r['n_train']} | {r['fits']} | " + " | ".join(f"{float(r[p]):.0%}" for p in priors) + " |"  # type: ignore[arg-type]
            for r in own
        ]
        out.append("")
    return "\n".join(out)


def fit_quality_markdown(rows: Sequence[dict[str, object]]) -> str:
    """Markdown notes on failed fits, constant predictions and sign-flipping calibrations (or that there were none)."""
    lines = []
    for key, what in (
        ("failed", "fits that returned their initial state (scored 0)"),
        ("constant", "constant predictions on the held-out masks (scored 0)"),
        ("sign_flipped", "calibrated collapses whose least-squares factor is negative (sign flipped)"),
    ):
        hits = [r for r in rows if isinstance(r[key], float) and r[key] > 0]
        if not hits:
            measured = any(not np.isnan(float(r[key])) for r in rows)  # type: ignore[arg-type]
            lines.append(f"- Fraction of inputs with {what}: none" + ("." if measured else " (not recorded)."))
            continue
        cells = ", ".join(f"{r['estimator']} n={r['n_train']}: {float(r[key]):.0%}" for r in hits)  # type: ignore[arg-type]
        lines.append(f"- Fraction of inputs with {what}: {cells}; 0 for every other estimator and size.")
    return "\n".join(lines) + "\n"


def grouped_markdown(
    columns: dict[str, np.ndarray], covariate: np.ndarray, label: str, n_groups: int = 3, signed: bool = False
) -> str:
    """Means of per-input values, inputs grouped by quantiles of ``covariate``, as a Markdown table.

    ``columns`` maps a column heading to one value per input; a row per group of
    inputs (``n_groups`` quantile groups of ``covariate``, e.g. the unablated
    margin) gives the covariate's range, the number of inputs and each column's
    mean over them (with a sign when ``signed``).
    """
    covariate = np.asarray(covariate, dtype=np.float64)
    edges = np.quantile(covariate, np.linspace(0, 1, n_groups + 1)[1:-1])
    group = np.digitize(covariate, edges)
    header = [label, "inputs", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    fmt = "{:+.3f}" if signed else "{:.3f}"
    for k in range(n_groups):
        chosen = group == k
        if not chosen.any():
            continue
        span = f"{covariate[chosen].min():.2f} to {covariate[chosen].max():.2f}"
        cells = [fmt.format(float(np.mean(np.asarray(v)[chosen]))) for v in columns.values()]
        lines.append(f"| {span} | {int(chosen.sum())} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def grouped_gain_markdown(
    table: LdsTable,
    estimator: str,
    reference: str,
    covariate: np.ndarray,
    label: str,
    n_groups: int = 3,
    offset: int = 0,
) -> str:
    """Mean LDS gain of ``estimator`` over ``reference`` per train size, inputs grouped by ``covariate``.

    Sizes are the numbers of masks both estimators were fitted on: ``estimator``'s
    passes less ``offset`` (its prior's cost) that ``reference`` has too; see
    :func:`grouped_markdown`.
    """
    own = [int(n) - offset for n in table.sizes[estimator]]
    sizes = [n for n in own if n in set(table.sizes[reference])]
    rows_e = [own.index(n) for n in sizes]
    rows_r = [list(table.sizes[reference]).index(n) for n in sizes]
    gain = table.per_input(estimator)[rows_e] - table.per_input(reference)[rows_r]  # (sizes, inputs)
    return grouped_markdown({f"n={n}": g for n, g in zip(sizes, gain, strict=True)}, covariate, label, n_groups, True)


def summary_section(
    top_k: Sequence[dict[str, str]],
    forget: Sequence[dict[str, str]],
    fix: Sequence[dict[str, str]],
    lds: dict[tuple[str, int], float],
    k: int,
) -> str:
    """The editing section of a study's ``summary.md``: each method at its largest train size, at ``k``.

    Per method: its LDS, the true and predicted margin drop of its top ``k`` components and the
    fraction of predictions flipped; the fraction of mistakes its top ``k`` fix and the edited
    model's accuracy on other images; the forgotten class's and the other classes' accuracy. Then
    the Spearman correlations across methods and train sizes between LDS and each editing success.
    """
    drops, rho_drop, n_drop = editing_summary(top_k, lds, k)
    fixes, rho_fix, n_fix = fixing_summary(fix, lds, k)
    forgetting = {row["method"]: row for row in forgetting_summary(forget, k)}
    fixed_by_fit = {(r["method"], r["n_train"]): r for r in fixes}
    largest: dict[str, dict[str, object]] = {}
    for row in drops:  # sorted by method, then size: the last row of a method is its largest size
        largest[row["method"]] = row
    rows = []
    for method, row in largest.items():
        fixing = fixed_by_fit.get((method, row["n_train"]), {})
        forgot = forgetting.get(method, {})
        rows.append(
            {
                **row,
                "fixed": fixing.get("fixed", np.nan),
                "fix_others": fixing.get("other_accuracy", np.nan),
                "forget_class": forgot.get("class_after", np.nan),
                "forget_others": forgot.get("others_after", np.nan),
            }
        )
    unedited = [float(r["other_accuracy"]) for r in fix if r["estimator"] == "random" and int(r["k"]) == 0]
    n_mistakes = len({(r["model"], r["input"]) for r in fix})
    forget_before = next(iter(forgetting.values()), {})  # the unedited model's accuracies, the same for all
    columns = ["method", "passes", "lds", "true_drop", "predicted_drop", "flipped", "fixed", "fix_others"]
    return "\n".join(
        [
            "## Editing with attributions",
            "",
            f"Each method at its largest train size, k = {k} components ablated. Top-k: mean over test inputs of the",
            "true and predicted margin drop when each input's top k are ablated, and the fraction of predictions",
            f"flipped. Fixing: the fraction of {n_mistakes} misclassified images (a separate, seeded set) that",
            "their own top k (by predicted rise) fix, and the edited model's accuracy on other test images"
            + (f" (unedited: {np.mean(unedited):.3f})." if unedited else "."),
            "Forgetting: accuracy on the forgotten class and on the others (mean over classes)"
            + (
                f"; unedited {forget_before['class_before']:.3f} and {forget_before['others_before']:.3f}."
                if forget_before
                else "."
            ),
            "",
            markdown_table(rows, [*columns, "forget_class", "forget_others"]),
            f"Spearman correlation across methods and train sizes between mean LDS and the true drop at k = {k}: "
            f"{rho_drop:+.3f} ({n_drop} pairs); between mean LDS and the fraction of mistakes fixed: {rho_fix:+.3f} "
            f"({n_fix} pairs). Tables and figures: `editing/`.",
            "",
            "The same correlations at every k (the LDS is the attributed inputs', the fixes are other images'):",
            "",
            markdown_table(
                [
                    {
                        "k": str(kk),
                        "LDS ~ true drop": editing_summary(top_k, lds, kk)[1],
                        "LDS ~ fraction fixed": fixing_summary(fix, lds, kk)[1],
                    }
                    for kk in sorted({int(r["k"]) for r in top_k} | {int(r["k"]) for r in fix if int(r["k"]) > 0})
                ],
                ["k", "LDS ~ true drop", "LDS ~ fraction fixed"],
            ),
            "Fixing against k, each method at its largest train size: the fraction of mistakes fixed, and in",
            "brackets the edited model's accuracy on other test images.",
            "",
            _fixing_by_k_markdown(fix),
        ]
    )


def _fixing_by_k_markdown(fix: Sequence[dict[str, str]]) -> str:
    """A table of the fraction fixed (accuracy elsewhere) per method at its largest size, one column per k."""
    largest: dict[str, int] = {}
    for row in fix:
        largest[row["estimator"]] = max(largest.get(row["estimator"], 0), int(row["n_train"]))
    cells: dict[str, dict[int, list[tuple[float, float]]]] = {}
    for row in fix:
        if int(row["k"]) > 0 and int(row["n_train"]) == largest[row["estimator"]]:
            cell = (float(row["fixed"]), float(row["other_accuracy"]))
            cells.setdefault(row["estimator"], {}).setdefault(int(row["k"]), []).append(cell)
    ks = sorted({k for by_k in cells.values() for k in by_k})
    rows = []
    for method, by_k in sorted(cells.items()):
        means = {k: np.nanmean(np.array(by_k[k]), axis=0) for k in ks if k in by_k}
        rows.append({"method": method, **{f"k = {k}": f"{f:.2f} ({o:.2f})" for k, (f, o) in means.items()}})
    return markdown_table(rows, ["method", *(f"k = {k}" for k in ks)])


def study_notes(
    table: LdsTable,
    rows: Sequence[dict[str, object]],
    *,
    fit_tables: Sequence[str],
    modules: Sequence[str],
    baselines: Sequence[object],
    priors: Sequence[str],
    gradient_prior: str | None,
    editing: dict[str, list[dict[str, str]]] | None = None,
    editing_k: int = 10,
    editing_ks: Sequence[int] = (),
    targets: Sequence[float] = (),
) -> list[str]:
    """The sections of ``summary.md`` after its tables: fit quality, dips, the cheapest methods, the priors, editing.

    ``rows`` are :func:`compattr.analysis.summary_rows`; ``fit_tables`` the fits' diagnostics CSVs;
    ``modules`` each component's module; ``baselines`` the sampling-free methods' fits on every model
    (:class:`compattr.stores.SavedFit`, their ``estimator`` attribute naming them); ``priors`` the
    study's priors by name; ``gradient_prior`` the prior ``gradient_prior`` starts from; ``editing``
    the editing stage's tables (``top_k``, ``fix``, ``forget``) when the study edits, reported at the
    grid's ``k`` nearest ``editing_k`` from below; ``targets`` the LDS targets of the per-model section,
    written when the study has several models and ``coar``.
    """
    n_components = len(modules)
    dips = curve_dips(table, n_components)
    notes = [
        "## Fit quality",
        "",
        fit_quality_markdown(fit_quality_rows(fit_tables)).rstrip(),
        "",
        f"## Where the curves dip ({n_components} components)",
        "",
        "Minimum-norm least squares (coar) interpolates the training masks once they number fewer than the "
        "components, and its LDS dips where the masks near the components count (double descent); "
        "estimators that choose a penalty or a stopping point on validation should not dip.",
        "",
        *(dips or ["- No estimator's mean LDS falls between consecutive train sizes."]),
        "",
    ]
    fits = defaultdict(list)  # sampling-free method -> its fit on each model, in model order
    for fit in baselines:
        fits[fit.attrs["estimator"]].append(fit)
    priors = [name for name in priors if name in fits]
    notes += ["## Cheapest method per target", "", cheapest_markdown(rows, "coar").rstrip(), ""]
    if targets and "coar" in table.estimators and table.spearman["coar"].shape[1] > 1:
        notes += [
            "## Per model",
            "",
            "Passes each regression needs on each trained model's own mean curve (over its mask draws and the "
            "inputs), with its reduction against coar on that model, and on how many models it needs fewer passes "
            "than coar: whether an answer holds for every model, where the intervals above pool them.",
            "",
            per_model_markdown(table, targets, "coar").rstrip(),
            "",
        ]
    if priors:
        notes += _prior_notes(table, fits, priors, modules)
    choices = prior_choice_rows(fit_tables)
    if choices:
        notes += [
            "## Priors chosen on validation",
            "",
            "Share of the inputs (over models and mask draws) whose regression chose each candidate prior on the "
            "training masks' validation split; each input's choice is the `prior` column of "
            "`m<model>/lds/<estimator>.fits.csv`.",
            "",
            prior_choice_markdown(choices).rstrip(),
            "",
        ]
    if gradient_prior in fits and {"gradient_prior", "ridge"} <= set(table.estimators):
        margin = np.mean([fit.intercept for fit in fits[gradient_prior]], axis=0)
        prior_cost = fits[gradient_prior][0].attrs["passes"]
        for covariate, label in (
            (table.per_input(gradient_prior)[0], "prior's own LDS"),
            (margin, "unablated margin"),
        ):
            notes += [
                "",
                f"Where the gradient prior ({gradient_prior}) helps: mean per-input LDS of gradient_prior minus ridge "
                f"at each number of masks, inputs in thirds by the {label} (both averaged over models and mask draws).",
                "",
                grouped_gain_markdown(table, "gradient_prior", "ridge", covariate, label, offset=prior_cost).rstrip(),
            ]
    if editing:
        mean_lds = {  # by method and passes, as the LDS table keeps them
            (method, int(n)): score
            for method in table.estimators
            for n, score in zip(table.sizes[method], table.mean_curve(method), strict=True)
        }
        k = max([kk for kk in editing_ks if kk <= editing_k] or [min(editing_ks)])  # the grid's nearest from below
        section = summary_section(editing["top_k"], editing["forget"], editing["fix"], mean_lds, k)
        notes += ["", section.rstrip(), ""]
    return notes


def _prior_notes(table: LdsTable, fits: dict[str, list], priors: list[str], modules: Sequence[str]) -> list[str]:
    """The first-order priors' section: each alone by unablated margin, and against leave-one-out."""
    margin = np.mean([fit.intercept for fit in fits[priors[0]]], axis=0)  # unablated margins, averaged over models
    notes = [
        "## First-order priors",
        "",
        "Each prior alone (mean LDS per input over models), inputs in thirds by their unablated margin (averaged "
        "over models):",
        "",
        grouped_markdown({p: table.per_input(p)[0] for p in priors}, margin, "unablated margin").rstrip(),
        "",
    ]
    if "loo" not in fits:
        return notes
    exact = np.concatenate([fit.coef for fit in fits["loo"]])
    estimates = {p: np.concatenate([fit.coef for fit in fits[p]]) for p in priors}
    for p, coef in estimates.items():
        r = coefficient_agreement(coef, exact)
        notes.append(
            f"- {p} against leave-one-out (exact single ablations): per-input Pearson correlation of the "
            f"attributions, mean {r.mean():.3f}, median {np.median(r):.3f}, range [{r.min():.3f}, {r.max():.3f}] "
            f"over {len(r)} inputs."
        )
    by_module = error_by_module(estimates, exact, modules)
    return notes + [
        "",
        "Relative error of each prior against leave-one-out per module, ||prior - loo|| / ||loo|| over its "
        "components and every input (0: exact; 1: as far off as no effect at all):",
        "",
        markdown_table(by_module, list(by_module[0])).rstrip(),
        "",
    ]
