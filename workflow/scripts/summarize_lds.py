"""Collect the per-estimator LDS tables; tabulate ablations needed per LDS target."""

import csv

from compattr.analysis import markdown_table, read_lds_csv, summary_markdown, summary_rows
from compattr.io import start_log

log = start_log(snakemake.log[0])
cfg = snakemake.params.analysis
with open(snakemake.output.lds, "w") as out:
    for k, path in enumerate(snakemake.input):
        with open(path) as fh:
            lines = fh.readlines()
        out.writelines(lines if k == 0 else lines[1:])
table = read_lds_csv(snakemake.output.lds)
rows = summary_rows(table, cfg["lds_targets"], cfg["n_bootstrap"], cfg["ci"], cfg["seed"])
columns = ["estimator", "target_lds", "ablations_needed", "reduction_vs_coar"]
with open(snakemake.output.summary, "w", newline="") as fh:
    writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows({k: ("" if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in rows)
sizes = sorted({int(n) for e in table.estimators for n in table.sizes[e]})
with open(snakemake.output.markdown, "w") as fh:
    fh.write(summary_markdown(rows, snakemake.params.study, sizes[0], sizes[-1]))
log.info("summary:\n%s", markdown_table(rows, columns))
