"""Benchmark: linear fits on planted sparse problems at the seed's scale, time and peak memory per estimator."""

import itertools

import torch

from compattr.bench import scale_fits
from compattr.io import provenance, start_log, write_json
from compattr.reports import scale_markdown

log = start_log(snakemake.log[0])
cfg = snakemake.params.scale
records = scale_fits(
    cfg["estimators"],
    list(itertools.product(cfg["components"], cfg["masks"])),
    cfg["inputs"],
    cfg["ablation_rate"],
    cfg["seed"],
    cfg["limit_s"],
    snakemake.threads,
)
for record in records:
    log.info("%s", record)
write_json(
    snakemake.output.json,
    {
        "fits": records,
        "threads": snakemake.threads,
        "device": "cpu",
        "torch": torch.__version__,
        "provenance": provenance(),
    },
)
with open(snakemake.output.table, "w") as table:
    table.write(scale_markdown(records))
