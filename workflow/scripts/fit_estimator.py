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
ablation_rate = store.settings()["ablation_rate"]
# 2-layer estimators that train the same networks as this one are fitted with it, in one training
# (compattr.registry.training_groups); their fits go to shared/<name>/, which their own rule copies out.
estimators = {p.estimator: p.estimator_params, **p.get("readouts", {})}
draws = fit_draws(store, p.sizes, p.replicates, estimators, device, prior=prior)
for n, replicate, models, seconds in draws:
    together = f" (one training for {', '.join(models)})" if len(models) > 1 else ""
    log.info("fitted %s on %d masks (draw %d) in %.2f s%s", p.estimator, n, replicate, seconds, together)
    for name, model in models.items():
        folder = out if name == p.estimator else out / "shared" / name
        save_fit(
            folder / fit_store_name(n, replicate),
            model,
            {
                "estimator": p.get("label", name) if name == p.estimator else name,
                "model": p.model,
                "replicate": replicate,
                "n_train": n,
                "passes": n + prior_passes,
                "params": estimators[name],
                "fit_seconds": seconds,
                "trained_with": list(models),
                "device": str(device),
                "store": p.store,
                "ablation_rate": ablation_rate,
                "prior": prior_paths,
                "provenance": provenance(),
            },
            coords,
        )
