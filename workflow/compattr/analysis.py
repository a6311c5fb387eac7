"""From per-input LDS to curves, bootstrap intervals and "ablations needed" tables."""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "LdsTable",
    "read_lds_csv",
    "write_lds_csv",
    "ablations_needed",
    "bootstrap_curves",
    "summary_rows",
    "markdown_table",
    "summary_markdown",
]

LDS_COLUMNS = ("estimator", "n_train", "input", "spearman", "pearson")


@dataclass
class LdsTable:
    """Per-input scores of every estimator at every train size.

    ``scores[estimator]`` is an array (n_sizes, n_inputs) aligned with
    ``sizes[estimator]`` (ascending) and with the shared input order.
    """

    sizes: dict[str, np.ndarray]
    spearman: dict[str, np.ndarray]
    pearson: dict[str, np.ndarray]

    @property
    def estimators(self) -> list[str]:
        """Estimators in the order they first appeared."""
        return list(self.sizes)


def write_lds_csv(path: str | Path, rows: Iterable[Sequence]) -> None:
    """Write rows ``(estimator, n_train, input, spearman, pearson)`` as the tidy LDS table."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(LDS_COLUMNS)
        for estimator, n, i, s, p in rows:
            writer.writerow([estimator, int(n), int(i), f"{s:.6f}", f"{p:.6f}"])


def read_lds_csv(paths: str | Path | Sequence[str | Path]) -> LdsTable:
    """Read one or more tidy LDS tables into an :class:`LdsTable`."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    cells: dict[str, dict[int, dict[int, tuple[float, float]]]] = defaultdict(lambda: defaultdict(dict))
    for path in paths:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            if tuple(reader.fieldnames or ()) != LDS_COLUMNS:
                raise ValueError(f"{path}: expected columns {LDS_COLUMNS}, got {reader.fieldnames}")
            for row in reader:
                cells[row["estimator"]][int(row["n_train"])][int(row["input"])] = (
                    float(row["spearman"]),
                    float(row["pearson"]),
                )
    table = LdsTable({}, {}, {})
    for estimator, by_size in cells.items():
        sizes = np.array(sorted(by_size))
        inputs = sorted(by_size[sizes[0]])
        values = np.array([[by_size[n][i] for i in inputs] for n in sizes])  # (sizes, inputs, 2)
        table.sizes[estimator] = sizes
        table.spearman[estimator] = values[..., 0]
        table.pearson[estimator] = values[..., 1]
    return table


def ablations_needed(sizes: np.ndarray, curve: np.ndarray, target: float) -> float:
    """Smallest number of masks at which ``curve`` first reaches ``target``; NaN if never.

    Between two train sizes the curve is interpolated linearly in log(size), as
    it is drawn on the figure. A curve already at the target at the smallest
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
    lo, hi = np.log(sizes[k - 1]), np.log(sizes[k])
    frac = (target - curve[k - 1]) / (curve[k] - curve[k - 1])
    return float(np.exp(lo + frac * (hi - lo)))


def bootstrap_curves(
    scores: np.ndarray, n_bootstrap: int, ci: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean over inputs and a percentile bootstrap interval (inputs resampled).

    Parameters
    ----------
    scores : ndarray of shape (n_sizes, n_inputs)

    Returns
    -------
    mean, low, high : ndarray of shape (n_sizes,)
    resampled : ndarray of shape (n_bootstrap, n_sizes)
        Mean curve of every bootstrap sample (the same inputs at every size).
    """
    n_inputs = scores.shape[1]
    idx = rng.integers(0, n_inputs, size=(n_bootstrap, n_inputs))
    resampled = scores[:, idx].mean(-1).T
    tail = (1 - ci) / 2
    low, high = np.quantile(resampled, [tail, 1 - tail], axis=0)
    return scores.mean(1), low, high, resampled


def summary_rows(
    table: LdsTable, targets: Sequence[float], n_bootstrap: int, ci: float, seed: int, reference: str = "coar"
) -> list[dict[str, object]]:
    """Ablations needed per estimator and LDS target, with bootstrap intervals and the reduction vs ``reference``.

    The same bootstrap resamples of inputs are used for every estimator, so the
    interval of the reduction accounts for their shared inputs. An interval
    bound is NaN when fewer than half of the resamples reach the target; the
    reduction's interval uses the resamples in which both estimators reach it.
    """
    rng = np.random.default_rng(seed)
    inputs = {e: table.spearman[e].shape[1] for e in table.estimators}
    if len(set(inputs.values())) != 1:
        raise ValueError(f"estimators were scored on different numbers of inputs: {inputs}")
    idx = rng.integers(0, next(iter(inputs.values())), size=(n_bootstrap, next(iter(inputs.values()))))
    tail = (1 - ci) / 2
    rows = []
    for target in targets:
        needed, boot = {}, {}
        for e in table.estimators:
            sizes, scores = table.sizes[e], table.spearman[e]
            needed[e] = ablations_needed(sizes, scores.mean(1), target)
            boot[e] = np.array([ablations_needed(sizes, c, target) for c in scores[:, idx].mean(-1).T])
        for e in table.estimators:
            reduction = _reduction(needed[e], needed.get(reference, np.nan))
            boot_red = _reduction(boot[e], boot.get(reference, np.full(n_bootstrap, np.nan)))
            rows.append(
                {
                    "estimator": e,
                    "target_lds": target,
                    "ablations_needed": needed[e],
                    "reduction_vs_coar": reduction,
                    "ablations_low": _quantile(boot[e], tail, True),
                    "ablations_high": _quantile(boot[e], 1 - tail, True),
                    "reduction_low": _quantile(boot_red, tail, False),
                    "reduction_high": _quantile(boot_red, 1 - tail, False),
                }
            )
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


def summary_markdown(rows: Sequence[dict[str, object]], study: str, smallest: int, largest: int) -> str:
    """The generated ``summary.md``: the ablations-needed table and how to read it."""
    return (
        f"# {study}: ablated forward passes needed per LDS target\n\n"
        + markdown_table(rows, list(rows[0]))
        + f"\nMasks needed are read off the mean LDS curve over inputs (interpolated in log masks) and "
        f"count every training mask, the estimator's validation split included. A value of {smallest} "
        f"(the smallest train size) means the target was already reached there: the true need is at most "
        f"that. Empty cells: not reached with {largest} masks. `_low`/`_high` are percentile bootstrap "
        f"bounds over test inputs; `reduction_vs_coar` is 1 - masks(estimator) / masks(coar).\n"
    )
