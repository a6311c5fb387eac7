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


def goal_row(study: str | Path, *, target: float = 0.9, fraction: float = 0.9, reference: str = "coar") -> dict:
    """The cheapest method to ``study``'s target, its passes, ``reference``'s, and the ratio with its interval.

    ``study`` is a study's results folder (``results/<study>``). The target is ``target``,
    or ``fraction`` of the ceiling where ``target`` lies above the ceiling; it must be one
    of the summary's targets. The ratio's interval comes from the summary's bootstrap
    interval of the cheapest method's reduction against ``reference`` (NaN where over half
    of the resamples do not reach the target, or the cheapest method's own interval is open).
    """
    study = Path(study)
    ceiling, _ = ceiling_targets(read_lds_csv(study / "lds.csv"), [fraction])
    goal = target if target <= ceiling else round(fraction * ceiling, 3)
    with open(study / "summary.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if math.isclose(float(r["target_lds"]), goal, abs_tol=5e-4)]
    if not rows:
        raise ValueError(f"{study / 'summary.csv'} has no rows at the target LDS {goal}")
    reached = [r for r in rows if not math.isnan(_float(r["ablations_needed"]))]
    ref = next((_float(r["ablations_needed"]) for r in rows if r["estimator"] == reference), math.nan)
    out = {"study": study.name, "ceiling": ceiling, "target": goal, "reference": ref}
    if not reached:
        return out | {"cheapest": "", "passes": math.nan, "ratio": math.nan, "ratio_low": math.nan}
    cost = min(_float(r["ablations_needed"]) for r in reached)
    cheapest = [r for r in reached if _float(r["ablations_needed"]) == cost]
    # the reduction's lower bound is the ratio's lower bound: ratio = 1 / (1 - reduction); open where the
    # cheapest method's own interval is (some resamples of the inputs do not reach the target)
    bounded = [r for r in cheapest if not math.isnan(_float(r["ablations_high"]))]
    low = max((_float(r.get(f"reduction_vs_{reference}_low", "")) for r in bounded), default=math.nan)
    return out | {
        "cheapest": ", ".join(r["estimator"] for r in cheapest),
        "passes": cost,
        "ratio": ref / cost if cost > 0 else math.inf,
        "ratio_low": 1 / (1 - low) if low < 1 else (math.inf if low >= 1 else math.nan),
    }


def goal_markdown(rows: Sequence[dict], reference: str = "coar", goal: float = 10.0) -> str:
    """A Markdown table of :func:`goal_row` rows, saying whether each ratio reaches ``goal`` over its interval."""
    header = ["study", "ceiling", "target LDS", "cheapest method", "passes", f"{reference}", "ratio", "lower bound"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        ref = "not reached" if math.isnan(r["reference"]) else f"{r['reference']:,.0f}"
        if not r["cheapest"]:
            lines.append(f"| {r['study']} | {r['ceiling']:.3f} | {r['target']:.3f} | none reaches it | | {ref} | | |")
            continue
        ratio = "" if math.isnan(r["ratio"]) else f"{r['ratio']:.1f}x"
        low = "open" if math.isnan(r["ratio_low"]) else f"{r['ratio_low']:.1f}x"
        met = " (met)" if r["ratio_low"] >= goal else ""
        cells = [r["study"], f"{r['ceiling']:.3f}", f"{r['target']:.3f}", r["cheapest"], f"{r['passes']:,.0f}", ref]
        lines.append("| " + " | ".join([*cells, ratio, low + met]) + " |")
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
