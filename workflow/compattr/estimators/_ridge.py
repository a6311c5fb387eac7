"""Ridge regression on the masks, its penalty chosen per input on a validation split."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from compattr.estimators._base import VALIDATION_FRACTION, MomentModel, Moments, centred_intercept

#: The default grid of relative ridge penalties.
DEFAULT_ALPHAS = np.logspace(-3, 3, 25)


def ridge_alphas(alphas: Any, device: str | torch.device) -> Tensor:
    """The relative penalties ``alphas`` (None: :data:`DEFAULT_ALPHAS`) as a float64 tensor; all must be positive."""
    values = DEFAULT_ALPHAS if alphas is None else np.asarray(alphas, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0 or (values <= 0).any():
        raise ValueError(f"alphas must be a non-empty list of positive penalties, got {alphas!r}")
    return torch.as_tensor(values, dtype=torch.float64, device=device)


def gram_eigh(moments: Moments) -> tuple[Tensor, Tensor]:
    """Eigenvalues (clamped at 0, ascending) and eigenvectors of the centred Gram matrix of ``moments``."""
    e, V = torch.linalg.eigh(moments.gram())
    return e.clamp_min(0), V


class RidgeCVRegressor(MomentModel):
    """Ridge regression with the penalty chosen per input on a validation split.

    One eigendecomposition of the fit rows' centred Gram matrix gives the
    validation predictions of every penalty for every input; each input keeps
    the penalty with the lowest validation MSE, and the model is refitted on all
    rows (one more eigendecomposition) with that penalty.

    Parameters
    ----------
    alphas : sequence of float, default=logspace(-3, 3, 25)
        Penalties relative to the mean eigenvalue of the Gram matrix (so the
        grid does not depend on the number of masks or on the ablation rate).
    validation_fraction : float, default=0.2
    device : str, default="cpu"

    Attributes
    ----------
    coef_, intercept_
    alpha_ : ndarray of shape (n_inputs,)
        Chosen penalty of each input, in the relative units of ``alphas``.
    """

    _parameter_constraints: dict[str, list[Any]] = {
        **MomentModel._parameter_constraints,
        "alphas": ["array-like", None],
        "validation_fraction": VALIDATION_FRACTION,
    }

    def __init__(self, *, alphas: Any = None, validation_fraction: float = 0.2, device: str = "cpu") -> None:
        self.alphas = alphas
        self.validation_fraction = validation_fraction
        self.device = device

    def _fit_moments(self, fit: Moments, val: Moments) -> None:
        alphas = ridge_alphas(self.alphas, self.device)
        e, V = gram_eigh(fit)
        scale = e.mean().clamp_min(1e-12)
        proj_y = V.T @ fit.cross()  # (C, T)
        losses = []
        for a in alphas:
            coef = V @ (proj_y / (e + a * scale)[:, None])
            losses.append(val.sse(coef, centred_intercept(coef, fit)))
        choice = torch.stack(losses).argmin(0)  # (T,)
        total = fit + val
        e, V = gram_eigh(total)
        scale = e.mean().clamp_min(1e-12)
        proj_y = V.T @ total.cross()
        coef = torch.empty_like(proj_y)
        for k in choice.unique():
            cols = choice == k
            coef[:, cols] = V @ (proj_y[:, cols] / (e + alphas[k] * scale)[:, None])
        self.alpha_ = alphas[choice].cpu().numpy()
        self._set_linear(coef.T, centred_intercept(coef, total))
