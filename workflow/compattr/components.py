"""Ablatable components of a network and per-sample ablation through forward hooks.

A *component* is one output channel of a module (a convolution filter, or a
neuron of a linear layer). Components are numbered in module order and named
``module.path:channel``. Ablating a component multiplies its output channel by
zero for the samples whose mask asks so; for a bias-free convolution followed
by BatchNorm this equals zeroing the filter's weights (the reference ablation of
COAR, Shah et al. 2024).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["ComponentSet", "conv_components"]


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

    @contextmanager
    def ablate(self, model: nn.Module, keep: Tensor) -> Iterator[None]:
        """Within the block, multiply each sample's component outputs by ``keep``.

        Parameters
        ----------
        model : nn.Module
            The model the components belong to.
        keep : Tensor of shape (batch, n_components)
            1 keeps a component, 0 ablates it; row ``i`` applies to sample ``i``
            of every forward pass run inside the block.
        """
        if keep.ndim != 2 or keep.shape[1] != len(self):
            raise ValueError(f"keep must be (batch, {len(self)}), got {tuple(keep.shape)}")
        modules = dict(model.named_modules())
        handles = []
        try:
            for name, offset, size in zip(self.module_names, self.offsets, self.sizes, strict=True):
                handles.append(modules[name].register_forward_hook(_channel_mask_hook(keep[:, offset : offset + size])))
            yield
        finally:
            for handle in handles:
                handle.remove()


def _channel_mask_hook(keep: Tensor):
    def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        if output.shape[0] != keep.shape[0]:
            raise ValueError(f"mask batch {keep.shape[0]} does not match the forward batch {output.shape[0]}")
        shape = keep.shape + (1,) * (output.ndim - 2)
        return output * keep.reshape(shape).to(output.dtype)

    return hook


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


def zero_filters(model: nn.Module, components: ComponentSet, ablated: Tensor) -> None:
    """Zero, in place, the weights of the filters whose entry in ``ablated`` (n_components,) is true."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, offset, size in zip(components.module_names, components.offsets, components.sizes, strict=True):
            rows = ablated[offset : offset + size].bool()
            modules[name].weight[rows] = 0
