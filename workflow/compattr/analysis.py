"""From per-input LDS to curves, bootstrap intervals and "ablations needed" tables."""

from __future__ import annotations

import csv
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compattr.scores import columnwise_pearson

__all__ = [
    "LdsTable",
    "Resamples",
    "resampled_sources",
    "read_lds_csv",
    "read_ood_csv",
    "concat_csv",
    "write_table",
    "read_table",
    "write_lds_csv",
    "write_fit_csv",
    "fit_quality_rows",
    "prior_choice_rows",
    "write_summary_csv",
    "curve_dips",
    "ceiling_targets",
    "ablations_needed",
    "needed_per_model",
    "bootstrap_curves",
    "summary_rows",
    "coefficient_agreement",
    "error_by_module",
    "select_by_validation",
]

LDS_COLUMNS = ("estimator", "model", "replicate", "n_train", "passes", "input", "spearman", "pearson")
OOD_COLUMNS = ("estimator", "ablation_rate", "model", "replicate", "n_train", "passes", "input", "spearman", "pearson")
FIT_COLUMNS = ("estimator", "model", "replicate", "n_train", "input", "failed", "constant", "calibration", "prior")


@dataclass
class LdsTable:
    """Per-input scores of every estimator at every train size, per model and mask replicate.

    ``spearman[estimator]`` and ``pearson[estimator]`` are arrays (n_sizes,
    n_models, n_replicates, n_inputs) aligned with ``sizes[estimator]``
    (ascending) and with the shared model and input order; replicates that were
    not fitted at a size (too few masks for a disjoint draw) are NaN, and the
    fitted ones come first.
    """

    sizes: dict[str, np.ndarray]
    spearman: dict[str, np.ndarray]
    pearson: dict[str, np.ndarray]

    @property
    def estimators(self) -> list[str]:
        """Estimators in the order they first appeared."""
        return list(self.sizes)

    def mean_curve(self, estimator: str, metric: str = "spearman") -> np.ndarray:
        """Mean score over models, replicates and inputs at each train size (n_sizes,)."""
        return np.nanmean(getattr(self, metric)[estimator], axis=(1, 2, 3))

    def per_input(self, estimator: str, metric: str = "spearman") -> np.ndarray:
        """Each input's score averaged over models and replicates (n_sizes, n_inputs)."""
        return np.nanmean(getattr(self, metric)[estimator], axis=(1, 2))


@dataclass
class Resamples:
    """Bootstrap draws over test inputs, models and mask replicates, shared by every estimator and size.

    Each resample draws inputs and models with replacement and, at each train
    size with ``R`` fitted replicates, ``R`` replicates with replacement from
    them (one uniform number per replicate slot, so that every estimator gets
    the same picks). Its curve is the mean over the drawn models, replicates
    and inputs: an interval covers the variation over all three.
    """

    inputs: np.ndarray  # (B, n_inputs) indices
    models: np.ndarray  # (B, n_models) indices
    replicates: np.ndarray  # (B, n_replicates) uniform in [0, 1)

    @classmethod
    def draw(
        cls, n_bootstrap: int, n_models: int, n_replicates: int, n_inputs: int, rng: np.random.Generator
    ) -> Resamples:
        """Draw ``n_bootstrap`` resamples; inputs first (one model and replicate: a plain bootstrap's draws)."""
        inputs = rng.integers(0, n_inputs, size=(n_bootstrap, n_inputs))
        models = rng.integers(0, n_models, size=(n_bootstrap, n_models)) if n_models > 1 else np.zeros((n_bootstrap, 1))
        replicates = rng.random((n_bootstrap, n_replicates)) if n_replicates > 1 else np.zeros((n_bootstrap, 1))
        return cls(inputs, models.astype(int), replicates)

    def curves(self, scores: np.ndarray) -> np.ndarray:
        """Mean curve of every resample (B, n_sizes) of ``scores`` (n_sizes, n_models, n_replicates, n_inputs)."""
        out = np.empty((len(self.inputs), len(scores)))
        m, i = self.models[:, :, None, None], self.inputs[:, None, None, :]
        for k, at_size in enumerate(scores):
            fitted = int(np.isfinite(at_size).any(axis=(0, 2)).sum())
            if fitted == 0:
                out[:, k] = np.nan
                continue
            picks = min(fitted, self.replicates.shape[1])
            r = np.floor(self.replicates[:, :picks] * fitted).astype(int)[:, None, :, None]
            out[:, k] = at_size[m, r, i].mean(axis=(1, 2, 3))
        return out


