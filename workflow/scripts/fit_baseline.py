"""Compute a sampling-free method for every test input: a first-order prior, or leave-one-out."""

from compattr.baselines import leave_one_out
from compattr.checkpoints import start_model_job
from compattr.data import load_test_ids, load_test_inputs
from compattr.io import provenance
from compattr.stores import save_linear_fit
from compattr.units import make_evaluator, unit_prior

log, device, model, components = start_model_job(
    snakemake.log[0], snakemake.input.model, threads=snakemake.threads, device=snakemake.params.device
)
inputs = load_test_inputs(snakemake.input.inputs)
images, labels = inputs.images, inputs.labels
baseline, prior = snakemake.params.baseline, snakemake.params.prior
# ablated forward passes: leave-one-out's, and a prior's exact_top (a simulated margin measures its own)
evaluator = None
if prior is None or (prior.get("exact_top") and prior.get("margin") != "simulated"):
    evaluator = make_evaluator(
        model, components, images, labels, batch_size=snakemake.params.batch_size, **snakemake.params.forward
    )
if prior is not None:
    settings = {"n_points": 1, "seed": 0, **prior}
    # relu: exact reuses the same passes; exact_top adds one evaluation per unit it measures, and one unablated
    coef, intercept, passes = unit_prior(
        model, components, images, labels, ablation_rate=snakemake.params.ablation_rate, evaluator=evaluator, **settings
    )
else:
    coef, intercept = leave_one_out(evaluator, len(components))
    passes = len(components)
log.info(
    "%s: %d inputs x %d units, %d forward-equivalent passes (data: trained models) per input batch",
    baseline,
    *coef.shape,
    passes,
)
save_linear_fit(
    snakemake.output[0],
    coef,
    intercept,
    {
        "estimator": baseline,
        "model": snakemake.params.model,
        "n_train": 0,
        "passes": passes,
        "prior": prior,
        "baseline": True,
        "device": str(device),
        "provenance": provenance(),
    },
    {"components": components.names, "inputs": load_test_ids(snakemake.input.inputs), "labels": labels.numpy()},
)
