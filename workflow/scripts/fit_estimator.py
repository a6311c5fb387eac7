"""Fit one estimator on the first n training masks, for every test input at once."""

import torch

from compattr.fitting import fit_on_store, save_fit
from compattr.io import provenance, resolve_device, start_log

log = start_log(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
device = resolve_device(snakemake.params.device)
p = snakemake.params
model, seconds = fit_on_store(p.store, p.n_train, p.estimator, p.estimator_params, device)
log.info("fitted %s on %d masks in %.2f s", p.estimator, p.n_train, seconds)
save_fit(
    snakemake.output[0],
    model,
    {
        "estimator": p.get("label", p.estimator),
        "n_train": p.n_train,
        "params": p.estimator_params,
        "fit_seconds": seconds,
        "device": str(device),
        "store": p.store,
        "provenance": provenance(),
    },
)
