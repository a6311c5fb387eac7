"""Fill one shard of an ablation store: draw its masks, run the ablated model, write both arrays."""

import numpy as np
import torch

from compattr.io import resolve_device, start_log, write_json
from compattr.models import load_checkpoint
from compattr.sampling import ComponentMarginEvaluator, run_shard

log = start_log(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
device = resolve_device(snakemake.params.device)
model, components = load_checkpoint(snakemake.input.model, device=device)
inputs = np.load(snakemake.input.inputs)
evaluator = ComponentMarginEvaluator(
    model,
    components,
    torch.from_numpy(inputs["images"]),
    torch.from_numpy(inputs["labels"]),
    batch_size=snakemake.params.batch_size,
)
shard = int(snakemake.wildcards.shard)
summary = run_shard(snakemake.params.store, shard, evaluator, alpha=snakemake.params.alpha, seed=snakemake.params.seed)
log.info("shard %d done: %s", shard, summary)
write_json(snakemake.output[0], summary)
