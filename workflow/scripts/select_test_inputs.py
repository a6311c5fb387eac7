"""Choose the seeded set of held-out test inputs to attribute."""

import numpy as np

from compattr.data import load_dataset, select_test_inputs
from compattr.io import start_log

log = start_log(snakemake.log[0])
_, test = load_dataset(**snakemake.params.data)
cfg = snakemake.params.inputs
index = select_test_inputs(test, cfg["n"], cfg["seed"])
np.savez(snakemake.output[0], index=index, images=test.images[index].numpy(), labels=test.labels[index].numpy())
log.info("chose %d of %d test images (seed %d)", len(index), len(test), cfg["seed"])
