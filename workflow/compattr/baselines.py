"""Attribution baselines that need no random ablation sampling.

Both return a linear component model per input, ``margin ~ coef . mask + intercept``
(``mask`` True where a component is ablated), scored with the same LDS as the
fitted estimators:

- :func:`attribution_patching`: a first-order estimate of each component's
  ablation effect from one forward and one backward pass per input batch.
- :func:`leave_one_out`: the exact effect of ablating each component alone
  (one ablated forward pass per component).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from compattr.components import ComponentSet
from compattr.models import margins

__all__ = ["attribution_patching", "leave_one_out", "BASELINES"]

BASELINES = ("attribution_patching", "loo")


def attribution_patching(
    model: nn.Module, components: ComponentSet, images: Tensor, labels: Tensor, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """First-order ablation effects: ``coef[i, c] = -sum over positions of (df_i/dz_c) * z_c``.

    ``z_c`` is component ``c``'s output (before BatchNorm), ``f_i`` the margin of
    input ``i``; zeroing ``z_c`` changes ``f_i`` by ``coef[i, c]`` to first order.
    The intercept is the unablated margin.

    Returns
    -------
    coef : ndarray (n_inputs, n_components)
    intercept : ndarray (n_inputs,)
    """
    model.eval()
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
        effect = [-(outputs[name].grad * outputs[name]).flatten(2).sum(-1) for name in components.module_names]
        coefs.append(torch.cat(effect, dim=1).detach().cpu())
        intercepts.append(f.detach().cpu())
    model.zero_grad(set_to_none=True)
    return torch.cat(coefs).double().numpy(), torch.cat(intercepts).double().numpy()


def leave_one_out(evaluator, n_units: int, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Exact single-unit ablation effects: ``coef[i, c] = f_i(ablate c) - f_i(nothing ablated)``.

    ``evaluator`` maps bool masks (n_masks, n_units) to outputs (n_masks, n_inputs),
    like :class:`compattr.sampling.ComponentMarginEvaluator`.
    """
    base = np.asarray(evaluator(np.zeros((1, n_units), dtype=bool)), dtype=np.float64)[0]
    eye = np.eye(n_units, dtype=bool)
    single = np.concatenate([evaluator(eye[i : i + chunk]) for i in range(0, n_units, chunk)]).astype(np.float64)
    return (single - base).T, base
