"""Priors that take the margin's maximum over the competing classes exactly.

The correct-class margin ``f = z_y - max_{c != y} z_c`` is the smallest of the pairwise
margins ``z_y - z_c`` to the other classes. Attribution patching differentiates ``f``, so it
follows the runner-up's margin alone: an ablation, or a mask of them, that lets another class
overtake is missed. Here each unit's change of every pairwise margin (or of those to the few
classes closest to the correct one) is estimated at a keep point, the unablated model or the
masks' mean: first order, one backward pass per competing class (:func:`margin_changes`), or
measured, one ablated pass per unit (:func:`measured_margin_changes`). The margin under a mask
is the smallest of the pairwise margins, carried from the point to the mask by its units'
changes, drawn over masks at the study's ablation rate, and the prior is the least-squares line
through those simulated margins (:func:`simulated_margin_prior`): the linear component model
closest to them under the masks. Only the summing is first order; the maximum is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from compattr.baselines import checked_keep, column_gradients
from compattr.batches import Batch, batch_len, labelled_batches
from compattr.components import AblatableNetwork
from compattr.masks import bernoulli_masks
from compattr.outputs import class_scores

__all__ = [
    "MAX_UNITS",
    "PairwiseMargins",
    "competing_classes",
    "margin_changes",
    "margin_prior_passes",
    "measured_margin_changes",
    "simulated_margin_prior",
]

#: The most units a simulated margin prior fits (its least squares hold ``n_masks x units`` floats).
MAX_UNITS = 5000


def competing_classes(logits: Tensor, labels: Tensor, closest: int | None = None) -> Tensor:
    """Per input, the classes other than its label: ``(n_inputs, n_competing)``.

    ``closest=None``: every other class, in class order; else the ``closest`` others with the largest
    logits, largest first (all of them where there are fewer).
    """
    if closest is None or closest >= logits.shape[1] - 1:
        order = torch.arange(logits.shape[1], device=logits.device).expand(len(labels), -1)
        return order[order != labels[:, None]].reshape(len(labels), -1)
    if closest < 1:
        raise ValueError(f"competitors must be at least 1, got {closest}")
    others = logits.detach().scatter(1, labels[:, None], float("-inf"))
    return others.topk(closest, dim=1).indices


def margin_prior_passes(n_competing: int) -> int:
    """Passes per input batch of :func:`margin_changes`: one forward, and a backward (2) per competing class."""
    return 1 + 2 * n_competing


class PairwiseMargins:
    """An output: the margins ``z_y - z_c`` to the competing classes ``c`` of each input, ``(batch, n_competing)``.

    The classes are chosen from the logits it is called on (:func:`competing_classes` with
    ``closest``) and recorded, batch by batch, in ``classes``: called at the unablated model, they
    are the classes whose margins a prior then measures elsewhere.
    """

    def __init__(self, closest: int | None = None) -> None:
        self.closest = closest
        self.classes: list[Tensor] = []

    def __call__(self, outputs: Any, labels: Tensor) -> Tensor:
        logits, labels = class_scores(outputs, labels)
        classes = competing_classes(logits, labels, self.closest)
        self.classes.append(classes.cpu())
        return logits.gather(1, labels[:, None]) - logits.gather(1, classes)

    def chosen(self) -> Tensor:
        """The classes of every input it was called on, in order: ``(n_inputs, n_competing)``."""
        return torch.cat(self.classes)


def margin_changes(
    network: AblatableNetwork,
    images: Batch,
    labels: Tensor,
    *,
    keep: Tensor | None = None,
    closest: int | None = None,
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray, Tensor]:
    """First-order changes of the pairwise margins when each unit is ablated, at keep factors ``keep``.

    ``keep`` (n_units,) is the point, the same for every input (every unit kept, 1, by default).
    The margins are to every other class, or to the ``closest`` others there (:func:`competing_classes`).
    Returns ``changes`` (n_inputs, n_units, n_competing), minus the derivative of each margin
    ``z_y - z_c`` in the units' keep factors, the margins themselves at the point (n_inputs,
    n_competing), both float64, and the classes (n_inputs, n_competing). One forward pass and one
    backward pass per competing class (:func:`margin_prior_passes`).
    """
    device = next(network.parameters()).device
    n_units = network.n_components
    point = checked_keep(keep, n_units).to(device)
    output = PairwiseMargins(closest)
    changes, values = [], []
    for x, y in labelled_batches(images, labels, batch_size, device):
        factors = point.expand(batch_len(x), -1).clone().requires_grad_(True)
        with torch.enable_grad():
            pairs = output(network(x, factors), y)
            grads = [grad for (grad,) in column_gradients(pairs, [factors])]
        changes.append(-torch.stack(grads, -1).detach().cpu().double())
        values.append(pairs.detach().cpu().double())
    return torch.cat(changes).numpy(), torch.cat(values).numpy(), output.chosen()


@torch.no_grad()
def measured_margin_changes(
    network: AblatableNetwork,
    images: Batch,
    labels: Tensor,
    units: Sequence[int],
    margins: np.ndarray,
    classes: Tensor,
    *,
    keep: Tensor | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """Exact changes (n_inputs, len(units), n_competing) of the pairwise margins when each of ``units`` is ablated.

    From keep factors ``keep`` (n_units,; every unit kept by default), per unit of the ablated
    unit's keep factor there, as :func:`margin_changes` takes them. ``margins`` and ``classes``
    are the pairwise margins at that point and their classes (:func:`margin_changes` returns
    them): one ablated forward pass per unit and no other.
    """
    device = next(network.parameters()).device
    point = checked_keep(keep, network.n_components)
    if bool((point[[int(u) for u in units]] <= 0).any()):
        raise ValueError("measured_margin_changes ablates units kept at the point: their keep factors must be > 0")
    out = np.empty((len(margins), len(units), margins.shape[1]))
    for i, unit in enumerate(tqdm(units, desc="exact pairwise margins", unit="unit", mininterval=5)):
        ablated_point = point.clone()[None].to(device)
        ablated_point[0, int(unit)] = 0
        ablated, start = [], 0
        for x, y in labelled_batches(images, labels, batch_size, device):
            logits, y = class_scores(network(x, ablated_point), y)
            chosen = classes[start : start + len(y)].to(device)
            ablated.append((logits.gather(1, y[:, None]) - logits.gather(1, chosen)).cpu().double())
            start += len(y)
        out[:, i] = (torch.cat(ablated).numpy() - margins) / point[int(unit)].item()
    return out


def simulated_margin_prior(
    changes: np.ndarray,
    margins: np.ndarray,
    ablation_rate: float,
    *,
    keep: np.ndarray | Tensor | None = None,
    n_masks: int = 4000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The least-squares line through margins simulated under random masks: ``(coef, intercept)``.

    ``changes`` (n_inputs, n_units, n_competitors) and ``margins`` (n_inputs, n_competitors)
    as :func:`margin_changes` returns them at keep factors ``keep`` (n_units,; every unit kept
    by default). ``n_masks`` masks ablate each unit with probability ``ablation_rate`` (seeded
    by ``seed``; the same masks serve every input); under each, an input's margin is the
    smallest of its pairwise margins, each carried from the point to the mask to first order
    (a unit's change per unit of keep factor, times how far its keep factor moves). ``coef[i, u]``
    (n_inputs, n_units) is the fitted change when unit ``u`` is ablated, ``intercept`` (n_inputs,)
    the fitted margin with none ablated.
    """
    n_inputs, n_units, _ = changes.shape
    if margins.shape != (n_inputs, changes.shape[2]):
        raise ValueError(f"margins {margins.shape} must be (inputs, competitors) = {(n_inputs, changes.shape[2])}")
    point = np.ones(n_units) if keep is None else np.asarray(keep, dtype=np.float64)
    if point.shape != (n_units,):
        raise ValueError(f"keep {point.shape} must hold one keep factor per unit ({n_units})")
    if not 0 < ablation_rate < 1:
        raise ValueError(f"ablation_rate must lie in (0, 1), got {ablation_rate}")
    if n_units > MAX_UNITS:
        raise ValueError(
            f"a simulated margin prior fits a line over {n_units} units on {n_masks} simulated masks; it takes at most "
            f"{MAX_UNITS} units (use margin: linear)"
        )
    if n_masks < 2 * (n_units + 1):
        raise ValueError(f"n_masks must be at least twice the units and intercept ({2 * (n_units + 1)}), got {n_masks}")
    masks = bernoulli_masks(n_masks, n_units, ablation_rate, np.random.default_rng(seed)).astype(np.float64)
    # every unit kept: each margin carried from the point, a unit's keep factor rising to 1
    margins = margins - np.einsum("iuc,u->ic", changes, 1 - point)
    simulated = np.empty((n_masks, n_inputs))
    flat = changes.transpose(1, 0, 2).reshape(n_units, -1)  # (units, inputs x competitors)
    for start in range(0, n_masks, 500):  # a chunk of masks at a time: (masks, inputs, competitors)
        summed = (masks[start : start + 500] @ flat).reshape(-1, n_inputs, changes.shape[2])
        simulated[start : start + 500] = (margins[None] + summed).min(-1)
    design = np.c_[masks, np.ones(n_masks)]
    solution = np.linalg.lstsq(design, simulated, rcond=None)[0]
    return solution[:-1].T.copy(), solution[-1].copy()
