"""Attribution baselines that need no random ablation sampling.

Both return a linear component model per input, ``margin ~ coef . mask + intercept``
(``mask`` True where a component is ablated), scored with the same LDS as the
fitted estimators:

- :func:`attribution_patching`: a first-order estimate of each component's
  ablation effect from one forward and one backward pass per input batch.
- :func:`first_order_prior`: the same first-order estimate taken away from the
  unablated point: at the mask distribution's mean, averaged along a path of
  keep factors, or averaged over random masks (one forward and one backward
  pass per point and input batch).
- :func:`relu_patching`: attribution patching whose effect is propagated
  exactly through the first nonlinearity after each component or input patch (the same
  forward and backward pass).
- :func:`leave_one_out`: the exact effect of ablating each component alone
  (one ablated forward pass per component).
- :func:`exact_top`: a prior whose largest attributions are replaced by their exact
  effects (one ablated forward pass per unit so checked: :func:`leave_one_out` at the
  unablated model, :func:`keep_effects` at a keep point).

Costs are counted in forward-equivalent passes per input batch, a backward pass
counting as two (:func:`prior_passes`).
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from compattr.batches import Batch, batch_len, labelled_batches
from compattr.components import AblatableNetwork, ComponentSet
from compattr.features import PatchSet
from compattr.masks import bernoulli_masks
from compattr.outputs import Output, check_outputs, margins

__all__ = [
    "attribution_patching",
    "first_order_prior",
    "keep_gradients",
    "prior_points",
    "relu_patching",
    "leave_one_out",
    "exact_top",
    "keep_effects",
    "prior_passes",
    "patch_relu_passes",
    "column_gradients",
    "checked_keep",
]

#: Points a first-order prior is taken at (see :func:`first_order_prior`).
PRIOR_POINTS = ("unablated", "mean", "path", "masks")


def attribution_patching(
    model: nn.Module, components: ComponentSet, images: Tensor, labels: Tensor, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """First-order ablation effects: ``coef[i, c] = -sum over positions of (df_i/dz_c) * z_c``.

    ``z_c`` is component ``c``'s output (before BatchNorm), ``f_i`` the margin of
    input ``i``; zeroing ``z_c`` changes ``f_i`` by ``coef[i, c]`` to first order.
    The intercept is the unablated margin. Hooks on the component modules, on
    a copy of the model: an implementation independent of :func:`first_order_prior`
    (which differentiates the keep factors) that the tests check it against.

    Returns
    -------
    coef : ndarray (n_inputs, n_components)
    intercept : ndarray (n_inputs,)
    """
    if components.means is not None:
        raise ValueError("attribution_patching ablates to zero; for mean ablation use first_order_prior")
    if "heads" in components.kinds or "input" in components.sites:
        raise ValueError(
            "attribution_patching hooks module outputs, and heads and input neurons are not a module's output: "
            "use first_order_prior(point='unablated'), the same first-order effects from the keep factors"
        )
    model = copy.deepcopy(model).eval()  # the caller's model keeps its mode and gradients
    device = next(model.parameters()).device
    modules = dict(model.named_modules())
    coefs, intercepts = [], []
    # Keyed by module name: hooks fire in execution order, which is not component (module) order
    # where a block calls its shortcut convolution before its main path.
    outputs: dict[str, Tensor] = {}

    def keeper(name: str):
        def keep_output(module: nn.Module, args: tuple, output: Tensor) -> None:
            if name in outputs:
                raise ValueError(f"component module {name!r} is called more than once per forward pass")
            output.retain_grad()
            outputs[name] = output

        return keep_output

    for start in range(0, len(labels), batch_size):
        x = images[start : start + batch_size].to(device)
        y = labels[start : start + batch_size].to(device)
        outputs.clear()
        handles = [modules[name].register_forward_hook(keeper(name)) for name in components.module_names]
        try:
            with torch.enable_grad():
                f = margins(model(x), y)
                model.zero_grad(set_to_none=True)
                f.sum().backward()  # in eval mode each margin depends on its own input only
        finally:
            for handle in handles:
                handle.remove()
        missing = [name for name in components.module_names if name not in outputs]
        if missing:
            raise ValueError(f"component modules {missing} were not called in the model's forward pass")
        effect = [
            -_per_component(outputs[name].grad * outputs[name], kind)
            for name, kind in zip(components.module_names, components.kinds, strict=True)
        ]
        coefs.append(torch.cat(effect, dim=1).detach().cpu())
        intercepts.append(f.detach().cpu())
    return torch.cat(coefs).double().numpy(), torch.cat(intercepts).double().numpy()


def _per_component(values: Tensor, kind: str) -> Tensor:
    """``values`` (batch, ...) summed per component: over the positions after the channel axis, or before the last."""
    if kind == "channels":
        return values.flatten(2).sum(-1)
    return values.reshape(len(values), -1, values.shape[-1]).sum(1)


def leave_one_out(
    evaluator, n_units: int, chunk: int = 256, *, units: Sequence[int] | None = None, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Exact single-unit ablation effects: ``coef[i, c] = f_i(ablate c) - f_i(nothing ablated)``.

    ``evaluator`` maps bool masks (n_masks, n_units) to outputs (n_masks, n_inputs),
    like :class:`compattr.sampling.ComponentMarginEvaluator`; ``chunk`` units go in one call,
    with a progress bar over the units (``progress``). ``units``: the indices of the units to
    ablate (default every unit), one pass each plus one unablated pass; ``coef`` has a column per index.
    """
    index = np.arange(n_units) if units is None else np.asarray(units, dtype=np.int64)
    if index.ndim != 1 or (len(index) and (index.min() < 0 or index.max() >= n_units)):
        raise ValueError(f"units must be indices in [0, {n_units}), got {np.asarray(units).tolist()}")
    base = np.asarray(evaluator(np.zeros((1, n_units), dtype=bool)), dtype=np.float64)[0]
    single = np.empty((len(index), len(base)), dtype=np.float64)
    with tqdm(total=len(index), desc="leave-one-out", unit="unit", disable=not progress, mininterval=5) as bar:
        for i in range(0, len(index), chunk):
            masks = np.zeros((min(chunk, len(index) - i), n_units), dtype=bool)
            masks[np.arange(len(masks)), index[i : i + len(masks)]] = True
            single[i : i + len(masks)] = evaluator(masks)
            bar.update(len(masks))
    return (single - base).T, base


