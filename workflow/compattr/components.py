"""Ablatable components of a network, and copies of it whose forward pass ablates them per sample.

A *component* is one output channel of a module (a convolution filter, or a
neuron of a linear layer). Components are numbered in module order and named
``module.path:channel``. Ablating a component multiplies its output channel by
zero for the samples whose mask asks so; for a bias-free convolution followed
by BatchNorm this equals zeroing the filter's weights (the reference ablation of
COAR, Shah et al. 2024).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ComponentSet", "AblatableNetwork", "conv_components", "module_components", "zero_filters"]


@dataclass(frozen=True)
class ComponentSet:
    """An ordered set of ablatable output channels of some modules of one model.

    Attributes
    ----------
    module_names : tuple of str
        Dotted paths of the modules, in component order.
    sizes : tuple of int
        Number of output channels of each module.
    """

    module_names: tuple[str, ...]
    sizes: tuple[int, ...]

    def __len__(self) -> int:
        return sum(self.sizes)

    @property
    def names(self) -> list[str]:
        """Stable component names, ``module.path:channel``."""
        return [f"{m}:{c}" for m, n in zip(self.module_names, self.sizes, strict=True) for c in range(n)]

    @property
    def offsets(self) -> list[int]:
        """Index of each module's first component."""
        out, total = [], 0
        for n in self.sizes:
            out.append(total)
            total += n
        return out

    def ablatable(self, model: nn.Module) -> AblatableNetwork:
        """A copy of ``model`` whose forward takes per-sample keep masks over these components."""
        return AblatableNetwork(model, self)


class _KeepSlot:
    """The keep mask of the forward pass under way, shared by the gates of one :class:`AblatableNetwork`.

    A plain attribute rather than a buffer: the mask is set and cleared inside
    ``AblatableNetwork.forward``, so a compiled forward takes it as an input.
    """

    keep: Tensor | None = None


