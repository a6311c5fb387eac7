"""Collect the per-method LDS tables; tabulate masks needed per LDS target, with reductions."""

import csv

import numpy as np

from compattr.analysis import coefficient_agreement, concat_csv, read_lds_csv, summary_markdown, summary_rows
from compattr.fitting import load_fit
from compattr.io import start_log

log = start_log(snakemake.log[0])
cfg = snakemake.params.analysis
concat_csv(snakemake.input.heldout, snakemake.output.lds)
concat_csv(snakemake.input.ood, snakemake.output.ood)
table = read_lds_csv(snakemake.output.lds)
rows = summary_rows(
    table, cfg["lds_targets"], cfg["n_bootstrap"], cfg["ci"], cfg["seed"], linear=cfg["linear_baselines"]
)
with open(snakemake.output.summary, "w", newline="") as fh:
    writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows({k: ("" if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()} for r in rows)

notes = []
fits = {fit.attrs["estimator"]: fit for fit in map(load_fit, snakemake.input.baselines)}
if {"attribution_patching", "loo"} <= set(fits):
    r = coefficient_agreement(fits["attribution_patching"].coef, fits["loo"].coef)
    notes.append(
        f"Attribution patching against leave-one-out (exact single ablations): per-input Pearson correlation "
        f"of the attributions, mean {r.mean():.3f}, median {np.median(r):.3f}, range [{r.min():.3f}, {r.max():.3f}] "
        f"over {len(r)} inputs."
    )
sizes = sorted({int(n) for e in table.estimators for n in table.sizes[e] if len(table.sizes[e]) > 1})
with open(snakemake.output.markdown, "w") as fh:
    fh.write(summary_markdown(rows, snakemake.params.study, sizes[0], sizes[-1], notes))
log.info("wrote %s", snakemake.output.markdown)
