"""Benchmark: the study's 2-layer fits with their settings against the reference settings, every train size."""

import torch

from compattr.bench import shared_training_speed, two_layer_speed, two_layer_summary
from compattr.io import provenance, resolve_device, start_log, write_json
from compattr.repair import rebuild_on_damage
from compattr.reports import two_layer_markdown
from compattr.stores import load_priors

log = start_log(snakemake.log[0])
rebuild_on_damage(snakemake.input)  # a damaged store this job reads is rebuilt by the next run
torch.set_num_threads(snakemake.threads)
p = snakemake.params
device = str(resolve_device(p.device))
prior, _ = load_priors(list(snakemake.input.get("prior", [])))
records = two_layer_speed(p.train, p.heldout, p.sizes, p.estimators, p.reference, device, prior)
for record in records:
    log.info("%s", record)
summary = two_layer_summary(records)
shared = shared_training_speed(p.train, p.heldout, p.estimators, records, device, prior)  # one by one: records
for record in shared:
    log.info("%s", record)
write_json(
    snakemake.output.json,
    {
        "summary": summary,
        "fits": records,
        "shared_training": shared,
        "reference": p.reference,
        "settings": p.estimators,
        "threads": snakemake.threads,
        "device": device,
        "torch": torch.__version__,
        "provenance": provenance(),
    },
)
with open(snakemake.output.table, "w") as table:
    table.write(two_layer_markdown(summary, records, shared))
