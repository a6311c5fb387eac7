"""Benchmark: a data study's models trained in one batch against one by one, same recipe and subsets."""

import torch

from compattr.bench import training_speed
from compattr.data import load_dataset
from compattr.datamodels import Recipe
from compattr.io import provenance, resolve_device, start_log, write_json
from compattr.units import example_units

log = start_log(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
device = resolve_device(snakemake.params.device)
cfg = snakemake.params.training
train, test = load_dataset(name="digits")
recipe = Recipe(**cfg["recipe"])
units = example_units(train.images, train.labels, cfg["units"], 0, recipe, test.num_classes)
result = training_speed(
    units.images.to(device),
    units.labels.to(device),
    recipe,
    test.num_classes,
    n_models=cfg["models"],
    n_loop=cfg["loop_models"],
)
result = {
    "data": f"digits, {cfg['units']} training examples",
    **result,
    "device": str(device),
    "threads": torch.get_num_threads(),
    "provenance": provenance(),
}
log.info("%s", result)
write_json(snakemake.output[0], result)
