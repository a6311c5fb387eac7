"""Ablation sampling: ablated forward passes of random masks, written shard by shard to a mask store.

The stores themselves are :mod:`compattr.stores`, the masks :mod:`compattr.masks`. The masks
of a shard depend only on the store's ``(seed, shard)`` and ablation rate, so any order or
split of the work gives the same arrays.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

import compattr.batches as batches
from compattr.batches import Batch
from compattr.components import ComponentSet
from compattr.masks import expected_shard_masks
from compattr.outputs import Output, check_outputs, margins
from compattr.stores import MaskStore, NonFiniteMarginError, write_shard

__all__ = [
    "Evaluator",
    "ComponentMarginEvaluator",
    "DistinctMasks",
    "run_shard",
    "BATCHES_PER_CALL",
    "AUTO_BATCH_SIZE",
]

#: Any function of bool masks ``(n_masks, n_units)`` giving outputs ``(n_masks, n_inputs)``.
MaskFunction = Callable[[np.ndarray], np.ndarray]


@runtime_checkable
class Evaluator(Protocol):
    """What sampling, leave-one-out and editing evaluate masks with: outputs per input under each mask.

    ``evaluator(ablated)`` takes bool masks ``(n_masks, n_units)`` (True: ablated) and returns
    ``(n_masks, n_inputs)`` float32 outputs; ``masks_per_call`` is how many masks one call should
    take (a progress step), and :meth:`describe` says in a line how the outputs are computed.
    :class:`ComponentMarginEvaluator` (ablated forward passes) and
    :class:`compattr.datamodels.DataMarginEvaluator` (a model trained per mask) are the two.
    """

    masks_per_call: int

    def __call__(self, ablated: np.ndarray) -> np.ndarray: ...

    def describe(self) -> str: ...


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
    images : Tensor or mapping of Tensor
        Test inputs ``(n_inputs, ...)``, or a mapping of such tensors (e.g. a
        tokenizer's ``input_ids`` and ``attention_mask``), passed to the model
        as keyword arguments (:mod:`compattr.batches`).
    labels : Tensor
        Their targets ``(n_inputs,)`` (None when ``output`` takes none).
    batch_size : int or "auto", default="auto"
        Largest number of (mask, input) samples in one forward pass; "auto":
        :data:`AUTO_BATCH_SIZE` of the model's device type.
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
    output : callable, default=:func:`compattr.outputs.margins`
        ``output(model_outputs, targets)``: one float per sample, from what the
        model returns for a batch (a tensor, tuple or ``ModelOutput``, unchanged)
        and the batch's targets (None without labels).
    inputs_on_device : bool or "auto", default="auto"
        Keep every input on the model's device (moved once), or keep them on
        the host and move one block of inputs at a time (pinned memory on
        CUDA); "auto": on the device when they take at most
        :data:`INPUTS_ON_DEVICE_BYTES`. The outputs are the same either way.
    """

    def __init__(
        self,
        model: nn.Module,
        components: ComponentSet,
        images: Batch,
        labels: Tensor | None,
        batch_size: int | str = "auto",
        *,
        precision: str = "auto",
        channels_last: bool | str = "auto",
        compile: bool | str = "auto",
        output: Output = margins,
        inputs_on_device: bool | str = "auto",
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
        images = batches.check_batch(images)
        n_inputs = batches.batch_len(images)
        if labels is not None and len(labels) != n_inputs:
            raise ValueError(f"{n_inputs} inputs but {len(labels)} targets")
        # Channels-last applies to image batches (n, c, h, w) only.
        is_image = isinstance(images, Tensor) and images.ndim == 4
        self.channels_last = is_image and (on_cuda if channels_last == "auto" else bool(channels_last))
        self.compile_mode = COMPILE_MODES[compile][on_cuda]
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = copy.deepcopy(model).eval().to(memory_format=memory_format)
        self.network = components.ablatable(self.model)
        self.output = output
        self._batch = self.compile(self._margins)
        if inputs_on_device == "auto":
            inputs_on_device = batches.nbytes(images) <= INPUTS_ON_DEVICE_BYTES
        elif not isinstance(inputs_on_device, bool):
            raise ValueError(f"inputs_on_device must be True, False or 'auto', got {inputs_on_device!r}")
        home = self.device if inputs_on_device else torch.device("cpu")
        self.images = batches.to_device(images, home)
        if is_image:
            self.images = self.images.contiguous(memory_format=memory_format)
        self.n_inputs = n_inputs
        self.labels = None if labels is None else labels.to(home)
        if not inputs_on_device and on_cuda:  # host memory the copies to the device can read asynchronously
            self.images = batches.pin_memory(self.images)
            self.labels = None if self.labels is None else self.labels.pin_memory()
        self.inputs_on_device = inputs_on_device
        if batch_size == "auto":
            batch_size = AUTO_BATCH_SIZE["cuda" if on_cuda else "cpu"]
        elif isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")
        self.batch_size = batch_size

    @property
    def masks_per_call(self) -> int:
        """Masks per call of :func:`run_shard`: :data:`BATCHES_PER_CALL` forward passes of ``batch_size`` samples."""
        return BATCHES_PER_CALL * max(1, self.batch_size // self.n_inputs)

    def describe(self) -> str:
        """One line: device, precision, memory format, compilation, and the units masked inside a BatchNorm."""
        return (
            f"forward passes on {self.device} in {self.dtype}, channels-last {self.channels_last}, compiled "
            f"{self.compiled}; {self.network.n_folded} units masked inside a BatchNorm"
        )

    @property
    def compiled(self) -> bool:
        """Whether the forward passes run compiled."""
        return self.compile_mode is not None

    def compile(self, fn: Callable) -> Callable:
        """``fn`` compiled as the evaluator compiles its batches (unchanged when it does not)."""
        return fn if self.compile_mode is None else torch.compile(fn, mode=self.compile_mode)

    def _margins(self, images: Batch, ablated: Tensor, labels: Tensor | None) -> Tensor:
        """Outputs (masks, inputs) of ``images`` under each row of the bool masks ``ablated`` (masks, components)."""
        x = batches.repeat(images, len(ablated))
        with self.autocast():
            returned = self.network(x, (~ablated).float())
        targets = None if labels is None else labels.repeat(len(ablated), *(1,) * (labels.ndim - 1))
        n = batches.batch_len(images)
        return check_outputs(self.output(returned, targets), n * len(ablated), self.output).reshape(len(ablated), n)

    @torch.no_grad()
    def __call__(self, ablated: np.ndarray) -> np.ndarray:
        """Margins ``(n_masks, n_inputs)`` (float32) for the bool masks ``ablated`` ``(n_masks, n_components)``.

        The masks go to the device once per call and the margins come back once,
        so on CUDA the host queues the next batch while the GPU runs the last one.
        """
        n_inputs = self.n_inputs
        ablated = torch.from_numpy(np.asarray(ablated, dtype=bool)).to(self.device)
        out = torch.empty(len(ablated), n_inputs, dtype=torch.float32, device=self.device)
        in_step = min(n_inputs, self.batch_size)
        mask_step = max(1, self.batch_size // in_step)
        # inputs block by block (each moved to the device once per call when they live on the host), masks within
        for i0 in range(0, n_inputs, in_step):
            images = batches.to_device(
                batches.take(self.images, slice(i0, i0 + in_step)), self.device, non_blocking=True
            )
            labels = None if self.labels is None else self.labels[i0 : i0 + in_step].to(self.device, non_blocking=True)
            for m0 in range(0, len(ablated), mask_step):
                out[m0 : m0 + mask_step, i0 : i0 + in_step] = self._batch(images, ablated[m0 : m0 + mask_step], labels)
        return out.cpu().numpy()

    @torch.no_grad()
    def paired(self, ablated: np.ndarray, inputs: np.ndarray) -> np.ndarray:
        """Outputs ``(n,)`` (float32) of input ``inputs[r]`` under mask ``ablated[r]``: one mask per edit.

        The same ablatable network as :meth:`__call__`, with one mask row per
        sample, ``batch_size`` samples per forward pass (not compiled: edits are few).
        """
        ablated = np.asarray(ablated, dtype=bool)
        inputs = np.asarray(inputs, dtype=np.int64)
        if ablated.ndim != 2 or len(ablated) != len(inputs):
            raise ValueError(f"one mask row per input: got masks {ablated.shape} and {inputs.shape} inputs")
        out = np.empty(len(inputs), dtype=np.float32)
        for r0 in range(0, len(inputs), self.batch_size):
            index = torch.from_numpy(inputs[r0 : r0 + self.batch_size])
            images = batches.to_device(batches.take(self.images, index), self.device, non_blocking=True)
            labels = None if self.labels is None else self.labels[index].to(self.device, non_blocking=True)
            keep = torch.from_numpy(~ablated[r0 : r0 + self.batch_size]).to(self.device).float()
            with self.autocast():
                returned = self.network(images, keep)
            out[r0 : r0 + len(index)] = (
                check_outputs(self.output(returned, labels), len(index), self.output).float().cpu().numpy()
            )
        return out

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context the forward passes run in: autocast to ``dtype``, or nothing for float32."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


#: ``batch_size="auto"`` of :class:`ComponentMarginEvaluator` per device type. A CPU runs a batch
#: that stays in its caches faster: 1,024 (mask, input) samples per pass took 1.2-2.1x less time
#: than 8,192 on one CPU core for the project's ResNet, ViT and language model, with identical outputs.
AUTO_BATCH_SIZE = {"cuda": 8192, "cpu": 1024}
#: Largest size of the inputs that ``inputs_on_device="auto"`` keeps on the device (1 GiB).
INPUTS_ON_DEVICE_BYTES = 2**30
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


class DistinctMasks:
    """An evaluator that runs each distinct mask once and reuses its outputs afterwards.

    ``DistinctMasks(evaluator)(ablated)`` equals ``evaluator(ablated)``, but a mask row
    seen before, in the same call or an earlier one, is not evaluated again: editing
    scores every method's top-k sets, and methods often choose the same ones.
    """

    def __init__(self, evaluator: MaskFunction) -> None:
        self.evaluator = evaluator
        self._outputs: dict[bytes, np.ndarray] = {}

    def __call__(self, ablated: np.ndarray) -> np.ndarray:
        """Outputs ``(n_masks, n_inputs)`` of the wrapped evaluator, new distinct masks in one call."""
        ablated = np.asarray(ablated, dtype=bool)
        if ablated.ndim != 2 or not len(ablated):
            return self.evaluator(ablated)
        keys = [row.tobytes() for row in np.packbits(ablated, axis=1)]
        new: dict[bytes, np.ndarray] = {}
        for key, row in zip(keys, ablated, strict=True):
            if key not in self._outputs:
                new.setdefault(key, row)
        if new:
            self._outputs.update(zip(new, self.evaluator(np.stack(list(new.values()))), strict=True))
        return np.stack([self._outputs[key] for key in keys])


def run_shard(
    path: str | Path | MaskStore, shard: int, evaluator: Evaluator | MaskFunction, **expected: Any
) -> dict[str, Any]:
    """Draw the masks of ``shard``, evaluate them and write both arrays' rows of that shard, then its manifest.

    The masks come from the store's ablation rate and seed, which must equal ``expected`` (the
    config's ``ablation_rate`` and ``seed``, when given: :meth:`compattr.stores.MaskStore.check_settings`).
    Nothing is written when an output is not finite: :class:`~compattr.stores.NonFiniteMarginError`
    names the shard. Returns the shard's manifest (:func:`compattr.stores.write_shard`).
    """
    store = MaskStore.open(path, mode="r+")
    store.check_settings(**expected)
    margins_arr = store.margins
    masks = expected_shard_masks(store, shard)
    start, stop = store.shard_rows(shard)
    # progress is shown per call, and on CUDA a call's passes run back to back (the evaluator copies
    # margins to the host once per call); a plain function of the masks gets a shard at a time
    step = evaluator.masks_per_call if isinstance(evaluator, Evaluator) else max(stop - start, 1)
    values = np.empty((stop - start, margins_arr.shape[1]), dtype=np.float32)
    for i in tqdm(range(0, len(masks), step), desc=f"shard {shard}", unit="call", mininterval=5):
        values[i : i + step] = evaluator(masks[i : i + step])
    bad = ~np.isfinite(values)
    if bad.any():
        rows, cols = np.nonzero(bad)
        raise NonFiniteMarginError(
            f"shard {shard} of {path}: {bad.sum()} non-finite margins "
            f"(first at mask {start + rows[0]}, input {cols[0]}); nothing was written",
            path,
        )
    return write_shard(store, shard, masks, values)
