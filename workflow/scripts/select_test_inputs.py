"""Choose the seeded set of held-out test inputs to attribute."""

from compattr.data import load_dataset, save_test_inputs, select_test_inputs
from compattr.io import start_log

log = start_log(snakemake.log[0])
_, test = load_dataset(**snakemake.params.data)
cfg = snakemake.params.inputs
index = select_test_inputs(test, cfg["n"], cfg["seed"])
save_test_inputs(snakemake.output[0], test, index)
log.info("chose %d of %d test images (seed %d)", len(index), len(test), cfg["seed"])
