"""Choose the seeded set of misclassified test images whose mistakes the fixing experiment edits away."""

import numpy as np

from compattr.checkpoints import start_model_job
from compattr.data import load_dataset, load_test_ids, save_inputs, with_noise
from compattr.editing import choose_mistakes, scoring_images
from compattr.sampling import ComponentMarginEvaluator

p = snakemake.params
cfg = p.mistakes
log, _, model, components = start_model_job(
    snakemake.log[0], snakemake.input.model, threads=snakemake.threads, device=snakemake.params.device
)
_, test = load_dataset(**p.data)
# candidates: test images that are not attributed inputs, with the harder split's noise when it has any
pool = scoring_images(len(test), load_test_ids(snakemake.input.inputs), cfg["pool"], cfg["seed"])
candidates = with_noise(test.subset(pool), cfg["noise"], cfg["seed"])
evaluator = ComponentMarginEvaluator(
    model, components, candidates.images, candidates.labels, batch_size=p.batch_size, **p.forward
)
margins = evaluator(np.zeros((1, len(components)), dtype=bool))[0]
chosen = choose_mistakes(margins, cfg["n"], cfg["seed"])
log.info(
    "the model misclassifies %d of %d candidate test images (noise std %g); chose %d (editing.mistakes.n = %d)",
    int((margins <= 0).sum()),
    len(pool),
    cfg["noise"],
    len(chosen),
    cfg["n"],
)
if len(chosen) < cfg["n"]:
    log.warning("fewer mistakes than editing.mistakes.n: raise editing.mistakes.noise or .pool for more")
save_inputs(snakemake.output[0], pool[chosen], candidates.subset(chosen))
