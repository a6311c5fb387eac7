"""Fixing mistakes: per misclassified image, ablate the k components each method predicts raise its margin most.

With the ``reference`` parameter, the reference instead: k components drawn at random per image. It needs no fit,
so its own job runs alongside the fits, and the methods' job appends its rows.
"""

import numpy as np

from compattr.analysis import read_table, write_table
from compattr.checkpoints import start_model_job
from compattr.data import load_dataset, load_test_ids, load_test_inputs
from compattr.editing import (
    FIX_COLUMNS,
    accuracy_elsewhere,
    fix_ablation,
    fix_rows,
    fixing_order,
    random_fix_rows,
    scoring_images,
)
from compattr.repair import rebuild_on_damage
from compattr.sampling import ComponentMarginEvaluator, DistinctMasks
from compattr.stores import fit_stores, load_fit

p = snakemake.params
log, _, model, components = start_model_job(
    snakemake.log[0], snakemake.input.model, threads=snakemake.threads, device=snakemake.params.device
)
rebuild_on_damage(snakemake.input)  # a damaged store this job reads is rebuilt by the next run
mistakes = load_test_inputs(snakemake.input.mistakes)
_, test = load_dataset(**p.data)
# the edit must be local: the edited model is scored on test images that are neither attributed nor mistakes
exclude = np.union1d(load_test_ids(snakemake.input.inputs), load_test_ids(snakemake.input.mistakes))
others = test.subset(scoring_images(len(test), exclude, p.n_images, p.seed))
forward = {"batch_size": p.batch_size, **p.forward}
evaluator = ComponentMarginEvaluator(model, components, mistakes.images, mistakes.labels, **forward)
# methods often agree on their top k: each distinct edit is scored once
elsewhere = DistinctMasks(ComponentMarginEvaluator(model, components, others.images, others.labels, **forward))
n_components = len(components)
ks = [k for k in p.ks if k <= n_components]
unablated = evaluator(np.zeros((1, n_components), dtype=bool))[0]
if p.reference:
    labels = ("random", p.model, 0, 0)
    rows = random_fix_rows(evaluator.paired, elsewhere, n_components, ks, unablated, p.random_draws, p.seed, labels)
else:
    rows = []
    for method, entries in p.fits.items():
        stores = [store for entry in entries for store in fit_stores(entry)]
        largest = max(load_fit(store).attrs["n_train"] for store in stores)
        for path in stores:
            fit = load_fit(path)
            n, passes = fit.attrs["n_train"], fit.attrs.get("passes", fit.attrs["n_train"])
            result = fix_ablation(evaluator.paired, fit.coef, ks, unablated)
            other = accuracy_elsewhere(elsewhere, fixing_order(fit.coef), ks) if n == largest else None
            log.info("%s n=%d: fixed at k=%d: %.2f", method, n, ks[-1], result["fixed"][-1].mean())
            rows += fix_rows((method, p.model, n, passes), ks, result, other)
    rows += [tuple(row[c] for c in FIX_COLUMNS) for row in read_table(snakemake.input.random, FIX_COLUMNS)]
write_table(snakemake.output[0], FIX_COLUMNS, rows)