class _Gate(nn.Module):
    """A module that masks channels ``offset : offset + size`` of the components, read from a shared slot."""

    def __init__(self, slot: _KeepSlot, offset: int, size: int) -> None:
        super().__init__()
        self.slot, self.offset, self.size = slot, offset, size

    def _grouped(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` (batch, channels, ...) as (masks, samples per mask, channels, ...), and the keep (masks, size)."""
        keep = self.slot.keep[:, self.offset : self.offset + self.size]
        return x.unflatten(0, (len(keep), -1)), keep


class _MaskedOutput(_Gate):
    """A module whose output channels are multiplied by its slice of the shared per-sample keep mask."""

    def __init__(self, module: nn.Module, slot: _KeepSlot, offset: int, size: int) -> None:
        super().__init__(slot, offset, size)
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        output = self.module(*args, **kwargs)
        grouped, keep = self._grouped(output)
        factor = keep.reshape(len(keep), 1, self.size, *(1,) * (output.ndim - 2))  # (masks, 1, channels, 1, ...)
        return (grouped * factor.to(output.dtype)).flatten(0, 1)


class _MaskedBatchNorm(_Gate):
    """An eval-mode BatchNorm2d that also masks its input channels per sample.

    In eval mode BatchNorm is ``x * scale + shift`` per channel, so masking its
    input is ``x * (scale * keep) + shift``: one elementwise pass, the cost of
    the BatchNorm alone. Ablated channels output ``shift``, exactly as when the
    preceding convolution's filter is zeroed.
    """

    def __init__(self, norm: nn.BatchNorm2d, slot: _KeepSlot, offset: int, size: int) -> None:
        super().__init__(slot, offset, size)
        with torch.no_grad():
            scale = torch.rsqrt(norm.running_var + norm.eps)
            if norm.weight is not None:
                scale = scale * norm.weight
            shift = -norm.running_mean * scale
            if norm.bias is not None:
                shift = shift + norm.bias
        self.register_buffer("scale", scale.detach().clone(), persistent=False)
        self.register_buffer("shift", shift.detach().clone()[:, None, None], persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        grouped, keep = self._grouped(x)
        factor = (keep * self.scale)[:, None, :, None, None]  # (masks, 1, channels, 1, 1)
        return torch.addcmul(self.shift.to(x.dtype), grouped, factor.to(x.dtype)).flatten(0, 1)


class AblatableNetwork(nn.Module):
    """A frozen copy of a network whose forward pass ablates components per sample.

    ``forward(x, keep)`` runs the copy on ``x`` (batch, ...) with the components
    of sample ``i`` multiplied by ``keep[i // (batch // len(keep))]`` (1 keeps,
    0 ablates): one row of ``keep`` per sample, or one per group of consecutive
    samples (e.g. one mask for every test input), so a mask is never repeated
    per sample. A component module whose only consumer is an eval-mode
    ``BatchNorm2d`` is masked inside that BatchNorm (see
    :class:`_MaskedBatchNorm`), so ablation costs no extra pass over its
    activations; any other module's output is multiplied by the mask. The copy
    is in eval mode, and the pairs are found by tracing the network with
    ``torch.fx`` (a network that cannot be traced keeps the multiplications).
    The gates read the mask from a slot that ``forward`` sets and clears, so
    ``forward`` compiles once (with ``torch.compile``) and serves every mask.

    Attributes
    ----------
    network : nn.Module
        The copy, with its component modules (or their BatchNorms) wrapped.
    n_folded : int
        Number of components masked inside a BatchNorm.
    """

    def __init__(self, model: nn.Module, components: ComponentSet) -> None:
        super().__init__()
        self.n_components = len(components)
        pairs = _batchnorm_consumers(model, components.module_names)
        self.network = copy.deepcopy(model).eval()
        self.slot = _KeepSlot()
        self.n_folded = 0
        for name, offset, size in zip(components.module_names, components.offsets, components.sizes, strict=True):
            if name in pairs:
                target = pairs[name]
                gate = _MaskedBatchNorm(self.network.get_submodule(target), self.slot, offset, size)
                self.n_folded += size
            else:
                target, gate = name, _MaskedOutput(self.network.get_submodule(name), self.slot, offset, size)
            parent, _, child = target.rpartition(".")
            setattr(self.network.get_submodule(parent), child, gate)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        """Outputs of the network on ``x`` (batch, ...) ablated by ``keep`` (batch or fewer rows, n_components)."""
        if keep.ndim != 2 or keep.shape[1] != self.n_components or not 0 < len(keep) <= len(x) or len(x) % len(keep):
            raise ValueError(
                f"keep must be (rows, {self.n_components}) with rows dividing the batch of {len(x)}, "
                f"got {tuple(keep.shape)}"
            )
        self.slot.keep = keep
        out = self.network(x)
        self.slot.keep = None
        return out


def _batchnorm_consumers(model: nn.Module, names: tuple[str, ...]) -> dict[str, str]:
    """For each module in ``names`` whose output feeds only a ``BatchNorm2d`` with running statistics, its name.

    Modules or BatchNorms called more than once are left out, as is everything
    when ``torch.fx`` cannot trace the model (data-dependent control flow).
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # any untraceable model: no folding, the generic masks still apply
        return {}
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    wanted = set(names)
    pairs = {}
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in wanted or calls[node.target] != 1 or len(node.users) != 1:
            continue
        (user,) = node.users
        if user.op != "call_module" or calls[user.target] != 1:
            continue
        norm = model.get_submodule(user.target)
        if isinstance(norm, nn.BatchNorm2d) and norm.running_var is not None:
            pairs[node.target] = user.target
    return pairs


def conv_components(model: nn.Module, *, include_shortcuts: bool = True) -> ComponentSet:
    """Every output channel of every ``nn.Conv2d`` of ``model``, in module order.

    Parameters
    ----------
    include_shortcuts : bool, default=True
        Whether to count the 1x1 projection convolutions of residual shortcuts
        (modules under a ``downsample`` path). COAR's ResNet-50 count (22,720)
        leaves them out.
    """
    names, sizes = [], []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if not include_shortcuts and "downsample" in name.split("."):
                continue
            names.append(name)
            sizes.append(module.out_channels)
    if not names:
        raise ValueError("the model has no Conv2d modules to ablate")
    return ComponentSet(tuple(names), tuple(sizes))


def module_components(model: nn.Module, names: Sequence[str]) -> ComponentSet:
    """The output channels of the named modules: a convolution's filters, a linear layer's neurons.

    ``names`` are dotted module paths (as ``model.named_modules()`` gives them),
    kept in the order given.
    """
    modules = dict(model.named_modules())
    sizes = []
    for name in names:
        if name not in modules:
            raise ValueError(f"the model has no module {name!r}; its modules: {[n for n in modules if n][:20]}")
        module = modules[name]
        if isinstance(module, nn.Conv2d):
            sizes.append(module.out_channels)
        elif isinstance(module, nn.Linear):
            sizes.append(module.out_features)
        else:
            raise ValueError(
                f"module {name!r} is a {type(module).__name__}: components are the output channels of Conv2d "
                "and Linear modules"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"module names repeat: {list(names)}")
    if not names:
        raise ValueError("no modules named: give at least one")
    return ComponentSet(tuple(names), tuple(sizes))


def zero_filters(model: nn.Module, components: ComponentSet, ablated: Tensor) -> None:
    """Zero, in place, the weights of the filters whose entry in ``ablated`` (n_components,) is true."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, offset, size in zip(components.module_names, components.offsets, components.sizes, strict=True):
            rows = ablated[offset : offset + size].bool()
            modules[name].weight[rows] = 0
