"""Data attribution with the component engine: training examples as units.

The units are a fixed, seeded subset of a training split (:class:`TrainingExamples`).
A mask ablates (leaves out) some of them; its outcome for a test input is that
input's output (the correct-class margin by default) under a model trained from
scratch on the kept examples with one fixed recipe (:class:`Recipe`: a 2-layer
MLP, or softmax regression, trained by full-batch Adam from one seeded
initialisation). This is the datamodels setting (Ilyas et al. 2022), with masks
that keep each example with probability ``1 - ablation_rate``.

Many models train at once (:func:`train_models`): their parameters are stacked
along a first axis, the examples' weights are the masks, and every step is one
batched forward and backward pass. Adam acts on each element alone, so a stack
of models trains exactly as each would alone (:func:`train_alone`, tested).

The first-order prior (:func:`influence_prior`) is the influence function (Koh
and Liang 2017) of the example weights at the model trained on every unit, with
the Gauss-Newton Hessian of the training objective; leave-one-out trains one
model per left-out unit (:func:`compattr.baselines.leave_one_out` on the evaluator).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compattr.models import mlp
from compattr.outputs import Output, margins

__all__ = [
    "Recipe",
    "TrainingExamples",
    "train_models",
    "train_alone",
    "stacked_logits",
    "DataMarginEvaluator",
    "influence_prior",
]


@dataclass(frozen=True)
class Recipe:
    """How every model of a data study is trained: full-batch Adam from one seeded initialisation.

    Attributes
    ----------
    hidden : int
        Width of the MLP's hidden layer; 0 is softmax regression.
    steps : int
        Full-batch Adam steps.
    lr : float
        Adam's learning rate.
    weight_decay : float
        L2 penalty (Adam's ``weight_decay``: the gradient of ``weight_decay / 2 * |theta|^2``).
    seed : int
        Seed of the initial weights, the same for every model.
    """

    hidden: int = 32
    steps: int = 300
    lr: float = 0.01
    weight_decay: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.hidden < 0 or self.steps < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"a recipe needs hidden >= 0, steps >= 1, lr > 0 and weight_decay >= 0, got {self}")


def stacked_logits(params: list[Tensor], x: Tensor) -> Tensor:
    """Logits ``(k, n, classes)`` on ``x`` ``(n, ...)`` of ``k`` MLPs (:func:`mlp`'s parameters stacked on axis 0)."""
    x = x.flatten(1)
    k = len(params[0])
    weight, bias = params[0], params[1]
    # one matrix product for the first layer of every model: (n, d) @ (d, k * out)
    out = (x @ weight.reshape(-1, x.shape[1]).T).reshape(len(x), k, -1).transpose(0, 1) + bias[:, None]
    if len(params) == 2:
        return out
    return torch.baddbmm(params[3][:, None], torch.relu(out), params[2].transpose(1, 2))


@torch.no_grad()  # gradients are computed by hand: no graph for k models
def train_models(x: Tensor, y: Tensor, weights: Tensor, recipe: Recipe, num_classes: int) -> list[Tensor]:
    """Train one model per row of ``weights`` ``(k, n)`` on the examples ``x`` ``(n, ...)``, ``y`` ``(n,)``.

    Model ``r`` minimises ``sum_j weights[r, j] * CE_j / sum_j weights[r, j]`` (the mean
    loss of its kept examples for 0/1 weights) plus the recipe's L2 penalty, by
    ``recipe.steps`` full-batch Adam steps from the recipe's initial weights.
    Returns the stacked parameters (:func:`mlp`'s, a leading axis of ``k``), detached.

    Every step is one forward and one hand-written backward pass for all ``k`` models:
    the first layer of every model is one matrix product with the shared examples, and
    activations are laid out (models, features, examples), so the softmax over classes
    runs along the examples' axis (vectorised) and no activation is transposed.
    """
    if weights.ndim != 2 or weights.shape[1] != len(x):
        raise ValueError(f"weights must be (models, {len(x)}), got {tuple(weights.shape)}")
    k = len(weights)
    start = mlp(x[0].numel(), num_classes, recipe.hidden, recipe.seed).to(x.device, x.dtype)
    params = [p.detach().expand(k, *p.shape).clone() for p in start.parameters()]
    optimizer = torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    x = x.flatten(1)  # (n, d)
    xt = x.T.contiguous()  # (d, n)
    onehot = F.one_hot(y, num_classes).T.to(x.dtype)  # (classes, n)
    weights = weights.to(x.dtype)
    scale = (weights / weights.sum(1, keepdim=True).clamp(min=1.0))[:, None, :]  # (k, 1, n): each model's mean
    for _ in range(recipe.steps):
        for param, grad in zip(params, _gradients(params, x, xt, onehot, scale), strict=True):
            param.grad = grad
        optimizer.step()
    return params


def _gradients(params: list[Tensor], x: Tensor, xt: Tensor, onehot: Tensor, scale: Tensor) -> list[Tensor]:
    """Gradients of every model's weighted mean cross-entropy (:func:`train_models`) for its stacked parameters.

    ``x`` ``(n, d)`` and ``xt`` its transpose, ``onehot`` ``(classes, n)``, ``scale``
    ``(k, 1, n)`` the examples' weights over their sum.
    """
    k, out, d = params[0].shape
    n = len(x)
    first = torch.addmm(params[1].reshape(-1, 1), params[0].reshape(k * out, d), xt).reshape(k, out, n)
    if len(params) == 2:  # softmax regression: the first layer gives the logits
        hidden, logits = None, first
    else:
        hidden = first.clamp_min_(0)  # (k, hidden, n)
        logits = torch.baddbmm(params[3][:, :, None], params[2], hidden)  # (k, classes, n)
    # d loss / d logits: (softmax - one-hot), weighted
    grad_logits = torch.softmax(logits, 1).sub_(onehot).mul_(scale)
    grads = [grad_logits.sum(2)]  # the last bias
    if hidden is not None:
        grads.append(torch.bmm(grad_logits, hidden.transpose(1, 2)))  # (k, classes, hidden)
        grad_hidden = torch.bmm(params[2].transpose(1, 2), grad_logits)
        # zero where the unit is off: ReLU's own backward
        grad_first = torch.ops.aten.threshold_backward(grad_hidden, hidden, 0)
        grads.append(grad_first.sum(2))
    else:
        grad_first = grad_logits
    grads.append((grad_first.reshape(k * out, n) @ x).reshape(k, out, d))
    return grads[::-1]


def train_alone(x: Tensor, y: Tensor, recipe: Recipe, num_classes: int) -> nn.Sequential:
    """One model trained on ``x``, ``y`` by the recipe, as a plain module (the reference for :func:`train_models`)."""
    model = mlp(x[0].numel(), num_classes, recipe.hidden, recipe.seed).to(x.device, x.dtype)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    for _ in range(recipe.steps):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


@dataclass(frozen=True)
class TrainingExamples:
    """A fixed subset of a training split: the units of data attribution.

    Attributes
    ----------
    images, labels : Tensor
        The examples ``(n_units, ...)`` and their classes ``(n_units,)``.
    ids : ndarray of int
        Each example's index in its training split (the units' names are ``train:<id>``).
    recipe : Recipe
        How a mask's model is trained on the kept examples.
    num_classes : int
        Classes of the models.
    """

    images: Tensor = field(repr=False)
    labels: Tensor = field(repr=False)
    ids: np.ndarray = field(repr=False)
    recipe: Recipe
    num_classes: int

    def __post_init__(self) -> None:
        if not len(self.images) == len(self.labels) == len(self.ids):
            raise ValueError(f"{len(self.images)} examples, {len(self.labels)} labels and {len(self.ids)} ids")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def names(self) -> list[str]:
        """Stable unit names: ``train:<index in the training split>``."""
        return [f"train:{int(i)}" for i in self.ids]

    @property
    def kinds(self) -> tuple[str, ...]:
        """One kind for every unit: ``examples``."""
        return ("examples",)

    @property
    def sizes(self) -> tuple[int, ...]:
        """The number of units, as one group."""
        return (len(self),)

    def full_model(self) -> nn.Sequential:
        """The model the recipe trains on every unit (the prior is taken at it)."""
        return train_alone(self.images, self.labels, self.recipe, self.num_classes)


class DataMarginEvaluator:
    """Outputs of test inputs under models trained on the kept units of each mask.

    ``evaluator(ablated)`` with bool masks ``(n_masks, n_units)`` (True: left out)
    trains ``batch_size`` models at a time (:func:`train_models`) and returns each
    test input's output (``output(logits, labels)``, the correct-class margin by
    default) under each mask's model, ``(n_masks, n_inputs)`` float32: the interface
    of :class:`compattr.sampling.ComponentMarginEvaluator`, so sampling, leave-one-out
    and editing take either.
    """

    def __init__(
        self,
        units: TrainingExamples,
        images: Tensor,
        labels: Tensor | None,
        batch_size: int = 256,
        *,
        output: Output = margins,
        device: str | torch.device = "cpu",
    ) -> None:
        self.units, self.output, self.batch_size = units, output, batch_size
        self.device = torch.device(device)
        self.x, self.y = units.images.to(self.device), units.labels.to(self.device)
        self.images = images.to(self.device)
        self.labels = None if labels is None else labels.to(self.device)
        self.masks_per_call = batch_size

    def describe(self) -> str:
        """One line: the device, how many models train at once, and their recipe."""
        return f"a model trained per mask on {self.device}, {self.batch_size} at a time: {self.units.recipe}"

    def __call__(self, ablated: np.ndarray) -> np.ndarray:
        """Outputs ``(n_masks, n_inputs)`` of the models trained under the masks ``ablated`` ``(n_masks, n_units)``."""
        ablated = np.asarray(ablated, dtype=bool)
        if ablated.ndim != 2 or ablated.shape[1] != len(self.units):
            raise ValueError(f"masks must be (n_masks, {len(self.units)}), got {ablated.shape}")
        out = []
        for start in range(0, len(ablated), self.batch_size):
            keep = torch.from_numpy(~ablated[start : start + self.batch_size]).to(self.device)
            params = train_models(self.x, self.y, keep, self.units.recipe, self.units.num_classes)
            with torch.no_grad():
                logits = stacked_logits(params, self.images)
                targets = None if self.labels is None else self.labels.repeat(len(keep))
                out.append(self.output(logits.reshape(-1, logits.shape[-1]), targets).reshape(len(keep), -1).cpu())
        return torch.cat(out).numpy().astype(np.float32)


def influence_prior(
    model: nn.Module,
    units: TrainingExamples,
    images: Tensor,
    labels: Tensor | None,
    *,
    damping: float = 1e-3,
    output: Output = margins,
) -> tuple[np.ndarray, np.ndarray]:
    """First-order effect of leaving out each unit on each test input's output: the influence function.

    ``model`` is trained on every unit with weights ``w = 1`` (:meth:`TrainingExamples.full_model`),
    minimising ``L(theta, w) = sum_j w_j l_j / sum_j w_j + lambda / 2 |theta|^2``. At its
    minimum, ``d theta / d w_j = -H^-1 (g_j - g_mean) / n`` (``g_j`` the gradient of
    ``l_j``), so leaving unit ``j`` out changes output ``f_i`` by, to first order,
    ``coef[i, j] = grad f_i . H^-1 (g_j - g_mean) / n``. ``H`` is the Gauss-Newton
    Hessian of ``L`` (the exact Hessian for softmax regression) plus
    ``(lambda + damping) I``. The intercept is the outputs of ``model``.

    Returns
    -------
    coef : ndarray (n_inputs, n_units)
    intercept : ndarray (n_inputs,)
    """
    from torch.func import functional_call, jacrev, vmap

    model = copy.deepcopy(model).eval().double()
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def logits_of(flat: Tensor, x: Tensor) -> Tensor:
        parts = dict(zip(names, torch.split(flat, [s.numel() for s in shapes]), strict=True))
        params = {name: part.reshape(shape) for (name, part), shape in zip(parts.items(), shapes, strict=True)}
        return functional_call(model, params, (x[None],))[0]

    x, y = units.images.double(), units.labels
    n = len(units)
    jac = vmap(jacrev(logits_of), in_dims=(None, 0))(theta, x)  # (n, classes, p)
    probs = torch.softmax(vmap(logits_of, in_dims=(None, 0))(theta, x), dim=-1)  # (n, classes)
    curvature = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]
    hessian = torch.einsum("nap,nab,nbq->pq", jac, curvature, jac) / n
    hessian += (units.recipe.weight_decay + damping) * torch.eye(len(theta), dtype=theta.dtype)
    grads = torch.einsum("nap,na->np", jac, probs - F.one_hot(y, units.num_classes).double())  # (n, p)
    step = torch.linalg.solve(hessian, (grads - grads.mean(0)).T) / n  # (p, n)

    def output_of(flat: Tensor, x: Tensor, target: Tensor | None) -> Tensor:
        return output(logits_of(flat, x)[None], None if target is None else target[None])[0]

    test_x = images.double()
    if labels is None:
        test_grads = vmap(torch.func.grad(lambda f, x: output_of(f, x, None)), in_dims=(None, 0))(theta, test_x)
        values = vmap(lambda x: output_of(theta, x, None))(test_x)
    else:
        test_grads = vmap(torch.func.grad(output_of), in_dims=(None, 0, 0))(theta, test_x, labels)
        values = vmap(lambda x, t: output_of(theta, x, t))(test_x, labels)
    return (test_grads @ step).numpy(), values.detach().numpy()
