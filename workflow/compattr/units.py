"""One engine for three kinds of units: components, input features and training data.

A study declares ``kind``: ``components`` (filters, neurons, heads of the model:
:class:`compattr.components.ComponentSet`), ``features`` (input patches:
:class:`compattr.features.PatchSet`) or ``data`` (training examples:
:class:`compattr.datamodels.TrainingExamples`). Each kind supplies its units and
their names, how a mask becomes an output per test input (:func:`make_evaluator`)
and its first-order prior (:func:`unit_prior`); leave-one-out is the evaluator on
one-unit masks for all three. Everything downstream (mask stores, estimators,
LDS, summaries, figures) takes any of them unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from compattr.baselines import exact_top as exact_top_units
from compattr.baselines import (
    first_order_prior,
    keep_effects,
    leave_one_out,
    patch_relu_passes,
    prior_passes,
    prior_points,
    relu_patching,
)
from compattr.competitors import (
    PairwiseMargins,
    margin_changes,
    margin_prior_passes,
    measured_margin_changes,
    simulated_margin_prior,
)
from compattr.components import ComponentSet
from compattr.datamodels import DataMarginEvaluator, Recipe, TrainingExamples, influence_prior
from compattr.features import PatchSet
from compattr.outputs import Output, margins
from compattr.sampling import ComponentMarginEvaluator

__all__ = [
    "Units",
    "patch_units",
    "example_units",
    "make_evaluator",
    "unit_prior",
    "unit_rows",
]

Units = ComponentSet | PatchSet | TrainingExamples


def patch_units(spec: dict, image_shape: tuple[int, ...], train_images: Tensor | None = None) -> PatchSet:
    """The patches a study's ``features`` config section names (``patch_size``, ``baseline``).

    The ``mean`` baseline is the mean of ``train_images``.
    """
    baseline = spec.get("baseline", "zero")
    mean = None
    if baseline == "mean":
        if train_images is None:
            raise ValueError("features.baseline mean needs training images to average")
        mean = train_images.float().mean(0)
    return PatchSet(tuple(image_shape), spec["patch_size"], baseline, mean)


def example_units(
    train_images: Tensor, train_labels: Tensor, n: int, seed: int, recipe: Recipe, num_classes: int
) -> TrainingExamples:
    """A seeded subset of ``n`` training examples (in training-split order), trained on by ``recipe``."""
    if not 1 <= n <= len(train_labels):
        raise ValueError(f"examples.n must lie in [1, {len(train_labels)}] (the training split), got {n}")
    ids = np.sort(np.random.default_rng(seed).choice(len(train_labels), size=n, replace=False))
    index = torch.from_numpy(ids)
    return TrainingExamples(train_images[index], train_labels[index], ids, recipe, num_classes)


def make_evaluator(
    model: nn.Module,
    units: Units,
    images: Tensor,
    labels: Tensor | None,
    batch_size: int | str = "auto",
    *,
    output: Output = margins,
    **forward: Any,
) -> ComponentMarginEvaluator | DataMarginEvaluator:
    """Outputs per test input under masks over ``units``: ablated or masked forward passes, or trained models.

    ``forward`` (precision, channels_last, compile) applies to forward passes; a data
    study's evaluator trains models on the model's device, ``batch_size`` models at a time
    ("auto": :class:`~compattr.datamodels.DataMarginEvaluator`'s default).
    """
    if isinstance(units, TrainingExamples):
        device = next(model.parameters()).device
        models = {} if batch_size == "auto" else {"batch_size": batch_size}
        return DataMarginEvaluator(units, images, labels, output=output, device=device, **models)
    return ComponentMarginEvaluator(model, units, images, labels, batch_size, output=output, **forward)


def unit_prior(
    model: nn.Module,
    units: Units,
    images: Tensor,
    labels: Tensor | None,
    *,
    point: str = "unablated",
    n_points: int = 1,
    output: Output = margins,
    exact_top: int = 0,
    margin: str = "linear",
    simulated_masks: int = 4000,
    competitors: int | None = None,
    evaluator: Callable[[np.ndarray], np.ndarray] | None = None,
    **settings: Any,
) -> tuple[np.ndarray, np.ndarray, int]:
    """A kind's first-order prior: ``(coef, intercept, passes)``.

    Components and features: minus the gradient in the units' keep factors
    (:func:`compattr.baselines.first_order_prior`; for patches, gradient times input
    minus baseline, summed over the patch), ``passes`` forward-equivalent passes per
    input batch. Data: the influence function at the model trained on every unit
    (:func:`compattr.datamodels.influence_prior`; point ``unablated`` only), no
    model trained beyond that one: ``passes`` 0.

    ``exact_top``: the number of units, those with the largest mean absolute prior, whose
    estimates are replaced by their exact effects (:func:`compattr.baselines.exact_top`) at the
    prior's point: at the unablated model by ``evaluator`` (bool masks to outputs; default
    :func:`make_evaluator` on the same inputs), at the mean by
    :func:`compattr.baselines.keep_effects`. ``passes`` then counts those ``exact_top + 1``
    passes too.

    ``margin="simulated"`` (components or patches, the margin output, point ``unablated`` or
    ``mean``): the margin's maximum over the other classes is taken exactly
    (:mod:`compattr.competitors`): each pairwise margin's first-order change at the point (exact
    through the first nonlinearity with ``relu="exact"``), to every other class or to the
    ``competitors`` closest ones there, the margins of their sums simulated under
    ``simulated_masks`` masks at ``ablation_rate`` (seeded by ``seed``), a least-squares line
    through them; ``exact_top`` units measured at the point change those pairwise margins by
    their exact changes.
    ``passes``: one forward and a backward per competing class, and one per measured unit.
    """
    if margin not in ("linear", "simulated"):
        raise ValueError(f"margin must be 'linear' or 'simulated', got {margin!r}")
    if margin == "simulated":
        return _simulated_margin_prior(
            model, units, images, labels, point, output, exact_top, competitors, n_masks=simulated_masks, **settings
        )
    if competitors is not None:
        raise ValueError(f"competitors (got {competitors}) are the classes a margin simulated prior tracks")
    if exact_top and point not in ("unablated", "mean"):
        raise ValueError(f"exact_top measures units at the unablated model or at the mean, not at point {point!r}")
    if isinstance(units, TrainingExamples):
        if point != "unablated" or n_points != 1:
            raise ValueError(
                f"a data study's prior is taken at the model trained on every unit: point unablated, not {point!r}"
            )
        coef, intercept = influence_prior(model, units, images, labels, output=output)
        passes = 0
    else:
        coef, intercept = first_order_prior(
            model, units, images, labels, point=point, n_points=n_points, output=output, **settings
        )
        passes = prior_passes(point, n_points)
        if settings.get("relu") == "exact" and isinstance(units, PatchSet):  # the first convolution per patch
            passes += n_points * patch_relu_passes(model, units)
    if exact_top:
        if point == "unablated":
            evaluator = evaluator or make_evaluator(model, units, images, labels, output=output)

            def measure(top: np.ndarray) -> np.ndarray:
                return leave_one_out(evaluator, len(units), units=top, progress=False)[0]
        else:
            network = units.ablatable(model).requires_grad_(False)
            keep = prior_points("mean", len(units), ablation_rate=settings.get("ablation_rate"))[0]

            def measure(top: np.ndarray) -> np.ndarray:
                return keep_effects(network, images, labels, keep, top, settings.get("batch_size", 256), output)

        coef, _ = exact_top_units(coef, measure, exact_top)
        passes += exact_top + 1
    return coef, intercept, passes


def _simulated_margin_prior(
    model: nn.Module,
    units: Units,
    images: Tensor,
    labels: Tensor | None,
    point: str,
    output: Output,
    exact_top: int,
    competitors: int | None,
    *,
    ablation_rate: float | None = None,
    n_masks: int = 4000,
    seed: int = 0,
    batch_size: int = 256,
    relu: str = "linear",
) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`unit_prior` with ``margin="simulated"``, its settings checked first."""
    faults = [
        (not isinstance(units, ComponentSet | PatchSet), f"components or input patches (not {type(units).__name__})"),
        (output is not margins, "the margin output"),
        (point not in ("unablated", "mean"), f"point unablated or mean (not {point!r})"),
        (relu not in ("linear", "exact"), f"relu linear or exact (not {relu!r})"),
        (labels is None, "labels"),
        (ablation_rate is None, "an ablation_rate"),
    ]
    needs = [what for bad, what in faults if bad]
    if needs:
        raise ValueError(f"margin simulated needs {', '.join(needs)}")
    network = units.ablatable(model).requires_grad_(False)
    keep = prior_points(point, len(units), ablation_rate=ablation_rate)[0]
    if relu == "exact":  # each pairwise margin's change exact through the first nonlinearity
        pairs = PairwiseMargins(competitors)
        changes, pairwise = relu_patching(model, units, images, labels, keep=keep, batch_size=batch_size, output=pairs)
        classes = pairs.chosen()
    else:
        changes, pairwise, classes = margin_changes(
            network, images, labels, keep=keep, closest=competitors, batch_size=batch_size
        )
    passes = margin_prior_passes(pairwise.shape[1])
    if relu == "exact" and isinstance(units, PatchSet):
        passes += patch_relu_passes(model, units)
    simulate = {"keep": keep, "n_masks": n_masks, "seed": seed}
    coef, intercept = simulated_margin_prior(changes, pairwise, ablation_rate, **simulate)
    if exact_top:
        if not 0 <= exact_top <= len(units):
            raise ValueError(f"exact_top must lie in [0, {len(units)}] (the units), got {exact_top}")
        top = np.argsort(-np.abs(coef).mean(0), kind="stable")[:exact_top]
        changes[:, top] = measured_margin_changes(
            network, images, labels, top, pairwise, classes, keep=keep, batch_size=batch_size
        )
        coef, intercept = simulated_margin_prior(changes, pairwise, ablation_rate, **simulate)
        passes += exact_top
    return coef, intercept, passes


def unit_rows(units: Units) -> list[tuple[int, str, str, str, str]]:
    """Rows ``(index, name, module, unit, kind)`` of the units table, one per unit."""
    kinds = [kind for kind, size in zip(units.kinds, units.sizes, strict=True) for _ in range(size)]
    rows = []
    for i, (name, kind) in enumerate(zip(units.names, kinds, strict=True)):
        module, unit = name.rsplit(":", 1)
        rows.append((i, name, module, unit, kind))
    return rows