def resampled_sources(table: LdsTable) -> str:
    """What the bootstrap intervals resample, in words: inputs, and models and mask draws where there are several."""
    _, n_models, n_draws, n_inputs = max((v.shape for v in table.spearman.values()), key=lambda shape: shape[2])
    sources = [f"{n_inputs} test inputs"]
    if n_models > 1:
        sources.append(f"{n_models} independently trained models")
    if n_draws > 1:
        sources.append(f"up to {n_draws} disjoint draws of training masks per size")
    return sources[0] if len(sources) == 1 else ", ".join(sources[:-1]) + " and " + sources[-1]


def write_lds_csv(path: str | Path, rows: Iterable[Sequence], ood: bool = False) -> None:
    """Write rows ``(estimator, model, replicate, n_train, passes, input, spearman, pearson[, rate])`` as a tidy table.

    ``n_train`` counts the training masks, ``passes`` the method's whole cost in
    forward-equivalent passes per input batch (masks, plus a prior's gradient
    passes; a backward pass counts as two). With ``ood``, rows carry the
    ablation rate of their held-out split last and the table has the columns
    ``estimator,ablation_rate,model,replicate,n_train,passes,input,spearman,pearson``.
    """
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(OOD_COLUMNS if ood else LDS_COLUMNS)
        for row in rows:
            estimator, model, replicate, n, passes, i, s, p = row[:8]
            cells = [estimator, int(model), int(replicate), int(n), int(passes), int(i), f"{s:.6f}", f"{p:.6f}"]
            writer.writerow(cells[:1] + [row[8]] + cells[1:] if ood else cells)


def write_fit_csv(path: str | Path, rows: Iterable[Sequence]) -> None:
    """Write per-input fit diagnostics ``(estimator, model, replicate, n_train, input, failed, constant, calibration,
    prior)``.

    ``failed``: the fit returned its initial state (scored 0); ``constant``: its
    prediction does not vary over the held-out masks (scored 0); ``calibration``:
    the least-squares factor of a calibrated collapse (empty where none); ``prior``:
    the name of the prior the input's fit started from (chosen on validation where
    there were several; empty where none).
    """
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(FIT_COLUMNS)
        for estimator, model, replicate, n, i, failed, constant, calibration, prior in rows:
            scale = "" if np.isnan(calibration) else f"{calibration:.6g}"
            cells = [estimator, int(model), int(replicate), int(n), int(i), int(failed), int(constant), scale, prior]
            writer.writerow(cells)


def write_summary_csv(path: str | Path, rows: Sequence[dict[str, object]]) -> None:
    """Write :func:`summary_rows` as a CSV table, a target not reached (NaN) as an empty cell."""
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: ("" if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()} for r in rows)


def prior_choice_rows(paths: Sequence[str | Path]) -> list[dict[str, object]]:
    """Per estimator that chose among several priors and train size: the share of inputs that chose each.

    Reads tables written by :func:`write_fit_csv`; shares are over every input of
    every model and replicate. Rows ``{estimator, n_train, fits, <prior>: share, ...}``,
    the priors by name (a candidate no input chose at any size has no column).
    """
    groups: dict[tuple[str, int], list[str]] = defaultdict(list)
    for path in paths:
        for row in read_table(path, FIT_COLUMNS):
            groups[(row["estimator"], int(row["n_train"]))].append(row["prior"])
    names: dict[str, list[str]] = defaultdict(list)
    for (estimator, _), chosen in groups.items():
        names[estimator] = sorted({*names[estimator], *filter(None, chosen)})
    return [
        {"estimator": estimator, "n_train": n, "fits": len(chosen)}
        | {p: chosen.count(p) / len(chosen) for p in names[estimator]}
        for (estimator, n), chosen in sorted(groups.items())
        if len(names[estimator]) > 1
    ]