def exact_top(coef: np.ndarray, measure: Callable[[np.ndarray], np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """``coef`` (n_inputs, n_units) with its ``k`` largest units measured exactly: a prior checked by ablation.

    The units with the largest mean absolute attribution over the inputs (one ablation serves
    every input) get the effects ``measure(units)`` returns for them, (n_inputs, len(units)):
    their exact single-unit effects at the unablated model (:func:`leave_one_out` on them) or
    at a keep point (:func:`keep_effects`). The others keep their estimate. Attribution
    patching's candidates verified by activation patching, as Kramar et al. (2024) propose.
    Returns the new coefficients and the measured units' indices, largest first.
    """
    coef = np.asarray(coef, dtype=np.float64)
    if not 0 <= k <= coef.shape[1]:
        raise ValueError(f"exact_top must lie in [0, {coef.shape[1]}] (the units), got {k}")
    top = np.argsort(-np.abs(coef).mean(0), kind="stable")[:k]
    out = coef.copy()
    if k:
        out[:, top] = measure(top)
    return out, top


def keep_effects(
    network: nn.Module,
    images: Batch,
    labels: Tensor | None,
    keep: Tensor,
    units: Sequence[int],
    batch_size: int = 256,
    output: Output = margins,
) -> np.ndarray:
    """Exact effects (n_inputs, len(units)) of ablating each unit of ``units`` alone from keep factors ``keep``.

    Per unit of its keep factor ``k``, as the priors away from the unablated point take
    them: ``(f(keep with the unit at 0) - f(keep)) / k``. ``network`` is an ablatable network
    (:meth:`ComponentSet.ablatable`) and ``keep`` (n_units,) has no zero among ``units``: one
    forward pass per unit, and one at ``keep``.
    """
    keep = torch.as_tensor(keep, dtype=torch.float32).cpu()
    units = [int(u) for u in units]
    if bool((keep[units] <= 0).any()):
        raise ValueError(
            "keep_effects ablates units from a keep point where they are kept: their keep factors must be > 0"
        )
    base = _outputs_at(network, images, labels, keep, batch_size, output)
    effects = []
    for unit in tqdm(units, desc="exact effects", unit="unit", mininterval=5):
        ablated = keep.clone()
        ablated[unit] = 0
        effects.append((_outputs_at(network, images, labels, ablated, batch_size, output) - base) / keep[unit].item())
    return torch.stack(effects, dim=1).numpy() if effects else np.zeros((len(base), 0))


def keep_gradients(
    network: AblatableNetwork,
    images: Tensor,
    labels: Tensor | None,
    keep: Tensor,
    batch_size: int = 256,
    output: Output = margins,
) -> tuple[Tensor, Tensor]:
    """Minus the gradient of each input's output (margin by default) with respect to the keep factors, at ``keep``.

    ``keep`` (n_components,) is the point, the same for every input: 1 keeps a
    component, 0 ablates it. ``-df_i/dkeep_c`` is the first-order change of
    ``f_i`` when component ``c`` goes from that point to ablated, per unit of
    keep. Returns it (n_inputs, n_components) and the outputs at ``keep``
    (n_inputs,), both float64 on the CPU.
    """
    device = next(network.parameters()).device
    coefs, values = [], []
    for x, y in labelled_batches(images, labels, batch_size, device):
        k = keep.to(device=device, dtype=torch.float32).expand(batch_len(x), -1).clone().requires_grad_(True)
        with torch.enable_grad():
            f = check_outputs(output(network(x, k), y), batch_len(x), output)
            (grad,) = torch.autograd.grad(f.sum(), k)  # one keep row per input: row i holds df_i/dkeep
        coefs.append(-grad.detach().cpu().double())
        values.append(f.detach().cpu().double())
    return torch.cat(coefs), torch.cat(values)


@torch.no_grad()
def _outputs_at(
    network: AblatableNetwork, images: Tensor, labels: Tensor | None, keep: Tensor, batch_size: int, output: Output
) -> Tensor:
    """Outputs (n_inputs,) float64 on the CPU at keep factors ``keep`` (n_components,)."""
    device = next(network.parameters()).device
    keep = keep.to(device=device, dtype=torch.float32)[None]
    out = [
        check_outputs(output(network(x, keep), y), batch_len(x), output)
        for x, y in labelled_batches(images, labels, batch_size, device)
    ]
    return torch.cat(out).cpu().double()


def prior_passes(point: str, n_points: int = 1) -> int:
    """Forward-equivalent passes per input batch of a prior: 3 per point (forward, and backward as 2).

    A prior taken away from the unablated point also runs one unablated
    forward pass for its intercept.
    """
    return 3 * n_points + (point != "unablated")


def prior_points(
    point: str, n_components: int, *, ablation_rate: float | None = None, n_points: int = 1, seed: int = 0
) -> Tensor:
    """The keep factors (n_points, n_components) a first-order prior is taken at (see :func:`first_order_prior`)."""
    if point not in PRIOR_POINTS:
        raise ValueError(f"point must be one of {PRIOR_POINTS}, got {point!r}")
    if point != "unablated" and not (ablation_rate is not None and 0 < ablation_rate < 1):
        raise ValueError(f"point {point!r} needs an ablation_rate in (0, 1), got {ablation_rate!r}")
    if n_points < 1 or (point in ("unablated", "mean") and n_points != 1):
        wanted = ">= 1" if point in ("path", "masks") else "= 1"
        raise ValueError(f"point {point!r} takes n_points {wanted}, got {n_points}")
    C = n_components
    if point == "unablated":
        return torch.ones(1, C)
    if point == "mean":
        return torch.full((1, C), 1 - ablation_rate)
    if point == "path":
        t = (torch.arange(n_points, dtype=torch.float64) + 0.5) / n_points
        return (1 - 2 * ablation_rate * t)[:, None].expand(-1, C).float()
    return torch.from_numpy(~bernoulli_masks(n_points, C, ablation_rate, np.random.default_rng(seed))).float()


def first_order_prior(
    model: nn.Module,
    components: ComponentSet,
    images: Tensor,
    labels: Tensor | None,
    *,
    point: str = "unablated",
    ablation_rate: float | None = None,
    n_points: int = 1,
    seed: int = 0,
    relu: str = "linear",
    batch_size: int = 256,
    output: Output = margins,
) -> tuple[np.ndarray, np.ndarray]:
    """A first-order estimate of every component's ablation effect, per input, taken at ``point``.

    ``coef[i, c]`` is minus the derivative of output ``f_i`` (``output(model(x), y)``,
    the correct-class margin by default) with respect to component ``c``'s keep
    factor, averaged over the points; the intercept is the unablated output. The points:

    - ``"unablated"``: every keep factor 1 (attribution patching; one point).
    - ``"mean"``: every keep factor ``1 - ablation_rate``, the mean of the masks
      drawn at that rate (one point).
    - ``"path"``: ``n_points`` keep factors ``1 - 2 ablation_rate t`` at the midpoints
      ``t`` of ``n_points`` equal steps of [0, 1] (the path from 1 to
      ``1 - 2 ablation_rate``, integrated-gradient style).
    - ``"masks"``: ``n_points`` random masks drawn at ``ablation_rate`` (seeded by
      ``seed``), each applied to every input.

    ``relu="exact"`` propagates each zeroed channel exactly through the first
    elementwise nonlinearity after it (:func:`relu_patching`, at each point); the default
    ``"linear"`` differentiates through it.

    Returns
    -------
    coef : ndarray (n_inputs, n_components)
    intercept : ndarray (n_inputs,)
    """
    if relu not in ("linear", "exact"):
        raise ValueError(f"relu must be 'linear' or 'exact', got {relu!r}")
    keeps = prior_points(point, len(components), ablation_rate=ablation_rate, n_points=n_points, seed=seed)
    network = components.ablatable(model).requires_grad_(False)
    if relu == "exact":
        patch = _relu_patcher(model, components)
        taken = [patch(images, labels, k, batch_size=batch_size, output=output) for k in keeps]
        coefs, values = [torch.from_numpy(c) for c, _ in taken], [torch.from_numpy(v) for _, v in taken]
    else:
        coefs, values = zip(
            *(keep_gradients(network, images, labels, keep, batch_size, output) for keep in keeps), strict=True
        )
    # The intercept is the unablated output: the first point's, or one more forward pass.
    intercept = (
        values[0]
        if point == "unablated"
        else _outputs_at(network, images, labels, torch.ones(len(components)), batch_size, output)
    )
    return torch.stack(coefs).mean(0).numpy(), intercept.numpy()


_ADDS = (operator.add, operator.iadd, torch.add)
#: Elementwise nonlinearities an effect is propagated through exactly: modules, functions, tensor methods.
ACTIVATION_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
)
_ACTIVATION_FUNCTIONS = {
    torch.relu: torch.relu,
    F.relu: torch.relu,
    F.relu6: F.relu6,
    F.gelu: F.gelu,
    F.silu: F.silu,
    F.hardswish: F.hardswish,
    F.hardsigmoid: F.hardsigmoid,
    torch.sigmoid: torch.sigmoid,
    torch.tanh: torch.tanh,
}
_ACTIVATION_METHODS = {"relu": torch.relu, "relu_": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}


def _activation(graph: fx.GraphModule, node: fx.Node):
    """The elementwise nonlinearity ``node`` applies, as an out-of-place function of its input; else None.

    Functions called with settings beyond their input (``F.gelu(x, approximate=...)``) are taken
    with those settings.
    """
    if node.op == "call_module":
        module = graph.get_submodule(node.target)
        if not isinstance(module, ACTIVATION_MODULES):
            return None
        if getattr(module, "inplace", False):
            module = copy.copy(module)
            module.inplace = False
        return module
    if node.op == "call_function" and node.target in _ACTIVATION_FUNCTIONS:
        function, kwargs = _ACTIVATION_FUNCTIONS[node.target], dict(node.kwargs)
        kwargs.pop("inplace", None)
        if len(node.args) > 1:
            return None
        return lambda x: function(x, **kwargs)
    if node.op == "call_method" and node.target in _ACTIVATION_METHODS and len(node.args) == 1:
        return _ACTIVATION_METHODS[node.target]
    return None


def _describe(graph: fx.GraphModule, node: fx.Node) -> str:
    """A node as a reader knows it: ``module 'layer1.0.pool' (MaxPool2d)``, ``function max_pool2d``."""
    if node.op == "call_module":
        return f"module {node.target!r} ({type(graph.get_submodule(node.target)).__name__})"
    if node.op in ("call_function", "call_method"):
        return f"{node.op.removeprefix('call_')} {getattr(node.target, '__name__', node.target)}"
    return f"the graph's {node.op}"


def _relu_paths(graph: fx.GraphModule, components: ComponentSet) -> dict[str, tuple[fx.Node, fx.Node, Tensor]]:
    """Each component module's node, the first elementwise nonlinearity after it, and the per-channel slope between.

    The path may pass eval-mode BatchNorms (a slope each) and additions of
    terms that do not depend on the component (slope 1); anything else, or a
    fork before the nonlinearity, is an error naming the module.
    """
    calls = {}
    for node in graph.graph.nodes:
        if node.op == "call_module" and node.target in components.module_names:
            if node.target in calls:
                raise ValueError(f"component module {node.target!r} is called more than once per forward pass")
            calls[node.target] = node
    paths = {}
    for name, size in zip(components.module_names, components.sizes, strict=True):
        if name not in calls:
            raise ValueError(f"component module {name!r} is not called in the traced forward pass")
        relu, slope = _walk_to_activation(graph, calls[name], f"component module {name!r}", size)
        paths[name] = (calls[name], relu, slope)
    return paths


def _walk_to_activation(graph: fx.GraphModule, node: fx.Node, what: str, size: int) -> tuple[fx.Node, Tensor]:
    """The first elementwise nonlinearity after ``node`` (``size`` channels), and the per-channel slope between.

    The path may pass eval-mode BatchNorms (a slope each) and additions of terms that do not
    depend on ``node`` (slope 1); anything else, or a fork, is an error naming ``what``.
    """
    slope = torch.ones(size)
    while True:
        users = list(node.users)
        if len(users) != 1:
            raise ValueError(
                f"{what}: {node.name} feeds {len(users)} operations before any nonlinearity "
                "(atp_relu needs one path of BatchNorms and additions to the first elementwise nonlinearity)"
            )
        (user,) = users
        if _activation(graph, user) is not None:
            return user, slope
        module = graph.get_submodule(user.target) if user.op == "call_module" else None
        if isinstance(module, nn.BatchNorm2d) and not module.training and module.running_var is not None:
            scale = torch.rsqrt(module.running_var + module.eps)
            slope = slope * (scale if module.weight is None else scale * module.weight).detach().cpu()
        elif not (user.op == "call_function" and user.target in _ADDS and user.args.count(node) == 1):
            raise ValueError(
                f"no elementwise nonlinearity ({', '.join(m.__name__ for m in ACTIVATION_MODULES)}, or their "
                f"functions) follows {what} through eval-mode BatchNorms and additions: "
                f"its path reaches {_describe(graph, user)}"
            )
        node = user


class _Recorder(fx.Interpreter):
    """Runs a traced model, keeping the outputs of some nodes and the inputs and outputs of some nonlinearities.

    ``relus`` maps those nodes to their functions (:func:`_activation`), run out of place, so a
    pre-activation is never overwritten. ``keeps`` maps kept nodes to per-channel keep factors
    that scale their outputs downstream (the kept value is the unscaled output).
    """

    def __init__(
        self, graph: fx.GraphModule, kept: set[fx.Node], relus: dict, keeps: dict[fx.Node, Tensor] | None = None
    ) -> None:
        super().__init__(graph)
        self.kept, self.relus, self.keeps = kept, relus, keeps or {}
        self.values: dict[fx.Node, Tensor] = {}
        self.pre: dict[fx.Node, Tensor] = {}
        self.post: dict[fx.Node, Tensor] = {}

    def run_node(self, n: fx.Node):
        if n in self.relus:
            with self._set_current_node(n):
                args, _ = self.fetch_args_kwargs_from_env(n)
            self.pre[n] = args[0].detach().clone()
            self.post[n] = self.relus[n](args[0])
            return self.post[n]
        out = super().run_node(n)
        if n in self.kept:
            self.values[n] = out.detach().clone()  # before any later in-place operation
        if n in self.keeps:
            out = out * self.keeps[n].to(out).reshape(1, -1, *(1,) * (out.ndim - 2))
        return out


def relu_patching(
    model: nn.Module,
    components: ComponentSet,
    images: Tensor,
    labels: Tensor | None,
    *,
    keep: Tensor | None = None,
    linearise: bool = False,
    batch_size: int = 256,
    output: Output = margins,
) -> tuple[np.ndarray, np.ndarray]:
    """Attribution patching with each effect propagated exactly through the first nonlinearity after the component.

    Zeroing channel ``c`` (output ``z_c``) of a component module changes the
    pre-activation ``a`` of the first elementwise nonlinearity ``act`` after it (a
    ReLU, GELU, SiLU, Hardswish, ...: :data:`ACTIVATION_MODULES`) by ``delta = -s_c z_c``
    exactly, where ``s_c`` is the channel's slope through the eval-mode
    BatchNorms and additions in between (the path is found by tracing the model
    with ``torch.fx``). The effect on margin ``f_i`` is then
    ``coef[i, c] = sum over positions of g * (act(a + delta) - act(a))``, with
    ``g`` the output's (margin's, by default) gradient at the nonlinearity's output: the same
    forward and backward pass as :func:`attribution_patching`, exact up to that nonlinearity and
    first order after it. ``linearise=True`` replaces ``act(a + delta) - act(a)``
    by ``act'(a) delta``, which gives attribution patching back.

    ``components`` may also be input patches (:class:`compattr.features.PatchSet`): a patch
    taking its baseline changes the pre-activation after the model's first convolution by that
    convolution, without bias, of its pixels' change (times the BatchNorm slopes), computed for
    every patch (:func:`patch_relu_passes` counts that work).

    ``keep`` (n_components,), optional: the point, keep factors that scale each
    channel (1 by default: the unablated model). Every value is then taken
    there, and a component's effect is per unit of its keep factor ``k``: the change
    when it goes from ``k`` to ablated, divided by ``k``, or, where ``k`` is 0, minus
    the change when it is restored to 1. Linearised, that is minus the output's
    derivative in the keep factor, as :func:`first_order_prior` takes it.

    ``output`` may give several values per input, ``(batch, columns)`` (the pairwise margins of
    :class:`compattr.competitors.PairwiseMargins`): the same forward pass and a backward pass per
    column; ``coef`` and ``intercept`` then gain a last axis of the columns.

    Returns
    -------
    coef : ndarray (n_inputs, n_components)
    intercept : ndarray (n_inputs,)
        The outputs at the point (the unablated outputs by default).
    """
    patch = _relu_patcher(model, components)
    return patch(images, labels, keep, linearise=linearise, batch_size=batch_size, output=output)


def _relu_patcher(
    model: nn.Module, components: ComponentSet | PatchSet
) -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """:func:`relu_patching` with the model traced once: a function of ``(images, labels, keep, **settings)``."""
    if isinstance(components, PatchSet):
        return _patch_patcher(model, components)
    if set(components.kinds) != {"channels"} or components.means is not None:
        raise ValueError(
            "relu_patching follows zero-ablated conv filters (kind 'channels') or input patches to their first "
            "nonlinearity; for neurons, heads and mean ablation use first_order_prior"
        )
    model, graph = _trace(model)
    paths = _relu_paths(graph, components)
    relus = {relu: _activation(graph, relu) for _, relu, _ in paths.values()}
    device = next(model.parameters()).device

    def patch(
        images: Tensor,
        labels: Tensor | None,
        keep: Tensor | None,
        *,
        linearise: bool = False,
        batch_size: int = 256,
        output: Output = margins,
    ) -> tuple[np.ndarray, np.ndarray]:
        keep = checked_keep(keep, len(components))
        keeps = dict(zip(paths, keep.split(list(components.sizes)), strict=True))
        scaled = {node: keeps[name] for name, (node, _, _) in paths.items() if bool((keeps[name] != 1).any())}
        coefs, intercepts = [], []
        for x, y in labelled_batches(images, labels, batch_size, device):
            recorder = _Recorder(graph, {node for node, _, _ in paths.values()}, relus, scaled)
            with torch.enable_grad():
                f = output(recorder.run(x), y)
                order = list(recorder.post)
                per_column = column_gradients(f, [recorder.post[n] for n in order])
            effects = [
                _exact_effects(recorder, dict(zip(order, grads, strict=True)), paths, keeps, relus, linearise)
                for grads in per_column
            ]
            coefs.append((torch.stack(effects, -1) if f.ndim == 2 else effects[0]).detach().cpu())
            intercepts.append(f.detach().cpu())
        return torch.cat(coefs).double().numpy(), torch.cat(intercepts).double().numpy()

    return patch


def _trace(model: nn.Module) -> tuple[nn.Module, fx.GraphModule]:
    """An eval-mode copy of ``model`` (the caller's keeps its mode) and its ``torch.fx`` trace."""
    model = copy.deepcopy(model).eval()
    try:
        return model, fx.symbolic_trace(model)
    except Exception as error:  # any untraceable model
        raise ValueError(f"relu_patching traces the model with torch.fx, which failed: {error}") from error


def _input_conv(graph: fx.GraphModule) -> tuple[fx.Node, nn.Conv2d]:
    """The node and module of the one zero-padded ``nn.Conv2d`` the traced model's input feeds, or an error."""
    inputs = [node for node in graph.graph.nodes if node.op == "placeholder"]
    users = list(inputs[0].users) if inputs else []
    conv = graph.get_submodule(users[0].target) if len(users) == 1 and users[0].op == "call_module" else None
    if not isinstance(conv, nn.Conv2d) or conv.padding_mode != "zeros":
        raise ValueError(
            "relu_patching follows input patches through the first layer: the model's input must feed one "
            f"zero-padded nn.Conv2d, and it feeds {', '.join(_describe(graph, u) for u in users) or 'nothing'}"
        )
    return users[0], conv


def patch_relu_passes(model: nn.Module, patches: PatchSet) -> int:
    """Forward-equivalent passes per point that ``relu="exact"`` adds for input patches, rounded up.

    The first convolution runs once more per patch (on that patch's change): its
    floating-point operations over every patch, against one forward pass of the model
    (counted by ``torch.utils.flop_counter`` on one input).
    """
    model, graph = _trace(model)
    _, conv = _input_conv(graph)
    x = torch.zeros(1, *patches.image_shape, device=next(model.parameters()).device)
    with torch.no_grad(), FlopCounterMode(display=False) as whole:
        model(x)
    with torch.no_grad(), FlopCounterMode(display=False) as first:
        conv(x.expand(len(patches), -1, -1, -1))
    return max(1, math.ceil(first.get_total_flops() / max(whole.get_total_flops(), 1)))


def _patch_patcher(model: nn.Module, patches: PatchSet) -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """:func:`relu_patching` for input patches: each patch's change followed through the first convolution.

    The input must feed one ``nn.Conv2d`` (zero padding) and its output, through eval-mode
    BatchNorms and additions, the first elementwise nonlinearity. A patch taking its
    baseline changes the convolution's output by the convolution, without bias, of the
    change of its pixels: the pre-activation's change is exact, and so is the nonlinearity's.
    """
    model, graph = _trace(model)
    node, conv = _input_conv(graph)
    relu, slope = _walk_to_activation(graph, node, f"the input's convolution {node.target!r}", conv.out_channels)
    act = _activation(graph, relu)
    rows, cols = patches.grid
    size = patches.patch_size
    device = next(model.parameters()).device
    # one pixel map per patch: (patches, 1, height, width)
    pixels = torch.eye(len(patches)).reshape(len(patches), 1, rows, 1, cols, 1).expand(-1, -1, -1, size, -1, size)
    pixels = pixels.reshape(len(patches), 1, rows * size, cols * size).to(device)

    def patch(
        images: Tensor,
        labels: Tensor | None,
        keep: Tensor | None,
        *,
        linearise: bool = False,
        batch_size: int = 256,
        output: Output = margins,
    ) -> tuple[np.ndarray, np.ndarray]:
        keep = checked_keep(keep, len(patches)).to(device)
        step = torch.where(keep > 0, -keep, 1.0)  # to the baseline, or (from it) back to the input
        per_unit = torch.where(keep > 0, keep, -1.0)
        kept = (pixels * keep.reshape(-1, 1, 1, 1)).sum(0)  # each pixel's keep factor
        coefs, intercepts = [], []
        for x, y in labelled_batches(images, labels, max(1, batch_size // len(patches)), device):
            base = patches.baseline_of(x)
            away = x - base
            recorder = _Recorder(graph, set(), {relu: act})
            with torch.enable_grad():
                f = output(recorder.run(base + kept * away), y)
                per_column = [grads[0] for grads in column_gradients(f, [recorder.post[relu]])]
            with torch.no_grad():
                # every patch's pixel change at once: (batch * patches, channels, height, width)
                change = (away[:, None] * (pixels * step.reshape(-1, 1, 1, 1))[None]).flatten(0, 1)
                delta = F.conv2d(change, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
                delta = (delta * slope.to(delta).reshape(1, -1, 1, 1)).unflatten(0, (len(x), len(patches)))
                pre = recorder.pre[relu][:, None]  # broadcast over the patches
                if linearise:  # forward-mode AD takes a primal of the tangent's shape
                    moved = torch.func.jvp(act, (pre.expand_as(delta).contiguous(),), (delta,))[1]
                else:
                    moved = act(pre + delta) - act(pre)
                effects = [(grad[:, None] * moved).flatten(2).sum(-1) / per_unit for grad in per_column]
            coefs.append((torch.stack(effects, -1) if f.ndim == 2 else effects[0]).cpu())
            intercepts.append(f.detach().cpu())
        return torch.cat(coefs).double().numpy(), torch.cat(intercepts).double().numpy()

    return patch


def column_gradients(outputs: Tensor, inputs: Sequence[Tensor]) -> list[tuple[Tensor, ...]]:
    """Per column of ``outputs`` (batch,) or (batch, columns), the gradients of its sum with respect to ``inputs``.

    One backward pass per column through the same graph, with a progress bar over many columns.
    """
    columns = outputs[:, None] if outputs.ndim == 1 else outputs
    last = columns.shape[1] - 1
    steps = tqdm(range(columns.shape[1]), desc="output columns", unit="column", mininterval=5, leave=False)
    return [torch.autograd.grad(columns[:, j].sum(), inputs, retain_graph=j < last) for j in steps]


def checked_keep(keep: Tensor | None, n: int) -> Tensor:
    """Keep factors ``(n,)`` in [0, 1] as a float32 CPU tensor (all 1 by default), or an error naming them."""
    keep = torch.ones(n) if keep is None else torch.as_tensor(keep, dtype=torch.float32).cpu()
    wanted = f"keep must hold {n} keep factors in [0, 1]"
    if keep.shape != (n,):
        raise ValueError(f"{wanted}, got shape {tuple(keep.shape)}")
    if bool(((keep < 0) | (keep > 1)).any()):
        raise ValueError(f"{wanted}, got values from {keep.min().item():g} to {keep.max().item():g}")
    return keep


def _exact_effects(
    recorder: _Recorder,
    grads: dict[fx.Node, Tensor],
    paths: dict[str, tuple[fx.Node, fx.Node, Tensor]],
    keeps: dict[str, Tensor],
    relus: dict,
    linearise: bool,
) -> Tensor:
    """Every component's effect (n, n_components) per unit of keep factor from one recorded pass (relu_patching)."""
    effects = []
    for name, (node, relu, slope) in paths.items():
        z, pre, grad = recorder.values[node], recorder.pre[relu], grads[relu]
        if z.shape != pre.shape:
            raise ValueError(
                f"component module {name!r} outputs {tuple(z.shape)} but its nonlinearity takes {tuple(pre.shape)}"
            )
        k = keeps[name].to(z)
        step = torch.where(k > 0, -k, 1.0)  # to ablated, or (from 0) back to kept
        delta = (slope.to(z) * step).reshape(1, -1, *(1,) * (z.ndim - 2)) * z
        act = relus[relu]
        change = torch.func.jvp(act, (pre,), (delta,))[1] if linearise else act(pre + delta) - act(pre)
        effects.append((grad * change).flatten(2).sum(-1) / torch.where(k > 0, k, -1.0))
    return torch.cat(effects, dim=1)
