"""Checkpoints: a model saved with what rebuilds it and its units, and read back.

A checkpoint (:func:`save_checkpoint`) holds the architecture's config entry, the
state dict, and the units' spec: a components entry (with the units' means for mean
ablation), or for features and data studies the spec of :func:`spec_of` and the
tensors those units carry. :func:`load_checkpoint` rebuilds both. Only tensors and
plain values are stored, so reading one unpickles no code (``weights_only``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from compattr.components import ComponentSet
from compattr.datamodels import Recipe, TrainingExamples
from compattr.features import PatchSet
from compattr.io import resolve_device, start_log
from compattr.models import build_model, study_components

__all__ = ["save_checkpoint", "load_checkpoint", "spec_of", "units_from_spec", "start_model_job"]


def spec_of(units: PatchSet | TrainingExamples) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """What a checkpoint records of features or data units: a spec, and their tensors."""
    if isinstance(units, PatchSet):
        spec = {"kind": "features", "image_shape": list(units.image_shape), "patch_size": units.patch_size}
        return {**spec, "baseline": units.baseline}, {"mean_image": units.mean_image}
    recipe = {key: getattr(units.recipe, key) for key in ("hidden", "steps", "lr", "weight_decay", "seed")}
    spec = {"kind": "data", "recipe": recipe, "num_classes": units.num_classes}
    return spec, {"images": units.images, "labels": units.labels, "ids": torch.from_numpy(np.asarray(units.ids))}


def units_from_spec(spec: dict[str, Any], tensors: dict[str, Tensor]) -> PatchSet | TrainingExamples:
    """The units :func:`spec_of` recorded."""
    if spec["kind"] == "features":
        return PatchSet(tuple(spec["image_shape"]), spec["patch_size"], spec["baseline"], tensors["mean_image"])
    if spec["kind"] == "data":
        recipe = Recipe(**spec["recipe"])
        ids = tensors["ids"].numpy()
        return TrainingExamples(tensors["images"], tensors["labels"], ids, recipe, spec["num_classes"])
    raise ValueError(f"unit kind must be 'features' or 'data', got {spec['kind']!r}")


def save_checkpoint(
    path: str,
    model: nn.Module,
    arch: dict,
    *,
    num_classes: int,
    in_channels: int,
    components: dict,
    means: dict[str, Tensor] | None = None,
    units: dict | None = None,
) -> None:
    """Save a model with what :func:`load_checkpoint` needs to rebuild it and its units.

    ``components`` is their config entry (``kind`` ``features`` or ``data``: the spec of
    :func:`spec_of`); ``means``, for mean ablation, the units' mean outputs
    (:func:`compattr.components.component_means`); ``units``, the tensors that features and
    data units carry (a mean image; the training examples).
    """
    torch.save(
        {
            "arch": arch,
            "num_classes": num_classes,
            "in_channels": in_channels,
            "components": components,
            "means": means,
            "units": units,
            "state_dict": model.state_dict(),
        },
        path,
    )


def load_checkpoint(path: str, device: str | torch.device = "cpu") -> tuple[nn.Module, ComponentSet]:
    """Rebuild a model saved by :func:`save_checkpoint` (in eval mode on ``device``) and its units.

    The units are its components, or for a features or data study its patches
    (:class:`compattr.features.PatchSet`) or training examples
    (:class:`compattr.datamodels.TrainingExamples`).
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(checkpoint["arch"], checkpoint["num_classes"], checkpoint["in_channels"])
    model.load_state_dict(checkpoint["state_dict"])
    model.to(device).eval()
    # checkpoints before component kinds record include_shortcuts alone
    spec = checkpoint.get("components", {"include_shortcuts": checkpoint.get("include_shortcuts", True)})
    if spec.get("kind") in ("features", "data"):
        return model, units_from_spec(spec, checkpoint["units"])
    return model, study_components(model, spec).with_means(checkpoint.get("means"))


def start_model_job(
    log: str | Path, checkpoint: str | Path, *, threads: int, device: str
) -> tuple[logging.Logger, torch.device, nn.Module, Any]:
    """The set-up every workflow job that runs a model shares: ``(logger, device, model, units)``.

    Its log (stderr and logging go to ``log``), its threads, its device (``"auto"``, ``"cpu"`` or
    ``"cuda"``: :func:`compattr.io.resolve_device`), and the checkpoint's model and units on it.
    """
    logger = start_log(log)
    torch.set_num_threads(threads)
    where = resolve_device(device)
    model, units = load_checkpoint(checkpoint, device=where)
    return logger, where, model, units
