"""Check that every shard of an ablation store is written and finite; summarise it."""

from compattr.io import start_log, write_json
from compattr.stores import check_mask_store

log = start_log(snakemake.log[0])
summary = check_mask_store(snakemake.params.store)
log.info("%s: %s", snakemake.params.store, summary)
write_json(snakemake.output[0], summary)
