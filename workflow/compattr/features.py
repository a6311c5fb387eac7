"""Feature attribution with the component engine: input patches as units.

A :class:`PatchSet` splits an image into a grid of square patches. Ablating a
patch replaces its pixels by a baseline: zero, the training mean image, or a
blurred copy of the input itself. The set has the interface of a
:class:`compattr.components.ComponentSet` where the engine needs it (``names``,
``len``, ``ablatable``), so the evaluator, the first-order priors, leave-one-out,
every estimator and the LDS serve patches unchanged:

- the evaluator runs the model on masked inputs (COAR's ablation masks become
  occlusion masks, one mask applied to every test input);
- the first-order prior in the keep factors is gradient times (input minus
  baseline), summed over each patch;
- leave-one-out is occlusion, one patch at a time.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PATCH_BASELINES", "PatchSet", "PatchAblatable", "blur"]

#: What an ablated patch is replaced by.
PATCH_BASELINES = ("zero", "mean", "blur")
#: Standard deviation (pixels) and kernel size of the ``blur`` baseline's Gaussian.
BLUR_SIGMA = 2.0
BLUR_KERNEL = 7


def blur(images: Tensor, sigma: float = BLUR_SIGMA, kernel: int = BLUR_KERNEL) -> Tensor:
    """A Gaussian blur of ``images`` (batch, channels, height, width), each channel alone, edges reflected."""
    radius = kernel // 2
    t = torch.arange(kernel, dtype=images.dtype, device=images.device) - radius
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    c = images.shape[1]
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    rows = F.conv2d(padded, g.view(1, 1, 1, -1).expand(c, 1, 1, kernel), groups=c)
    return F.conv2d(rows, g.view(1, 1, -1, 1).expand(c, 1, kernel, 1), groups=c)


@dataclass(frozen=True)
class PatchSet:
    """Square patches of an image on a grid: the units of feature attribution.

    Attributes
    ----------
    image_shape : tuple of int
        ``(channels, height, width)`` of the inputs.
    patch_size : int
        Side of a patch in pixels; it divides height and width.
    baseline : {"zero", "mean", "blur"}
        What an ablated patch becomes: zero, the mean image (``mean_image``), or a
        Gaussian blur of the input (:func:`blur`).
    mean_image : Tensor, optional
        ``(channels, height, width)``: the training inputs' mean, for ``baseline="mean"``.
    """

    image_shape: tuple[int, int, int]
    patch_size: int
    baseline: str = "zero"
    mean_image: Tensor | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.image_shape) != 3:
            raise ValueError(f"image_shape must be (channels, height, width), got {self.image_shape}")
        _, h, w = self.image_shape
        if self.patch_size < 1 or h % self.patch_size or w % self.patch_size:
            raise ValueError(f"patch_size {self.patch_size} does not divide images of {h}x{w} pixels")
        if self.baseline not in PATCH_BASELINES:
            raise ValueError(f"baseline must be one of {PATCH_BASELINES}, got {self.baseline!r}")
        if self.baseline == "mean" and (self.mean_image is None or tuple(self.mean_image.shape) != self.image_shape):
            raise ValueError(f"baseline 'mean' needs mean_image of shape {self.image_shape}")

    @property
    def grid(self) -> tuple[int, int]:
        """Patches per column and per row."""
        _, h, w = self.image_shape
        return h // self.patch_size, w // self.patch_size

    def __len__(self) -> int:
        rows, cols = self.grid
        return rows * cols

    @property
    def names(self) -> list[str]:
        """Stable unit names, row-major: ``patch:r<row>c<col>``."""
        rows, cols = self.grid
        return [f"patch:r{r}c{c}" for r in range(rows) for c in range(cols)]

    @property
    def kinds(self) -> tuple[str, ...]:
        """One kind for every unit: ``patches``."""
        return ("patches",)

    @property
    def sizes(self) -> tuple[int, ...]:
        """The number of units, as one group."""
        return (len(self),)

    def ablatable(self, model: nn.Module) -> PatchAblatable:
        """``model`` behind a patch mask: its forward takes per-sample keep factors over the patches."""
        return PatchAblatable(model, self)

    def baseline_of(self, images: Tensor) -> Tensor:
        """What each pixel of ``images`` becomes when its patch is ablated."""
        if self.baseline == "zero":
            return torch.zeros_like(images)
        if self.baseline == "mean":
            return self.mean_image.to(images).expand_as(images)
        return blur(images)


class PatchAblatable(nn.Module):
    """A model whose inputs pass through a patch mask: ``forward(x, keep)``.

    Pixel ``p`` of sample ``i`` becomes ``b + keep[i, patch(p)] * (x - b)`` with
    ``b`` the patch set's baseline, so keep 1 is the input and keep 0 the baseline;
    ``keep`` has one row per sample or one per group of consecutive samples, as
    for :class:`compattr.components.AblatableNetwork`. The model is a frozen copy in eval mode.
    """

    def __init__(self, model: nn.Module, patches: PatchSet) -> None:
        super().__init__()
        self.network = copy.deepcopy(model).eval()
        self.patches = patches
        self.n_components = len(patches)
        self.n_folded = 0

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        """The model's outputs on ``x`` (batch, channels, height, width) with patches kept by ``keep``."""
        n = self.n_components
        if x.ndim != 4 or tuple(x.shape[1:]) != self.patches.image_shape:
            raise ValueError(f"inputs must be (batch, *{self.patches.image_shape}), got {tuple(x.shape)}")
        if keep.ndim != 2 or keep.shape[1] != n or not 0 < len(keep) <= len(x) or len(x) % len(keep):
            raise ValueError(
                f"keep must be (rows, {n}) with rows dividing the batch of {len(x)}, got {tuple(keep.shape)}"
            )
        rows, cols = self.patches.grid
        p = self.patches.patch_size
        pixels = keep.reshape(len(keep), 1, rows, 1, cols, 1).expand(-1, -1, -1, p, -1, p)
        pixels = pixels.reshape(len(keep), 1, rows * p, cols * p).repeat_interleave(len(x) // len(keep), dim=0)
        base = self.patches.baseline_of(x)
        return self.network(base + pixels.to(x.dtype) * (x - base))
