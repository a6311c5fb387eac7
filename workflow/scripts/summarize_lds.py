"""Collect the per-method LDS tables; tabulate masks needed per LDS target, with reductions."""

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from compattr.analysis import (
    ceiling_targets,
    coefficient_agreement,
    concat_csv,
    curve_dips,
    fit_quality_markdown,
    fit_quality_rows,
    grouped_gain_markdown,
    read_lds_csv,
    resampled_sources,
    summary_markdown,
    summary_rows,
)
from compattr.fitting import load_fit
from compattr.io import start_log

log = start_log(snakemake.log[0])
cfg = snakemake.params.analysis
concat_csv(snakemake.input.heldout, snakemake.output.lds)
concat_csv(snakemake.input.ood, snakemake.output.ood)
table = read_lds_csv(snakemake.output.lds)
references = cfg["references"]
ceiling, headings = ceiling_targets(table, cfg["ceiling_fractions"])
log.info("ceiling (best mean LDS at the largest train size): %.3f", ceiling)
rows = summary_rows(
    table,
    [*cfg["lds_targets"], *headings],
    cfg["n_bootstrap"],
    cfg["ci"],
    cfg["seed"],
    references=references,
    linear=cfg["linear_baselines"],
)
with open(snakemake.output.summary, "w", newline="") as fh:
    writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows({k: ("" if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()} for r in rows)

n_components = len(Path(snakemake.input.components).read_text().splitlines()) - 1  # a header, then one per component
dips = curve_dips(table, n_components)
notes = [
    "## Fit quality",
    "",
    fit_quality_markdown(fit_quality_rows(snakemake.input.fits)).rstrip(),
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
fits = defaultdict(list)  # baseline -> its fit on each model, in model order
for fit in map(load_fit, snakemake.input.baselines):
    fits[fit.attrs["estimator"]].append(fit)
if {"attribution_patching", "loo"} <= set(fits):
    pairs = zip(fits["attribution_patching"], fits["loo"], strict=True)
    r = np.concatenate([coefficient_agreement(atp.coef, loo.coef) for atp, loo in pairs])
    notes.append(
        f"Attribution patching against leave-one-out (exact single ablations): per-input Pearson correlation "
        f"of the attributions, mean {r.mean():.3f}, median {np.median(r):.3f}, range [{r.min():.3f}, {r.max():.3f}] "
        f"over {len(r)} inputs (every model's)."
    )
if "attribution_patching" in fits and {"gradient_prior", "ridge"} <= set(table.estimators):
    margin = np.mean([fit.intercept for fit in fits["attribution_patching"]], axis=0)
    for covariate, label in (
        (table.per_input("attribution_patching")[0], "prior's own LDS"),
        (margin, "unablated margin"),
    ):
        notes += [
            "",
            f"Where the gradient prior helps: mean per-input LDS of gradient_prior minus ridge at each train size, "
            f"inputs in thirds by the {label} (both averaged over models and mask draws).",
            "",
            grouped_gain_markdown(table, "gradient_prior", "ridge", covariate, label).rstrip(),
        ]
sizes = sorted({int(n) for e in table.estimators for n in table.sizes[e] if len(table.sizes[e]) > 1 and n > 0})
with open(snakemake.output.markdown, "w") as fh:
    sources = f"the {resampled_sources(table)}"
    fh.write(summary_markdown(rows, snakemake.params.study, sizes[0], sizes[-1], notes, references, headings, sources))
log.info("wrote %s", snakemake.output.markdown)
