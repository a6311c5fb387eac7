"""Ablation sampling: random masks, ablated forward passes, and their Zarr stores.

A store holds two arrays that share the ``mask`` dimension:

- ``masks`` (mask x component, bool): True where the component is ablated;
- ``margins`` (mask x input, float32): the output (e.g. correct-class margin)
  of the model ablated by that mask, for every test input.

Rows are split into shards of ``shard_size`` masks; a shard is one chunk of each
array, so shards written by parallel jobs never share a chunk. The masks of a
shard depend only on ``(seed, shard)``, so any order or split of the work
gives the same arrays.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from torch import Tensor, nn
from tqdm import tqdm

from compattr.components import ComponentSet
from compattr.models import margins

__all__ = [
    "bernoulli_masks",
    "shard_masks",
    "ComponentMarginEvaluator",
    "create_store",
    "shard_count",
    "run_shard",
    "check_store",
    "read_rows",
    "iter_rows",
    "write_coordinates",
    "read_coordinates",
    "NonFiniteMarginError",
]

Evaluator = Callable[[np.ndarray], np.ndarray]


class NonFiniteMarginError(ValueError):
    """Raised when an ablated forward pass gives NaN or infinite outputs."""


def bernoulli_masks(n_masks: int, n_units: int, ablation_rate: float, rng: np.random.Generator) -> np.ndarray:
    """``(n_masks, n_units)`` bool masks, each unit ablated (True) independently with probability ``ablation_rate``."""
    if not 0.0 <= ablation_rate <= 1.0:
        raise ValueError(f"ablation_rate must lie in [0, 1], got {ablation_rate}")
    return rng.random((n_masks, n_units)) < ablation_rate


def shard_masks(seed: int, shard: int, n_masks: int, n_units: int, ablation_rate: float) -> np.ndarray:
    """The masks of one shard, drawn from a generator keyed by ``(seed, shard)`` alone."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(shard,)))
    return bernoulli_masks(n_masks, n_units, ablation_rate, rng)


