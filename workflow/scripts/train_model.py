"""Train the study's classifier; write its checkpoint, test accuracy and component table."""

import torch

from compattr.components import conv_components
from compattr.data import load_dataset
from compattr.io import provenance, resolve_device, start_log, write_json
from compattr.models import accuracy, build_model, save_checkpoint, train_classifier

log = start_log(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
data_cfg, model_cfg = snakemake.params.data, snakemake.params.model
device = resolve_device(snakemake.params.device)

train, test = load_dataset(**data_cfg)
log.info("dataset %s: %d train, %d test images", data_cfg["name"], len(train), len(test))
model = build_model(model_cfg["arch"], train.num_classes, train.images.shape[1], seed=model_cfg["train"]["seed"])
losses = train_classifier(model, train, device=device, **model_cfg["train"])
model.cpu()
metrics = {
    "train_accuracy": accuracy(model, train),
    "test_accuracy": accuracy(model, test),
    "final_train_loss": losses[-1],
    "n_train": len(train),
    "n_test": len(test),
}
include_shortcuts = snakemake.params.components["include_shortcuts"]
components = conv_components(model, include_shortcuts=include_shortcuts)
metrics["n_components"] = len(components)
log.info("metrics: %s", metrics)

save_checkpoint(
    snakemake.output.model,
    model,
    model_cfg["arch"],
    num_classes=train.num_classes,
    in_channels=train.images.shape[1],
    include_shortcuts=include_shortcuts,
)
write_json(
    snakemake.output.metrics,
    {**metrics, "provenance": provenance({"data": data_cfg, "model": model_cfg}, device=str(device))},
)
with open(snakemake.output.components, "w") as fh:
    fh.write("index\tname\tmodule\tchannel\n")
    for i, name in enumerate(components.names):
        module, channel = name.rsplit(":", 1)
        fh.write(f"{i}\t{name}\t{module}\t{channel}\n")
