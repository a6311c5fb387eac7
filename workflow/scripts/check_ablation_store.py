"""Verify every shard of an ablation store (checksums, written, finite, its own masks); summarise it."""

from functools import partial

from compattr.io import start_log, write_json
from compattr.sampling import expected_shard_masks
from compattr.stores import check_mask_store

log = start_log(snakemake.log[0])
summary = check_mask_store(snakemake.params.store, partial(expected_shard_masks, snakemake.params.store))
log.info("%s: %s", snakemake.params.store, summary)
write_json(snakemake.output[0], summary)
