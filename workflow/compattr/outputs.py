"""What is measured: the output of a model per input, as one float per sample.

An output function takes what the model returns for a batch and the batch's targets
(None when the inputs have none) and gives one float per sample: :data:`Output`.
Every path that evaluates a model (sampling, priors, leave-one-out, editing) takes one,
:func:`margins` by default; :data:`OUTPUTS` names the usual ones.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

__all__ = ["Output", "OUTPUTS", "margins", "target_logit", "target_loss", "resolve_output"]

#: ``output(model_outputs, targets) -> (batch,)``: one float per sample of a batch.
Output = Callable[[Tensor, Tensor | None], Tensor]


def margins(logits: Tensor, labels: Tensor) -> Tensor:
    """Correct-class margin: the correct logit minus the largest other logit, per row."""
    correct = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return correct - others.max(1).values


def target_logit(logits: Tensor, targets: Tensor) -> Tensor:
    """The target class's logit, per row."""
    return logits.gather(1, targets[:, None]).squeeze(1)


def target_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """The cross-entropy loss of the target class, per row."""
    return F.cross_entropy(logits, targets, reduction="none")


#: Named outputs; each takes the model's logits and the inputs' target classes.
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
