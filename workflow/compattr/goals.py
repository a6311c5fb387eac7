"""The cheapest method to a study's target, against COAR as run, across studies (``python -m compattr.goals``).

A study's target is LDS 0.9, or 90% of its ceiling (the best mean LDS of a fitted
estimator at its largest train size) where 0.9 lies above the ceiling. Read from each
study's ``lds.csv`` and ``summary.csv``; the tables are what docs/results.md quotes.
With ``--priors``, each study's sampling-free methods (priors, leave-one-out) instead:
their passes and mean LDS.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Sequence
from pathlib import Path

from compattr.analysis import ceiling_targets, read_lds_csv

__all__ = ["goal_row", "goal_markdown", "sampling_free_rows", "sampling_free_markdown", "main"]


def _float(cell: str) -> float:
    return float(cell) if cell not in ("", None) else math.nan


def _ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``: infinite where the denominator is 0 or less (nothing paid), NaN where unknown."""
    if math.isnan(numerator) or math.isnan(denominator):
        return math.nan
    return numerator / denominator if denominator > 0 else math.inf


def _cheapest(rows: list[dict], column: str) -> tuple[list[dict], float]:
    """The rows with the smallest value of ``column`` (passes) and that value; none and NaN where none has one."""
    reached = [r for r in rows if not math.isnan(_float(r[column]))]
    cost = min((_float(r[column]) for r in reached), default=math.nan)
    return [r for r in reached if _float(r[column]) == cost], cost


def goal_row(study: str | Path, *, target: float = 0.9, fraction: float = 0.9, reference: str = "coar") -> dict:
    """The cheapest methods to ``study``'s target, their passes, ``reference``'s, and the ratios.

    ``study`` is a study's results folder (``results/<study>``). The target is ``target``,
    or ``fraction`` of the ceiling where ``target`` lies above the ceiling; it must be one
    of the summary's targets. Two answers: the cheapest method by its passes needed on the
    inputs as scored (``cheapest``, ``passes``, ``ratio`` against ``reference``'s), and the
    cheapest by the upper end of its bootstrap interval (``robust``: it reaches the target
    in all but the interval's tail of resamples of the inputs; ``robust_passes`` that upper
    end, ``ratio_low`` the lower end of its ratio's interval against ``reference``).
    """
    study = Path(study)
    ceiling, _ = ceiling_targets(read_lds_csv(study / "lds.csv"), [fraction])
    goal = target if target <= ceiling else round(fraction * ceiling, 3)
    with open(study / "summary.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if math.isclose(float(r["target_lds"]), goal, abs_tol=5e-4)]
    if not rows:
        raise ValueError(f"{study / 'summary.csv'} has no rows at the target LDS {goal}")
    ref = next((_float(r["ablations_needed"]) for r in rows if r["estimator"] == reference), math.nan)
    out = {"study": study.name, "ceiling": ceiling, "target": goal, "reference": ref}
    cheapest, passes = _cheapest(rows, "ablations_needed")
    robust, robust_passes = _cheapest(rows, "ablations_high")
    # the reduction's lower end is the ratio's: ratio = 1 / (1 - reduction)
    low = max((_float(r.get(f"reduction_vs_{reference}_low", "")) for r in robust), default=math.nan)
    out |= {
        "cheapest": ", ".join(r["estimator"] for r in cheapest),
        "passes": passes,
        "ratio": _ratio(ref, passes),
        "robust_method": ", ".join(r["estimator"] for r in robust),
        "robust_passes": robust_passes,
        "ratio_low": _ratio(1.0, 1 - low),
    }
    return out


def goal_markdown(rows: Sequence[dict], reference: str = "coar", goal: float = 10.0) -> str:
    """A Markdown table of :func:`goal_row` rows, marking where the ratio's lower end reaches ``goal``."""
    header = ["study", "ceiling", "target LDS", f"{reference}", "cheapest method", "passes", "ratio"]
    header += ["cheapest across resamples", "passes (upper end)", "ratio (lower end)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def number(value: float, unit: str = "") -> str:
        if math.isnan(value):
            return ""
        return f"{value:.1f}{unit}" if unit else f"{value:,.0f}"

    for r in rows:
        met = " (met)" if r["ratio_low"] >= goal else ""
        cells = [r["study"], f"{r['ceiling']:.3f}", f"{r['target']:.3f}", number(r["reference"]) or "not reached"]
        cells += [r["cheapest"] or "none reaches it", number(r["passes"]), number(r["ratio"], "x")]
        cells += [r["robust_method"] or "none", number(r["robust_passes"]), number(r["ratio_low"], "x") + met]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def sampling_free_rows(study: str | Path) -> list[dict]:
    """The methods of ``study`` that fit on no masks (first-order priors, leave-one-out): passes and mean LDS.

    Those whose every row in ``lds.csv`` has ``n_train`` 0, cheapest first; the mean is over
    inputs, models and draws.
    """
    with open(Path(study) / "lds.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    fitted = {r["estimator"] for r in rows if int(r["n_train"]) > 0}
    out: dict[str, dict] = {}
    for r in rows:
        if r["estimator"] not in fitted:
            entry = out.setdefault(r["estimator"], {"method": r["estimator"], "passes": int(r["passes"]), "lds": []})
            entry["lds"].append(float(r["spearman"]))
    return sorted(
        ({**e, "lds": sum(e["lds"]) / len(e["lds"])} for e in out.values()), key=lambda e: (e["passes"], e["method"])
    )


def sampling_free_markdown(studies: dict[str, list[dict]]) -> str:
    """One Markdown table per study of :func:`sampling_free_rows`: method, passes, mean LDS."""
    out = []
    for name, rows in studies.items():
        out += [f"`{name}`:", "", "| method | passes | LDS |", "|---|---|---|"]
        out += [f"| `{r['method']}` | {r['passes']:,} | {r['lds']:.3f} |" for r in rows]
        out.append("")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> None:
    """Print the table for the study folders given on the command line."""
    parser = argparse.ArgumentParser(prog="python -m compattr.goals", description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+", help="results/<study> folders, each with lds.csv and summary.csv")
    parser.add_argument("--reference", default="coar")
    parser.add_argument("--priors", action="store_true", help="the sampling-free methods of each study instead")
    args = parser.parse_args(argv)
    if args.priors:
        print(sampling_free_markdown({Path(s).name: sampling_free_rows(s) for s in args.studies}), end="")
        return
    print(goal_markdown([goal_row(s, reference=args.reference) for s in args.studies], args.reference), end="")


if __name__ == "__main__":
    main()
