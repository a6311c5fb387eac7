"""Compute a sampling-free baseline (attribution patching or leave-one-out) for every test input."""

import torch

from compattr.baselines import attribution_patching, leave_one_out
from compattr.data import load_test_inputs
from compattr.fitting import save_linear_fit
from compattr.io import provenance, resolve_device, start_log
from compattr.models import load_checkpoint
from compattr.sampling import ComponentMarginEvaluator

log = start_log(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
device = resolve_device(snakemake.params.device)
model, components = load_checkpoint(snakemake.input.model, device=device)
inputs = load_test_inputs(snakemake.input.inputs)
images, labels = inputs.images, inputs.labels
baseline = snakemake.params.baseline
if baseline == "attribution_patching":
    coef, intercept = attribution_patching(model, components, images, labels)
    passes = 0  # one forward and one backward pass, no ablated forward pass
else:
    evaluator = ComponentMarginEvaluator(
        model, components, images, labels, batch_size=snakemake.params.batch_size, **snakemake.params.forward
    )
    coef, intercept = leave_one_out(evaluator, len(components))
    passes = len(components)
log.info("%s: %d inputs x %d components, %d ablated forward passes per input", baseline, *coef.shape, passes)
save_linear_fit(
    snakemake.output[0],
    coef,
    intercept,
    {
        "estimator": baseline,
        "model": snakemake.params.model,
        "n_train": passes,
        "baseline": True,
        "device": str(device),
        "provenance": provenance(),
    },
)
