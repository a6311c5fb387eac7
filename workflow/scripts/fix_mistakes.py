"""Fixing mistakes: per misclassified image, ablate the k components each method predicts raise its margin most."""

import numpy as np
import torch

from compattr.data import load_dataset, load_test_ids, load_test_inputs
from compattr.editing import (
    FIX_COLUMNS,
    fix_ablation,
    fix_rows,
    fixing_order,
    random_orders,
    scoring_images,
    top_k_masks,
    write_rows,
)
from compattr.io import resolve_device, start_log
from compattr.models import load_checkpoint
from compattr.sampling import ComponentMarginEvaluator, DistinctMasks
from compattr.stores import fit_stores, load_fit

log = start_log(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
p = snakemake.params
device = resolve_device(p.device)
model, components = load_checkpoint(snakemake.input.model, device=device)
mistakes = load_test_inputs(snakemake.input.mistakes)
_, test = load_dataset(**p.data)
# the edit must be local: the edited model is scored on test images that are neither attributed nor mistakes
exclude = np.union1d(load_test_ids(snakemake.input.inputs), load_test_ids(snakemake.input.mistakes))
others = test.subset(scoring_images(len(test), exclude, p.n_images, p.seed))
forward = {"batch_size": p.batch_size, **p.forward}
evaluator = ComponentMarginEvaluator(model, components, mistakes.images, mistakes.labels, **forward)
# methods often agree on their top k: each distinct edit is scored once
elsewhere = DistinctMasks(ComponentMarginEvaluator(model, components, others.images, others.labels, **forward))
n_inputs, n_components = len(mistakes.labels), len(components)
ks = [k for k in p.ks if k <= n_components]
unablated = evaluator(np.zeros((1, n_components), dtype=bool))[0]


def accuracy_elsewhere(order: np.ndarray) -> np.ndarray:
    """Accuracy on the other images of each input's edit, ``(len(ks), n_inputs)``."""
    return np.array([(elsewhere(top_k_masks(order, k)) > 0).mean(axis=1) for k in ks])


rows = []
for method, entries in p.fits.items():
    stores = [store for entry in entries for store in fit_stores(entry)]
    largest = max(load_fit(store).attrs["n_train"] for store in stores)
    for path in stores:
        fit = load_fit(path)
        n, passes = fit.attrs["n_train"], fit.attrs.get("passes", fit.attrs["n_train"])
        result = fix_ablation(evaluator.paired, fit.coef, ks, unablated)
        other = accuracy_elsewhere(fixing_order(fit.coef)) if n == largest else None
        log.info("%s n=%d: fixed at k=%d: %.2f", method, n, ks[-1], result["fixed"][-1].mean())
        rows += fix_rows((method, p.model, n, passes), ks, result, other)
# The reference: k components drawn at random per input (mean over draws); k = 0 is the unedited model.
rng = np.random.default_rng(p.seed)
no_effects = np.zeros((n_inputs, n_components))
draws = []
for _ in range(p.random_draws):
    order = random_orders(n_inputs, n_components, rng)
    edit = fix_ablation(evaluator.paired, no_effects, ks, unablated, order)
    draws.append({**edit, "other": accuracy_elsewhere(order)})
result = {key: np.mean([draw[key] for draw in draws], axis=0) for key in ("true_change", "fixed", "other")}
result["predicted_change"] = np.full_like(result["true_change"], np.nan)
unedited = (elsewhere(np.zeros((1, n_components), dtype=bool)) > 0).mean()
rows += [("random", p.model, 0, 0, i, 0, np.nan, 0.0, False, unedited) for i in range(n_inputs)]
rows += fix_rows(("random", p.model, 0, 0), ks, result, result.pop("other"))
write_rows(snakemake.output[0], FIX_COLUMNS, rows)
