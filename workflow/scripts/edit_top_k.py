"""Top-k ablation: per input, ablate the k components each method's fits rank first; compare with the prediction."""

import numpy as np

from compattr.analysis import write_table
from compattr.checkpoints import start_model_job
from compattr.data import load_test_inputs
from compattr.editing import TOP_K_COLUMNS, random_orders, top_k_ablation, top_k_rows
from compattr.repair import rebuild_on_damage
from compattr.sampling import ComponentMarginEvaluator
from compattr.stores import fit_stores, load_fit

p = snakemake.params
log, _, model, components = start_model_job(
    snakemake.log[0], snakemake.input.model, threads=snakemake.threads, device=snakemake.params.device
)
rebuild_on_damage(snakemake.input)  # a damaged store this job reads is rebuilt by the next run
inputs = load_test_inputs(snakemake.input.inputs)
evaluator = ComponentMarginEvaluator(
    model, components, inputs.images, inputs.labels, batch_size=p.batch_size, **p.forward
)
n_inputs, n_components = len(inputs.labels), len(components)
ks = [k for k in p.ks if k <= n_components]
unablated = evaluator(np.zeros((1, n_components), dtype=bool))[0]
rows = []
for method, entries in p.fits.items():
    for path in (store for entry in entries for store in fit_stores(entry)):
        fit = load_fit(path)
        if fit.attrs.get("replicate", 0) != 0:  # one draw of training masks per size: the edits of draw 0
            continue
        n, passes = fit.attrs["n_train"], fit.attrs.get("passes", fit.attrs["n_train"])
        result = top_k_ablation(evaluator.paired, fit.coef, ks, unablated)
        log.info("%s n=%d: mean true drop at k=%d %.3f", method, n, ks[-1], -result["true_change"][-1].mean())
        rows += top_k_rows((method, p.model, 0, n, passes), ks, result)
# The reference: k components drawn at random per input, mean over draws.
rng = np.random.default_rng(p.seed)
no_effects = np.zeros((n_inputs, n_components))
draws = [
    top_k_ablation(evaluator.paired, no_effects, ks, unablated, random_orders(n_inputs, n_components, rng))
    for _ in range(p.random_draws)
]
result = {key: np.mean([draw[key] for draw in draws], axis=0) for key in ("true_change", "flipped")}
result["predicted_change"] = np.full_like(result["true_change"], np.nan)
rows += top_k_rows(("random", p.model, 0, 0, 0), ks, result)
write_table(snakemake.output[0], TOP_K_COLUMNS, rows)
