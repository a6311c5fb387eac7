"""Benchmark: ablated sampling against plain inference of the study's model, same batch and device."""

import torch

from compattr.bench import forward_throughput
from compattr.checkpoints import load_checkpoint
from compattr.data import load_test_inputs
from compattr.io import provenance, resolve_device, start_log, write_json

log = start_log(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
device = resolve_device(snakemake.params.device)
model, components = load_checkpoint(snakemake.input.model, device=device)
inputs = load_test_inputs(snakemake.input.inputs)
result = forward_throughput(
    model,
    components,
    inputs.images,
    inputs.labels,
    batch=snakemake.params.batch,
    **snakemake.params.forward,
)
result = {
    "model": f"{snakemake.params.study} ({len(components)} components)",
    **result,
    "threads": torch.get_num_threads(),
    "provenance": provenance(),
}
log.info("%s", result)
write_json(snakemake.output[0], result)
