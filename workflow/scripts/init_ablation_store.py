"""Create an empty ablation store whose shards the sampling jobs fill."""

from compattr.checkpoints import load_checkpoint
from compattr.data import load_test_ids, load_test_inputs
from compattr.io import provenance, start_log
from compattr.stores import create_mask_store, shard_count, write_coordinates

log = start_log(snakemake.log[0])
_, components = load_checkpoint(snakemake.input.model)
inputs = load_test_inputs(snakemake.input.inputs)
n_inputs = len(inputs)
group = create_mask_store(
    snakemake.params.store,
    n_masks=snakemake.params.n_masks,
    n_units=len(components),
    n_inputs=n_inputs,
    shard_size=snakemake.params.shard_size,
    ablation_rate=snakemake.params.ablation_rate,
    seed=snakemake.params.seed,
    attributes=provenance(snakemake.params.provenance),
)
write_coordinates(
    group, components=components.names, inputs=load_test_ids(snakemake.input.inputs), labels=inputs.labels.numpy()
)
log.info(
    "created %s: %d masks x %d components, %d inputs, %d shards",
    snakemake.params.store,
    snakemake.params.n_masks,
    len(components),
    n_inputs,
    shard_count(snakemake.params.n_masks, snakemake.params.shard_size),
)