def fit_quality_rows(paths: Sequence[str | Path]) -> list[dict[str, object]]:
    """Per estimator and train size: fits, and the fractions failed, constant and with a sign-flipping calibration.

    Reads tables written by :func:`write_fit_csv`; fractions are over every
    input of every model and replicate; the sign-flip fraction is NaN where no
    calibration factor was recorded.
    """
    groups: dict[tuple[str, int], list[dict[str, str]]] = defaultdict(list)
    for path in paths:
        for row in read_table(path, FIT_COLUMNS):
            groups[(row["estimator"], int(row["n_train"]))].append(row)
    out = []
    for (estimator, n), rows in groups.items():
        scales = np.array([float(r["calibration"]) for r in rows if r["calibration"] != ""])
        out.append(
            {
                "estimator": estimator,
                "n_train": n,
                "fits": len(rows),
                "failed": float(np.mean([r["failed"] == "1" for r in rows])),
                "constant": float(np.mean([r["constant"] == "1" for r in rows])),
                "sign_flipped": float((scales < 0).mean()) if len(scales) else float("nan"),
            }
        )
    return out


def curve_dips(table: LdsTable, n_components: int) -> list[str]:
    """Where each estimator's mean LDS falls from one train size to the next, with masks / components there.

    Minimum-norm least squares dips where the number of masks nears the number
    of components (double descent); regularised estimators should not.
    """
    notes = []
    for e in table.estimators:
        sizes, mean = table.sizes[e], table.mean_curve(e)
        dips = [
            f"{sizes[k]} -> {sizes[k + 1]} masks ({sizes[k] / n_components:.2f} -> {sizes[k + 1] / n_components:.2f} "
            f"of the components; LDS {mean[k]:.3f} -> {mean[k + 1]:.3f})"
            for k in range(len(sizes) - 1)
            if sizes[k] > 0 and mean[k + 1] < mean[k]
        ]
        if dips:
            notes.append(f"- {e}: " + "; ".join(dips))
    return notes


def read_lds_csv(
    paths: str | Path | Sequence[str | Path], *, by: str = "passes", measured: Mapping[str, int] | None = None
) -> LdsTable:
    """Read one or more tidy LDS tables (:func:`write_lds_csv`) into an :class:`LdsTable`.

    Sized ``by`` their forward-equivalent ``passes``, or by their perturbed
    ``evaluations``: the masks an estimator fits on (ablated passes, masked inputs or
    trained models, whatever the study's units), one per unit for leave-one-out, and
    for a first-order prior the units it measures by ablation, ``measured`` (its
    ``exact_top``, :func:`compattr.stores.measured_units`; 0 for a method not in it).
    """
    if by not in ("passes", "evaluations"):
        raise ValueError(f"by must be 'passes' or 'evaluations', got {by!r}")
    if isinstance(paths, (str, Path)):
        paths = [paths]
    rows = []
    for path in paths:
        rows += read_table(path, LDS_COLUMNS)
    if by == "evaluations":
        extra = measured or {}

        def evaluations(r: dict[str, str]) -> str:
            if r["estimator"] == "loo":
                return r["passes"]
            return str(int(r["n_train"]) + extra.get(r["estimator"], 0))

        rows = [{**r, "passes": evaluations(r)} for r in rows]
    return _table(rows)


