"""Fit one estimator at every train size on every disjoint draw of training masks, for every test input at once."""

from pathlib import Path

import torch

from compattr.fitting import fit_draws
from compattr.io import provenance, resolve_device, start_log
from compattr.repair import rebuild_on_damage
from compattr.stores import MaskStore, fit_store_name, load_priors, read_coordinates, save_fit

log = start_log(snakemake.log[0])
rebuild_on_damage(snakemake.input)  # a damaged store this job reads is rebuilt by the next run
torch.set_num_threads(snakemake.threads)
device = resolve_device(snakemake.params.device)
p = snakemake.params
prior_paths = list(snakemake.input.get("prior", []))  # first-order priors' fits, for estimators that take them
prior, prior_passes = load_priors(prior_paths)  # their cost is added to every fit's masks
out = Path(snakemake.output[0])
out.mkdir(parents=True, exist_ok=True)
store = MaskStore.open(p.store)
coords = read_coordinates(store)  # component names, input ids and labels, copied into every fit
draws = fit_draws(store, p.sizes, p.replicates, p.estimator, p.estimator_params, device, prior=prior)
for n, replicate, model, seconds in draws:
    log.info("fitted %s on %d masks (draw %d) in %.2f s", p.estimator, n, replicate, seconds)
    save_fit(
        out / fit_store_name(n, replicate),
        model,
        {
            "estimator": p.get("label", p.estimator),
            "model": p.model,
            "replicate": replicate,
            "n_train": n,
            "passes": n + prior_passes,
            "params": p.estimator_params,
            "fit_seconds": seconds,
            "device": str(device),
            "store": p.store,
            "ablation_rate": store.settings()["ablation_rate"],
            "prior": prior_paths,
            "provenance": provenance(),
        },
        coords,
    )