class ComponentMarginEvaluator:
    """An output per input (the correct-class margin by default) of a model under component ablation masks.

    Many masks and many inputs go through one forward pass: sample ``i * n_inputs + j``
    is input ``j`` under mask ``i`` (per-sample channel masks). The model itself
    is not changed: the evaluator runs an ablatable copy in eval mode.

    Parameters
    ----------
    model : nn.Module
        The network.
    components : ComponentSet
        The units that a mask's columns ablate.
    images, labels : Tensor
        Test inputs ``(n_inputs, ...)`` and their targets ``(n_inputs,)`` (None
        when ``output`` takes none).
    batch_size : int, default=4096
        Largest number of (mask, input) samples in one forward pass.
    precision : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        Compute precision of the forward pass (autocast below float32); "auto"
        is bfloat16 on CUDA and float32 elsewhere. Margins are float32 always.
    channels_last : bool or "auto", default="auto"
        Run the network in channels-last memory format; "auto": on CUDA only.
    compile : bool, "reduce-overhead" or "auto", default="auto"
        Compile each batch's work (network, masks and margins) once with
        ``torch.compile``; "reduce-overhead" also replays it as a CUDA graph,
        which removes the host's per-batch work (kernel launches) on CUDA;
        "auto": "reduce-overhead" on CUDA, not compiled elsewhere.
    output : callable, default=:func:`compattr.models.margins`
        ``output(model_outputs, targets)``: one float per sample, from the
        model's outputs of a batch and the batch's targets (None without labels).
    """

    def __init__(
        self,
        model: nn.Module,
        components: ComponentSet,
        images: Tensor,
        labels: Tensor | None,
        batch_size: int = 4096,
        *,
        precision: str = "auto",
        channels_last: bool | str = "auto",
        compile: bool | str = "auto",
        output: Callable[[Tensor, Tensor | None], Tensor] = margins,
    ) -> None:
        self.device = next(model.parameters()).device
        on_cuda = self.device.type == "cuda"
        if precision == "auto":
            precision = "bfloat16" if on_cuda else "float32"
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be 'auto' or one of {sorted(PRECISIONS)}, got {precision!r}")
        if compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {list(COMPILE_MODES)}, got {compile!r}")
        self.dtype = PRECISIONS[precision]
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{len(images)} inputs but {len(labels)} targets")
        # Channels-last applies to image batches (n, c, h, w) only.
        self.channels_last = images.ndim == 4 and (on_cuda if channels_last == "auto" else bool(channels_last))
        self.compile_mode = COMPILE_MODES[compile][on_cuda]
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = copy.deepcopy(model).eval().to(memory_format=memory_format)
        self.network = components.ablatable(self.model)
        self.output = output
        self._batch = self.compile(self._margins)
        self.images = images.to(self.device).contiguous(memory_format=memory_format)
        self.labels = None if labels is None else labels.to(self.device)
        self.batch_size = batch_size

    @property
    def compiled(self) -> bool:
        """Whether the forward passes run compiled."""
        return self.compile_mode is not None

    def compile(self, fn: Callable) -> Callable:
        """``fn`` compiled as the evaluator compiles its batches (unchanged when it does not)."""
        return fn if self.compile_mode is None else torch.compile(fn, mode=self.compile_mode)

    def _margins(self, images: Tensor, ablated: Tensor, labels: Tensor | None) -> Tensor:
        """Outputs (masks, inputs) of ``images`` under each row of the bool masks ``ablated`` (masks, components)."""
        x = images.repeat(len(ablated), *(1,) * (images.ndim - 1))
        with self.autocast():
            logits = self.network(x, (~ablated).float())
        targets = None if labels is None else labels.repeat(len(ablated))
        return self.output(logits.float(), targets).reshape(len(ablated), len(images))

    @torch.no_grad()
    def __call__(self, ablated: np.ndarray) -> np.ndarray:
        """Margins ``(n_masks, n_inputs)`` (float32) for the bool masks ``ablated`` ``(n_masks, n_components)``.

        The masks go to the device once per call and the margins come back once,
        so on CUDA the host queues the next batch while the GPU runs the last one.
        """
        n_inputs = len(self.images)
        ablated = torch.from_numpy(np.asarray(ablated, dtype=bool)).to(self.device)
        out = torch.empty(len(ablated), n_inputs, dtype=torch.float32, device=self.device)
        in_step = min(n_inputs, self.batch_size)
        mask_step = max(1, self.batch_size // in_step)
        for m0 in range(0, len(ablated), mask_step):
            for i0 in range(0, n_inputs, in_step):
                images = self.images[i0 : i0 + in_step]
                labels = None if self.labels is None else self.labels[i0 : i0 + in_step]
                out[m0 : m0 + mask_step, i0 : i0 + in_step] = self._batch(images, ablated[m0 : m0 + mask_step], labels)
        return out.cpu().numpy()

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context the forward passes run in: autocast to ``dtype``, or nothing for float32."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: ``torch.compile`` mode of each ``compile`` setting, off CUDA and on it (None: not compiled).
COMPILE_MODES: dict[bool | str, tuple[str | None, str | None]] = {
    False: (None, None),
    True: ("default", "default"),
    "auto": (None, "reduce-overhead"),
    "reduce-overhead": ("reduce-overhead", "reduce-overhead"),
}
#: Forward passes (batches of ``batch_size`` samples) per evaluator call in :func:`run_shard`.
BATCHES_PER_CALL = 8


def shard_count(n_masks: int, shard_size: int) -> int:
    """Number of shards that cover ``n_masks`` rows."""
    return math.ceil(n_masks / shard_size)


def create_store(
    path: str | Path,
    *,
    n_masks: int,
    n_units: int,
    n_inputs: int,
    shard_size: int,
    attributes: dict[str, Any],
    unit_dim: str = "component",
) -> zarr.Group:
    """Create an empty ablation store (arrays ``masks`` and ``margins``) at ``path``, replacing any there."""
    if min(n_masks, n_units, n_inputs, shard_size) < 1:
        raise ValueError("n_masks, n_units, n_inputs and shard_size must all be positive")
    group = zarr.open_group(str(path), mode="w", attributes={**attributes, "shard_size": shard_size})
    group.create_array(
        "masks",
        shape=(n_masks, n_units),
        chunks=(shard_size, n_units),
        dtype="bool",
        dimension_names=("mask", unit_dim),
        fill_value=False,
        attributes={"description": f"True where the {unit_dim} is ablated"},
    )
    group.create_array(
        "margins",
        shape=(n_masks, n_inputs),
        chunks=(shard_size, n_inputs),
        dtype="float32",
        dimension_names=("mask", "input"),
        fill_value=float("nan"),
        attributes={"description": "model output (correct-class margin) under each mask"},
    )
    return group


def write_coordinates(group: zarr.Group, *, components: Sequence[str], inputs: np.ndarray, labels: np.ndarray) -> None:
    """Write the coordinate arrays of a store: ``component`` (names), ``input`` (ids) and ``label`` (per input).

    Each is a one-dimensional array named after its dimension, so readers that
    follow the convention (xarray) label the ``component`` and ``input`` axes.
    """
    if len(inputs) != len(labels):
        raise ValueError(f"{len(inputs)} input ids but {len(labels)} labels")
    names = np.array(list(components), dtype=np.dtypes.StringDType())
    group.create_array("component", data=names, dimension_names=("component",), overwrite=True)
    group.create_array("input", data=np.asarray(inputs, dtype=np.int64), dimension_names=("input",), overwrite=True)
    group.create_array("label", data=np.asarray(labels, dtype=np.int64), dimension_names=("input",), overwrite=True)


def read_coordinates(path: str | Path) -> dict[str, np.ndarray] | None:
    """The coordinates a store holds (``component``, ``input``, ``label``), or None if it has none."""
    group = zarr.open_group(str(path), mode="r")
    try:  # looked up by name: listing the group would warn about files Snakemake keeps in output folders
        component, inputs, labels = (group[name] for name in ("component", "input", "label"))
    except KeyError:
        return None
    return {"components": np.array(component[:].tolist(), dtype=object), "inputs": inputs[:], "labels": labels[:]}


def run_shard(
    path: str | Path, shard: int, evaluator: Evaluator, *, ablation_rate: float, seed: int
) -> dict[str, float]:
    """Draw the masks of ``shard``, evaluate them and write both arrays' rows of that shard.

    Nothing is written when an output is not finite: :class:`NonFiniteMarginError`
    names the shard. Returns summary statistics of the shard's margins.
    """
    group = zarr.open_group(str(path), mode="r+")
    masks_arr, margins_arr = group["masks"], group["margins"]
    shard_size = masks_arr.chunks[0]
    n_shards = shard_count(masks_arr.shape[0], shard_size)
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} out of range: the store at {path} has {n_shards} shards")
    start, stop = shard * shard_size, min((shard + 1) * shard_size, masks_arr.shape[0])
    masks = shard_masks(seed, shard, stop - start, masks_arr.shape[1], ablation_rate)
    # calls of BATCHES_PER_CALL forward passes: progress is shown per call, and on CUDA a call's passes
    # run back to back (the evaluator copies margins to the host once per call)
    step = BATCHES_PER_CALL * max(1, getattr(evaluator, "batch_size", 4096) // margins_arr.shape[1])
    values = np.empty((stop - start, margins_arr.shape[1]), dtype=np.float32)
    for i in tqdm(range(0, len(masks), step), desc=f"shard {shard}", unit="call", mininterval=5):
        values[i : i + step] = evaluator(masks[i : i + step])
    bad = ~np.isfinite(values)
    if bad.any():
        rows, cols = np.nonzero(bad)
        raise NonFiniteMarginError(
            f"shard {shard} of {path}: {bad.sum()} non-finite margins "
            f"(first at mask {start + rows[0]}, input {cols[0]}); nothing was written"
        )
    masks_arr[start:stop] = masks
    margins_arr[start:stop] = values
    return {"shard": shard, "rows": stop - start, "mean": float(values.mean()), "std": float(values.std())}


def check_store(path: str | Path) -> dict[str, Any]:
    """Check that every shard of the store was written and holds finite margins.

    Raises ``ValueError`` naming the first missing or non-finite shard; returns
    the store's shape and margin statistics.
    """
    group = zarr.open_group(str(path), mode="r")
    margins_arr = group["margins"]
    shard_size = margins_arr.chunks[0]
    n_shards = shard_count(margins_arr.shape[0], shard_size)
    total, total_sq, count = 0.0, 0.0, 0
    for shard in range(n_shards):
        block = margins_arr[shard * shard_size : (shard + 1) * shard_size]
        if np.isnan(block).all():
            raise ValueError(f"shard {shard} of {path} was never written")
        if not np.isfinite(block).all():
            raise NonFiniteMarginError(f"shard {shard} of {path} holds NaN or infinite margins")
        total += float(block.sum(dtype=np.float64))
        total_sq += float(np.square(block, dtype=np.float64).sum())
        count += block.size
    mean = total / count
    return {
        "n_masks": margins_arr.shape[0],
        "n_units": group["masks"].shape[1],
        "n_inputs": margins_arr.shape[1],
        "n_shards": n_shards,
        "margin_mean": mean,
        "margin_std": math.sqrt(max(total_sq / count - mean**2, 0.0)),
    }


def read_rows(path: str | Path, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``stop`` rows (all when None) of a store: masks (bool) and margins (float32)."""
    group = zarr.open_group(str(path), mode="r")
    n = group["masks"].shape[0]
    if stop is not None and stop > n:
        raise ValueError(f"asked for {stop} masks but the store at {path} holds {n}")
    return group["masks"][:stop], group["margins"][:stop]


def iter_rows(path: str | Path, start: int, stop: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Rows ``start:stop`` of a store, as (masks, margins) blocks of at most one chunk (shard) each."""
    group = zarr.open_group(str(path), mode="r")
    masks, values = group["masks"], group["margins"]
    if not 0 <= start <= stop <= masks.shape[0]:
        raise ValueError(f"rows {start}:{stop} are outside the store at {path} ({masks.shape[0]} masks)")
    step = masks.chunks[0]
    lo = start
    while lo < stop:
        hi = min(stop, (lo // step + 1) * step)  # the end of lo's chunk
        yield masks[lo:hi], values[lo:hi]
        lo = hi