def read_ood_csv(path: str | Path) -> dict[float, LdsTable]:
    """Read an out-of-distribution LDS table into one :class:`LdsTable` per ablation rate."""
    by_rate: dict[float, list[dict[str, str]]] = defaultdict(list)
    for row in read_table(path, OOD_COLUMNS):
        by_rate[float(row["ablation_rate"])].append(row)
    return {rate: _table(rows) for rate, rows in sorted(by_rate.items())}


def concat_csv(paths: Sequence[str | Path], out: str | Path) -> None:
    """Concatenate CSV files that share one header line."""
    header = None
    with open(out, "w") as dest:
        for path in paths:
            with open(path) as fh:
                first = fh.readline()
                if header is None:
                    header = first
                    dest.write(first)
                elif first != header:
                    raise ValueError(f"{path}: header {first.strip()!r} differs from {header.strip()!r}")
                dest.writelines(fh)


def write_table(path: str | Path, columns: Sequence[str], rows: Iterable[Sequence]) -> None:
    """Write a tidy table with a header (floats with 6 significant digits; booleans and NaN as numbers)."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(
                [
                    f"{v:.6g}"
                    if isinstance(v, float | np.floating)
                    else int(v)
                    if isinstance(v, bool | np.bool_)
                    else v
                    for v in row
                ]
            )


def read_table(path: str | Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """The rows of a CSV table as dicts, after checking that its header is ``columns``."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != tuple(columns):
            raise ValueError(f"{path}: expected columns {tuple(columns)}, got {reader.fieldnames}")
        return list(reader)


def _table(rows: Iterable[dict[str, str]]) -> LdsTable:
    rows = list(rows)
    key = ("model", "replicate", "input")
    models, replicates, inputs = ({int(r[k]) for r in rows} for k in key)
    n_models, n_inputs = max(models, default=-1) + 1, len(inputs)
    position = {i: k for k, i in enumerate(sorted(inputs))}
    by_estimator: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        by_estimator[row["estimator"]].append(row)
    table = LdsTable({}, {}, {})
    for estimator, own in by_estimator.items():
        sizes = np.array(sorted({int(r["passes"]) for r in own}))
        row_of = {n: k for k, n in enumerate(sizes)}
        shape = (len(sizes), n_models, max(int(r["replicate"]) for r in own) + 1, n_inputs)
        values = np.full((2, *shape), np.nan)
        for r in own:
            at = (row_of[int(r["passes"])], int(r["model"]), int(r["replicate"]), position[int(r["input"])])
            values[(0, *at)], values[(1, *at)] = float(r["spearman"]), float(r["pearson"])
        table.sizes[estimator] = sizes
        table.spearman[estimator], table.pearson[estimator] = values
    return table


def ablations_needed(sizes: np.ndarray, curve: np.ndarray, target: float) -> float:
    """Smallest number of masks at which ``curve`` first reaches ``target``; NaN if never.

    Between two train sizes the curve is interpolated linearly in log(size), as
    it is drawn on the figure; from a point at size 0 (a prior alone) to the
    next size, linearly in size. A curve already at the target at the smallest
    size gives that size.
    """
    sizes = np.asarray(sizes, dtype=np.float64)
    curve = np.asarray(curve, dtype=np.float64)
    above = np.nonzero(curve >= target)[0]
    if len(above) == 0:
        return float("nan")
    k = int(above[0])
    if k == 0:
        return float(sizes[0])
    frac = (target - curve[k - 1]) / (curve[k] - curve[k - 1])
    if sizes[k - 1] == 0:
        return float(frac * sizes[k])
    lo, hi = np.log(sizes[k - 1]), np.log(sizes[k])
    return float(np.exp(lo + frac * (hi - lo)))


