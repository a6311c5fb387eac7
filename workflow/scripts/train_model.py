"""Train the study's classifier, or load its weights; write its checkpoint, test accuracy and units table.

A data study's model is the recipe's model trained on every unit (training example)."""

import torch

from compattr.checkpoints import save_checkpoint, spec_of
from compattr.components import component_means
from compattr.data import load_dataset, select_test_inputs
from compattr.datamodels import Recipe
from compattr.io import provenance, resolve_device, start_log, write_json
from compattr.models import (
    accuracy,
    build_model,
    load_state_dict_file,
    study_components,
    torchvision_weights,
    train_classifier,
)
from compattr.units import example_units, patch_units, unit_rows

MEAN_IMAGES = 2000  # training inputs the mean-ablation values are averaged over (at most)

log = start_log(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
data_cfg, model_cfg = snakemake.params.data, snakemake.params.model
device = resolve_device(snakemake.params.device)

train, test = load_dataset(**data_cfg)  # fails at once, naming what is missing, when the data are not there
log.info("dataset %s: %s train, %d test images", data_cfg["name"], "no" if train is None else len(train), len(test))
in_channels = test.subset([0]).images.shape[1]
arch = model_cfg["arch"]
kind = snakemake.params.kind
metrics = {"n_test": len(test)}
units = None
if kind == "data":  # the model trained by the recipe on every unit; every mask's model is trained the same way
    recipe = Recipe(
        hidden=arch["hidden"], **{key: model_cfg["train"][key] for key in ("steps", "lr", "weight_decay", "seed")}
    )
    spec = snakemake.params.examples
    units = example_units(train.images, train.labels, spec["n"], spec["seed"], recipe, test.num_classes)
    model = units.full_model()
    arch = {**arch, "in_features": units.images[0].numel()}
    metrics.update(train_accuracy=accuracy(model, train), n_train=len(units))
else:
    model = build_model(arch, test.num_classes, in_channels, seed=model_cfg.get("train", {}).get("seed"))
    if "checkpoint" in model_cfg:
        checkpoint = model_cfg["checkpoint"]
        model.load_state_dict(load_state_dict_file(checkpoint["path"], checkpoint.get("sha256")))
        metrics["weights"] = checkpoint
    elif "weights" in model_cfg:
        model.load_state_dict(torchvision_weights(arch["name"], model_cfg["weights"], model_cfg.get("download", False)))
        metrics["weights"] = model_cfg["weights"]
    else:
        losses = train_classifier(model, train, device=device, **model_cfg["train"])
        metrics.update(train_accuracy=accuracy(model, train), final_train_loss=losses[-1], n_train=len(train))
model.to(device)
evaluated = test
if model_cfg.get("n_eval") and model_cfg["n_eval"] < len(test):
    evaluated = test.subset(select_test_inputs(test, model_cfg["n_eval"], seed=0))
metrics.update(test_accuracy=accuracy(model, evaluated, batch_size=256), n_eval=len(evaluated))
model.cpu()
means = None
if kind == "features":  # input patches; the mean baseline is the training images' mean
    units = patch_units(
        snakemake.params.features, tuple(test.subset([0]).images.shape[1:]), None if train is None else train.images
    )
elif kind == "components":
    units = study_components(model, snakemake.params.components)
    if snakemake.params.components.get("ablation", "zero") == "mean":  # ablated units take their mean on train data
        sample = train.subset(select_test_inputs(train, min(len(train), MEAN_IMAGES), seed=0))
        means = component_means(model, units, sample.images)
        log.info("mean ablation: unit means over %d training inputs", len(sample))
spec, tensors = (snakemake.params.components, None) if kind == "components" else spec_of(units)
metrics["n_units"] = len(units)
log.info("metrics: %s", metrics)

save_checkpoint(
    snakemake.output.model,
    model,
    arch,
    num_classes=test.num_classes,
    in_channels=in_channels,
    components=spec,
    means=means,
    units=tensors,
)
write_json(
    snakemake.output.metrics,
    {**metrics, "provenance": provenance({"data": data_cfg, "model": model_cfg}, device=str(device))},
)
with open(snakemake.output.components, "w") as fh:
    fh.write("index\tname\tmodule\tunit\tkind\n")
    for row in unit_rows(units):
        fh.write("\t".join(map(str, row)) + "\n")
