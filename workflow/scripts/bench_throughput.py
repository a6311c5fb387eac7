"""Benchmark: ablated sampling against plain inference of the study's model, same batch and device."""

import torch

from compattr.bench import forward_throughput
from compattr.checkpoints import start_model_job
from compattr.data import load_test_inputs
from compattr.io import provenance, write_json

log, device, model, components = start_model_job(
    snakemake.log[0], snakemake.input.model, threads=snakemake.threads, device=snakemake.params.device
)
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