def needed_per_model(table: LdsTable, estimator: str, target: float) -> np.ndarray:
    """Passes ``estimator`` needs to reach ``target`` on each model's own mean curve (over its mask draws and the
    inputs), as :func:`ablations_needed` reads the pooled one; NaN where a model's curve never reaches it."""
    curves = np.nanmean(table.spearman[estimator], axis=(2, 3))  # (n_sizes, n_models)
    return np.array([ablations_needed(table.sizes[estimator], curve, target) for curve in curves.T])


def bootstrap_curves(
    scores: np.ndarray, n_bootstrap: int, ci: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean curve and a percentile bootstrap interval over inputs, models and mask replicates (see :class:`Resamples`).

    Parameters
    ----------
    scores : ndarray of shape (n_sizes, n_models, n_replicates, n_inputs)

    Returns
    -------
    mean, low, high : ndarray of shape (n_sizes,)
    resampled : ndarray of shape (n_bootstrap, n_sizes)
        Mean curve of every bootstrap sample (the same inputs and models at every size).
    """
    _, n_models, n_replicates, n_inputs = scores.shape
    resampled = Resamples.draw(n_bootstrap, n_models, n_replicates, n_inputs, rng).curves(scores)
    tail = (1 - ci) / 2
    low, high = np.quantile(resampled, [tail, 1 - tail], axis=0)
    return np.nanmean(scores, axis=(1, 2, 3)), low, high, resampled


def summary_rows(
    table: LdsTable,
    targets: Sequence[float],
    n_bootstrap: int,
    ci: float,
    seed: int,
    references: Sequence[str] = ("coar",),
    linear: Sequence[str] = ("ridge", "lasso"),
) -> list[dict[str, object]]:
    """Ablations needed per estimator and LDS target, with bootstrap intervals and reductions.

    Reductions are ``1 - masks(estimator) / masks(other)`` against each of
    ``references`` (columns ``reduction_vs_<reference>``, NaN when it was not fitted)
    and against the best of the tuned ``linear`` estimators present (the one
    needing the fewest masks; within each bootstrap resample the best is chosen
    again). The same resamples of inputs, models and mask replicates
    (:class:`Resamples`) serve every estimator, so intervals of reductions
    account for what the estimators share. An interval bound is NaN when fewer
    than half of the resamples reach the target; a reduction's interval uses the
    resamples in which both sides reach it.
    """
    rng = np.random.default_rng(seed)
    shapes = {e: (table.spearman[e].shape[1], table.spearman[e].shape[3]) for e in table.estimators}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"estimators were scored on different numbers of (models, inputs): {shapes}")
    n_models, n_inputs = next(iter(shapes.values()))
    n_replicates = max(table.spearman[e].shape[2] for e in table.estimators)
    resamples = Resamples.draw(n_bootstrap, n_models, n_replicates, n_inputs, rng)
    tail = (1 - ci) / 2
    linear = [e for e in linear if e in table.sizes]
    missing = np.full(n_bootstrap, np.nan)
    resampled = {e: resamples.curves(table.spearman[e]) for e in table.estimators}
    rows = []
    for target in targets:
        needed, boot = {}, {}
        for e in table.estimators:
            sizes, curves = table.sizes[e], resampled[e]
            needed[e] = ablations_needed(sizes, table.mean_curve(e), target)
            boot[e] = np.array([ablations_needed(sizes, c, target) for c in curves])
        best_needed, best_boot = np.nan, missing
        if linear:
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN: no linear estimator reached it
                best_needed = float(np.nanmin([needed[e] for e in linear]))
                best_boot = np.nanmin(np.stack([boot[e] for e in linear]), axis=0)
        for e in table.estimators:
            row: dict[str, object] = {"estimator": e, "target_lds": target, "ablations_needed": needed[e]}
            for name in references:
                row[f"reduction_vs_{name}"] = _reduction(needed[e], needed.get(name, np.nan))
            row["reduction_vs_best_linear"] = _reduction(needed[e], best_needed)
            row["ablations_low"] = _quantile(boot[e], tail, True)
            row["ablations_high"] = _quantile(boot[e], 1 - tail, True)
            others = [(name, boot.get(name, missing)) for name in references] + [("best_linear", best_boot)]
            for name, other in others:
                reductions = _reduction(boot[e], other)
                row[f"reduction_vs_{name}_low"] = _quantile(reductions, tail, False)
                row[f"reduction_vs_{name}_high"] = _quantile(reductions, 1 - tail, False)
            rows.append(row)
    return rows


def ceiling_targets(table: LdsTable, fractions: Sequence[float]) -> tuple[float, dict[float, str]]:
    """The study's ceiling and targets at ``fractions`` of it.

    The ceiling is the best mean LDS of any fitted estimator (one with more than
    one train size: baselines are left out) at its largest train size. Returns it
    and a mapping from each target LDS (rounded to 3 decimals) to a heading that
    names the fraction.
    """
    fitted = [e for e in table.estimators if len(table.sizes[e]) > 1]
    ceiling = max(float(table.mean_curve(e)[-1]) for e in fitted)
    return ceiling, {
        round(f * ceiling, 3): f"LDS {f * ceiling:.3f} ({f:.0%} of the ceiling {ceiling:.3f})" for f in fractions
    }


def select_by_validation(scores: dict[tuple[str, int], float], *, maximize: bool = False) -> dict[int, str]:
    """Per train size, the setting with the best mean validation score.

    ``scores`` maps ``(setting, n_train)`` to the mean over inputs of each input's
    score on the estimator's own validation split: MSE (lowest wins) or, with
    ``maximize``, Spearman correlation (highest wins).
    """
    sign = -1.0 if maximize else 1.0
    best: dict[int, tuple[float, str]] = {}
    for (setting, n), score in scores.items():
        if n not in best or sign * score < best[n][0]:
            best[n] = (sign * score, setting)
    return {n: setting for n, (_, setting) in sorted(best.items())}


def coefficient_agreement(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-input Pearson correlation between two attributions ``(n_inputs, n_components)``."""
    return columnwise_pearson(np.asarray(a).T, np.asarray(b).T)


def error_by_module(
    estimates: dict[str, np.ndarray], exact: np.ndarray, modules: Sequence[str]
) -> list[dict[str, object]]:
    """Relative error of each estimate against the exact effects, per module of components.

    ``estimates`` map a name to coefficients (n_inputs, n_components), ``exact``
    is leave-one-out's, ``modules`` names each component's module. Per module and
    estimate: ``||estimate - exact|| / ||exact||`` over that module's columns and
    every input (0 is exact; 1 is as far off as predicting no effect).
    """
    modules = np.asarray(modules)
    rows = []
    for module in dict.fromkeys(modules):
        cols = modules == module
        norm = np.linalg.norm(exact[:, cols])
        row: dict[str, object] = {"module": module, "components": int(cols.sum())}
        for name, coef in estimates.items():
            row[name] = float(np.linalg.norm(coef[:, cols] - exact[:, cols]) / norm) if norm > 0 else float("nan")
        rows.append(row)
    return rows


def _reduction(needed: np.ndarray | float, reference: np.ndarray | float) -> np.ndarray | float:
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1.0 - np.asarray(needed, dtype=np.float64) / np.asarray(reference, dtype=np.float64)


def _quantile(values: np.ndarray, q: float, unreached_as_inf: bool) -> float:
    """Quantile over resamples, NaN when over half of them are NaN (target not reached).

    With ``unreached_as_inf`` the NaNs count as needing more masks than any fit
    used (right for ablations needed); otherwise they are left out (reductions).
    An infinite quantile is reported as NaN.
    """
    values = np.asarray(values, dtype=np.float64)
    missing = np.isnan(values)
    if missing.mean() > 0.5:
        return float("nan")
    kept = np.where(missing, np.inf, values) if unreached_as_inf else values[~missing]
    out = float(np.quantile(kept, q))
    return out if np.isfinite(out) else float("nan")
