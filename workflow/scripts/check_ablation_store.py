"""Verify every shard of an ablation store (checksums, written, finite, its own masks, manifests); summarise it.

Faulty shards lose their manifests (this job's inputs), so the next run samples exactly those shards again.
"""

from functools import partial

from compattr.io import start_log, write_json
from compattr.masks import expected_shard_masks
from compattr.repair import rebuild_on_damage
from compattr.stores import MaskStore, check_mask_store

log = start_log(snakemake.log[0])
rebuild_on_damage(snakemake.input)  # a damaged store this job reads is rebuilt by the next run
p = snakemake.params
store = MaskStore.open(p.store)
store.check_settings(ablation_rate=p.ablation_rate, seed=p.seed)  # the config is the source of truth
summary = check_mask_store(store, partial(expected_shard_masks, store), repair=True)
log.info("%s: %s", store, summary)
write_json(snakemake.output[0], summary)
