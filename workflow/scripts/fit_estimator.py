"""Fit one estimator on the first n training masks, for every test input at once."""

import torch

from compattr.fitting import fit_on_store, load_fit, save_fit
from compattr.io import provenance, resolve_device, start_log

log = start_log(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
device = resolve_device(snakemake.params.device)
p = snakemake.params
prior_path = snakemake.input.get("prior")  # attribution patching's fit, for estimators that take a prior
prior = load_fit(prior_path).coef if prior_path else None
model, seconds = fit_on_store(p.store, p.n_train, p.estimator, p.estimator_params, device, prior=prior)
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
        "prior": prior_path,
        "provenance": provenance(),
    },
)
