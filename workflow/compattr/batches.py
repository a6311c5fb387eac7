"""Inputs as users have them: a tensor, or a mapping of tensors (a dict, a Hugging Face ``BatchEncoding``).

A *batch* is either a tensor batched on its first axis, or a mapping from names to tensors
that share their first axis (``input_ids``, ``attention_mask``, ...). The model is called
with the tensor, or with the mapping's entries as keyword arguments. Every path that runs a
model on inputs (sampling, priors, leave-one-out, editing) goes through these functions, so
they all take the same inputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "Batch",
    "check_batch",
    "batch_len",
    "take",
    "repeat",
    "to_device",
    "nbytes",
    "pin_memory",
    "call",
    "concat",
    "labelled_batches",
]

#: A tensor batched on its first axis, or a mapping of such tensors.
Batch = Tensor | Mapping[str, Tensor]


def check_batch(inputs: Any) -> Batch:
    """``inputs`` as a batch: a tensor, or a dict of tensors of one first-axis length; else an error naming why."""
    if isinstance(inputs, Tensor):
        if inputs.ndim == 0:
            raise ValueError("inputs must have a batch axis, got a 0-dimensional tensor")
        return inputs
    if isinstance(inputs, Mapping):
        batch = {}
        for key, value in inputs.items():
            if not isinstance(value, Tensor):
                raise TypeError(f"inputs[{key!r}] is a {type(value).__name__}: every entry must be a tensor")
            if value.ndim == 0:
                raise ValueError(f"inputs[{key!r}] has no batch axis (a 0-dimensional tensor)")
            batch[key] = value
        if not batch:
            raise ValueError("inputs is an empty mapping")
        lengths = {key: len(value) for key, value in batch.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"the inputs' tensors differ in their first axis (the batch): {lengths}")
        return batch
    raise TypeError(f"inputs must be a tensor or a mapping of tensors (e.g. a tokenizer's output), got {type(inputs)}")


def batch_len(batch: Batch) -> int:
    """Number of inputs of ``batch``."""
    return len(batch) if isinstance(batch, Tensor) else len(next(iter(batch.values())))


def take(batch: Batch, index: slice | Tensor) -> Batch:
    """The inputs of ``batch`` at ``index`` (a slice or an index tensor)."""
    if isinstance(batch, Tensor):
        return batch[index]
    return {key: value[index] for key, value in batch.items()}


def repeat(batch: Batch, n: int) -> Batch:
    """``batch`` repeated ``n`` times along the first axis (input ``j`` of copy ``i`` at ``i * len + j``)."""
    if isinstance(batch, Tensor):
        return batch.repeat(n, *(1,) * (batch.ndim - 1))
    return {key: value.repeat(n, *(1,) * (value.ndim - 1)) for key, value in batch.items()}


def to_device(batch: Batch, device: torch.device | str, **kwargs: Any) -> Batch:
    """``batch`` on ``device`` (``kwargs`` as :meth:`torch.Tensor.to` takes them)."""
    if isinstance(batch, Tensor):
        return batch.to(device, **kwargs)
    return {key: value.to(device, **kwargs) for key, value in batch.items()}


def nbytes(batch: Batch) -> int:
    """Bytes the batch's tensors take."""
    tensors = [batch] if isinstance(batch, Tensor) else batch.values()
    return sum(t.element_size() * t.numel() for t in tensors)


def pin_memory(batch: Batch) -> Batch:
    """``batch`` in pinned host memory (copies to a CUDA device can then run asynchronously)."""
    if isinstance(batch, Tensor):
        return batch.pin_memory()
    return {key: value.pin_memory() for key, value in batch.items()}


def call(model: nn.Module, batch: Batch) -> Any:
    """``model(batch)`` for a tensor, ``model(**batch)`` for a mapping: whatever the model returns."""
    return model(batch) if isinstance(batch, Tensor) else model(**batch)


def concat(batches: Iterable[Batch]) -> Batch:
    """Batches of one kind (tensors, or mappings with the same keys) joined along the first axis, on the CPU."""
    batches = [check_batch(b) for b in batches]
    if not batches:
        raise ValueError("inputs gave no batches")
    if all(isinstance(b, Tensor) for b in batches):
        return torch.cat([b.cpu() for b in batches])
    if any(isinstance(b, Tensor) for b in batches) or len({tuple(sorted(b)) for b in batches}) != 1:
        raise ValueError("the batches differ in kind or keys: give tensors, or mappings with the same keys")
    return {key: torch.cat([b[key].cpu() for b in batches]) for key in batches[0]}


def labelled_batches(images: Batch, labels: Tensor | None, batch_size: int, device: torch.device):
    """``(inputs, targets)`` batches of ``batch_size`` on ``device`` (targets None without labels)."""
    for start in range(0, batch_len(images), batch_size):
        y = None if labels is None else labels[start : start + batch_size].to(device)
        yield to_device(take(images, slice(start, start + batch_size)), device), y
