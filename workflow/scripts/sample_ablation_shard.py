"""Fill one shard of an ablation store: draw its masks, run the ablated model, write both arrays and its manifest."""

import torch

from compattr.checkpoints import load_checkpoint
from compattr.data import load_test_inputs
from compattr.io import resolve_device, start_log
from compattr.sampling import run_shard
from compattr.units import make_evaluator

log = start_log(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
device = resolve_device(snakemake.params.device)
model, components = load_checkpoint(snakemake.input.model, device=device)
inputs = load_test_inputs(snakemake.input.inputs)
evaluator = make_evaluator(
    model, components, inputs.images, inputs.labels, batch_size=snakemake.params.batch_size, **snakemake.params.forward
)
if hasattr(evaluator, "network"):
    log.info(
        "forward passes on %s in %s, channels-last %s, compiled %s; %d of %d units masked inside a BatchNorm",
        device,
        evaluator.dtype,
        evaluator.channels_last,
        evaluator.compiled,
        evaluator.network.n_folded,
        len(components),
    )
else:
    log.info("a model trained per mask on %s, %d at a time: %s", device, evaluator.batch_size, components.recipe)
shard = int(snakemake.wildcards.shard)
p = snakemake.params
# masks from the store's ablation rate and seed, checked against the config's; the manifest, written last,
# is this job's output
manifest = run_shard(p.store, shard, evaluator, ablation_rate=p.ablation_rate, seed=p.seed)
log.info("shard %d done: %s", shard, manifest)
