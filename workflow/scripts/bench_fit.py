"""Benchmark: batched fits against one scikit-learn model per input in a loop, same data, same LDS."""

import torch

from compattr.bench import fit_speed
from compattr.io import resolve_device, start_log, write_json
from compattr.repair import rebuild_on_damage
from compattr.stores import load_priors, read_rows

log = start_log(snakemake.log[0])
rebuild_on_damage(snakemake.input)  # a damaged store this job reads is rebuilt by the next run
torch.set_num_threads(snakemake.threads)
device = str(resolve_device(snakemake.params.device))
X, Y = read_rows(snakemake.params.train, snakemake.params.n_train)
X_test, Y_test = read_rows(snakemake.params.heldout)
prior, _ = load_priors(list(snakemake.input.get("prior", [])))
results = []
for estimator, params in snakemake.params.estimators.items():
    results.append(
        fit_speed(
            estimator,
            X,
            Y,
            X_test,
            Y_test,
            device=device,
            params=params,
            prior=prior,
            reference_inputs=snakemake.params.reference_inputs,
        )
    )
    log.info("%s", results[-1])
write_json(snakemake.output[0], results)
