"""What is measured: the output of a model per input, as one float per sample.

An output function takes whatever the model returns for a batch (a tensor, a tuple, a
Hugging Face ``ModelOutput``) and the batch's targets (None when the inputs have none),
and gives one float per sample: :data:`Output`. Every path that evaluates a model
(sampling, priors, leave-one-out, editing) passes it the model's return unchanged and
checks what it gives (:func:`check_outputs`); :func:`margins` is the default and
:data:`OUTPUTS` names the usual ones.

The named outputs read the logits (:func:`logits_of`). Logits ``(batch, classes)`` are a
classifier's. Logits ``(batch, positions, vocabulary)`` are a language model's: the output
is taken at the last position for targets ``(batch,)`` (the next token), or at a position
given per input for targets ``(batch, 2)`` of ``(position, token)`` rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Output",
    "OUTPUTS",
    "logits_of",
    "class_logits",
    "class_scores",
    "margins",
    "target_logit",
    "target_loss",
    "resolve_output",
    "check_outputs",
]

#: ``output(model_outputs, targets) -> (batch,)``: one float per sample of a batch.
Output = Callable[[Any, Tensor | None], Tensor]


def logits_of(model_outputs: Any) -> Tensor:
    """The logits in what a model returned: the tensor itself, a ``.logits`` attribute, or a tuple's first entry."""
    if isinstance(model_outputs, Tensor):
        return model_outputs
    logits = getattr(model_outputs, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(model_outputs, (tuple, list)) and model_outputs and isinstance(model_outputs[0], Tensor):
        return model_outputs[0]
    raise TypeError(
        f"the model returned a {type(model_outputs).__name__} without logits (a tensor, a .logits attribute or "
        "a tuple's first entry): pass output=a function that reads what it returns"
    )


def class_logits(model_outputs: Any) -> Tensor:
    """A classifier's logits ``(batch, classes)``; a language model's ``(batch, positions, vocab)`` at the last one."""
    logits = logits_of(model_outputs)
    return logits[:, -1] if logits.ndim == 3 else logits


def class_scores(model_outputs: Any, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Logits ``(batch, classes)`` (half precision as float32) and targets ``(batch,)``; sequences at a position."""
    logits = logits_of(model_outputs)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if _concrete(targets):
        _check_targets(tuple(logits.shape), targets)
    if logits.ndim == 3:
        if targets.ndim == 2:  # (position, token) per input
            positions, targets = targets[:, 0], targets[:, 1]
        else:
            positions = torch.full_like(targets, logits.shape[1] - 1)
        logits = logits[torch.arange(len(logits), device=logits.device), positions]
    elif logits.ndim != 2:
        raise ValueError(
            f"named outputs read logits (batch, classes) or (batch, positions, vocabulary), got shape "
            f"{tuple(logits.shape)}: pass output=a function of what the model returns"
        )
    return logits, targets


def _concrete(targets: Tensor) -> bool:
    """Whether targets can be checked here without cost: on the CPU (on a GPU it would wait for the pass),
    not compiled, and not inside a function transform such as ``vmap`` (whose values are not concrete)."""
    return (
        targets.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and not torch._C._functorch.is_functorch_wrapped_tensor(targets)
    )


def _check_targets(shape: tuple[int, ...], targets: Tensor) -> None:
    """Targets are class (token) indices below the logits' last size, and positions below a sequence's length."""
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise TypeError(f"targets must be integer class (or token) indices, got dtype {targets.dtype}")
    if targets.ndim == 2 and len(shape) == 3 and targets.shape[1] == 2:
        checks = [("positions", targets[:, 0], shape[1]), ("targets", targets[:, 1], shape[2])]
    elif targets.ndim == 1:
        checks = [("targets", targets, shape[-1])]
    else:
        raise ValueError(
            f"targets of shape {tuple(targets.shape)} do not fit logits {shape}: give (batch,) class indices, or "
            "(batch, 2) rows of (position, token) for a sequence's logits"
        )
    for what, values, size in checks:
        bad = (values < 0) | (values >= size)
        if bad.any():
            rows = torch.nonzero(bad).flatten()[:10].tolist()
            raise ValueError(
                f"{what} out of range: {int(bad.sum())} lie outside [0, {size}) (the logits are {shape}), at batch "
                f"rows {rows} with values {values[bad][:10].tolist()}"
            )


def margins(model_outputs: Any, labels: Tensor) -> Tensor:
    """Correct-class margin: the correct logit minus the largest other logit, per row (or at a position)."""
    logits, labels = class_scores(model_outputs, labels)
    correct = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return correct - others.max(1).values


def target_logit(model_outputs: Any, targets: Tensor) -> Tensor:
    """The target class's (or next token's) logit, per row."""
    logits, targets = class_scores(model_outputs, targets)
    return logits.gather(1, targets[:, None]).squeeze(1)


def target_loss(model_outputs: Any, targets: Tensor) -> Tensor:
    """The cross-entropy loss of the target class (or next token), per row."""
    logits, targets = class_scores(model_outputs, targets)
    return F.cross_entropy(logits, targets, reduction="none")


#: Named outputs; each takes the model's return and the inputs' target classes (or next tokens).
OUTPUTS: dict[str, Output] = {"margin": margins, "logit": target_logit, "loss": target_loss}


def resolve_output(output: str | Output) -> Output:
    """A named output of :data:`OUTPUTS`, or a callable as it is; anything else is an error naming the choices."""
    if isinstance(output, str):
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {sorted(OUTPUTS)} or a callable, got {output!r}")
        return OUTPUTS[output]
    if not callable(output):
        raise ValueError(f"output must be one of {sorted(OUTPUTS)} or a callable, got {output!r}")
    return output


def check_outputs(values: Any, n: int, output: Output) -> Tensor:
    """What ``output`` gave for a batch of ``n`` samples, a vector ``(n,)``; anything else is an error naming it."""
    name = getattr(output, "__name__", type(output).__name__)
    if not isinstance(values, Tensor):
        raise TypeError(f"output {name!r} returned a {type(values).__name__}, not a tensor of one float per sample")
    if values.shape != (n,):
        raise ValueError(
            f"output {name!r} returned shape {tuple(values.shape)} for a batch of {n} samples: it must give one "
            "float per sample, shape (batch,) (reduce a (batch, k) output to one number per sample)"
        )
    return values
