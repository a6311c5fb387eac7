"""Forgetting each class: ablate the top-k components of its inputs' mean attribution, per method; score elsewhere."""

import numpy as np

from compattr.analysis import write_table
from compattr.checkpoints import start_model_job
from compattr.data import load_dataset, load_test_ids, load_test_inputs
from compattr.editing import FORGET_COLUMNS, class_accuracy, class_forgetting_masks, scoring_images
from compattr.repair import rebuild_on_damage
from compattr.sampling import ComponentMarginEvaluator, DistinctMasks
from compattr.stores import load_fit

p = snakemake.params
log, _, model, components = start_model_job(
    snakemake.log[0], snakemake.input.model, threads=snakemake.threads, device=snakemake.params.device
)
rebuild_on_damage(snakemake.input)  # a damaged store this job reads is rebuilt by the next run
attributed = load_test_inputs(snakemake.input.inputs)
_, test = load_dataset(**p.data)
# scored on test images that are not among the attributed inputs: those choose the components
scored = test.subset(scoring_images(len(test), load_test_ids(snakemake.input.inputs), p.n_images, p.seed))
# methods often agree on a class's top k: each distinct edit is scored once
evaluator = DistinctMasks(
    ComponentMarginEvaluator(model, components, scored.images, scored.labels, batch_size=p.batch_size, **p.forward)
)
ks = [k for k in p.ks if k <= len(components)]
unedited = evaluator(np.zeros((1, len(components)), dtype=bool))
labels, scored_labels = attributed.labels.numpy(), scored.labels.numpy()
targets = sorted(set(labels.tolist()) & set(scored_labels.tolist()))
rows = []
for method, path in p.fits.items():
    fit = load_fit(path)
    n, passes = fit.attrs["n_train"], fit.attrs.get("passes", fit.attrs["n_train"])
    for target in targets:
        margins = np.concatenate([unedited, evaluator(class_forgetting_masks(fit.coef, labels, target, ks))])
        own, others = class_accuracy(margins, scored_labels, target)
        log.info(
            "%s class %d: accuracy %.3f -> %.3f, others %.3f -> %.3f",
            method,
            target,
            own[0],
            own[-1],
            others[0],
            others[-1],
        )
        rows += [(method, p.model, n, passes, target, k, a, b) for k, a, b in zip([0, *ks], own, others, strict=True)]
write_table(snakemake.output[0], FORGET_COLUMNS, rows)
