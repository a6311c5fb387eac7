"""Fill one shard of an ablation store: draw its masks, run the ablated model, write both arrays and its manifest."""

from compattr.checkpoints import start_model_job
from compattr.data import load_test_inputs
from compattr.sampling import run_shard
from compattr.units import make_evaluator

log, _, model, components = start_model_job(
    snakemake.log[0], snakemake.input.model, threads=snakemake.threads, device=snakemake.params.device
)
inputs = load_test_inputs(snakemake.input.inputs)
evaluator = make_evaluator(
    model, components, inputs.images, inputs.labels, batch_size=snakemake.params.batch_size, **snakemake.params.forward
)
log.info("%s (%d units)", evaluator.describe(), len(components))
shard = int(snakemake.wildcards.shard)
p = snakemake.params
# masks from the store's ablation rate and seed, checked against the config's; the manifest, written last,
# is this job's output
manifest = run_shard(p.store, shard, evaluator, ablation_rate=p.ablation_rate, seed=p.seed)
log.info("shard %d done: %s", shard, manifest)
