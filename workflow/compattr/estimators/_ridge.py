"""Ridge regression on the masks, its penalty chosen per input on a validation split."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from compattr.estimators._base import (
    DUAL_SLICE,
    VALIDATION_FRACTION,
    Block,
    DualFormModel,
    Moments,
    centred_intercept,
    column_slices,
)

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


class RidgeCVRegressor(DualFormModel):
    """Ridge regression with the penalty chosen per input on a validation split.

    One eigendecomposition of the fit rows' centred Gram matrix gives the
    validation predictions of every penalty for every input; each input keeps
    the penalty with the lowest validation MSE, and the model is refitted on all
    rows (one more eigendecomposition) with that penalty. With fewer masks than
    components the same fits come from the masks x masks matrix ``X X'`` of the
    centred masks (the dual form, ``coef = X' (X X' + a)^-1 y``), which has the
    Gram matrix's nonzero eigenvalues and its trace: memory grows with masks x
    components, never components x components.

    Parameters
    ----------
    alphas : sequence of float, default=logspace(-3, 3, 25)
        Penalties relative to the mean eigenvalue of the Gram matrix (so the
        grid does not depend on the number of masks or on the ablation rate).
    validation_fraction : float, default=0.2
    dual : {"auto", True, False}, default="auto"
        Solve in the masks x masks form (True), the components x components form
        (False), or the smaller (``"auto"``: dual while all masks are fewer than
        the components).
    device : str, default="cpu"

    Attributes
    ----------
    coef_, intercept_
    alpha_ : ndarray of shape (n_inputs,)
        Chosen penalty of each input, in the relative units of ``alphas``.
    dual_ : bool
        Whether the fit was solved in the masks x masks form.
    """

    _parameter_constraints: dict[str, list[Any]] = {
        **DualFormModel._parameter_constraints,
        "alphas": ["array-like", None],
        "validation_fraction": VALIDATION_FRACTION,
    }

    def __init__(
        self, *, alphas: Any = None, validation_fraction: float = 0.2, dual: str | bool = "auto", device: str = "cpu"
    ) -> None:
        self.alphas = alphas
        self.validation_fraction = validation_fraction
        self.dual = dual
        self.device = device

    def _memory_bytes(self, n_masks: int, n_components: int, n_inputs: int) -> int:
        coef = 4 * 8 * n_components * n_inputs
        dual = 2 * n_masks * n_components + 5 * 8 * n_masks**2 + 4 * 8 * min(DUAL_SLICE, n_masks * n_components)
        return coef + self._form_memory(n_masks, n_components, dual, 9 * 8 * n_components**2)

    def _fit_blocks(self, fit_blocks: Iterator[Block], validation_blocks: Iterator[Block], **fit_params: Any) -> None:
        fit, val = self._gather(fit_blocks, validation_blocks)
        if self.dual_:
            self._fit_dual(fit.X, fit.Y.to(self.device, torch.float64), val.X, val.Y.to(self.device, torch.float64))
        else:
            self._fit_moments(fit.moments, val.moments)

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

    def _fit_dual(self, X: Tensor, Y: Tensor, X_val: Tensor, Y_val: Tensor) -> None:
        """The same choice and refit as :meth:`_fit_moments`, from the masks x masks kernels of the centred masks."""
        alphas = ridge_alphas(self.alphas, self.device)
        n_components = X.shape[1]
        mean, K, K_val = self._kernels(X, X_val)
        s, U = torch.linalg.eigh(K)
        s = s.clamp_min(0)
        scale = (s.sum() / n_components).clamp_min(1e-12)  # the Gram matrix's mean eigenvalue (the rest are 0)
        y_mean = Y.mean(0)
        proj_y = U.T @ (Y - y_mean)
        losses = [(((K_val @ (U @ (proj_y / (s + a * scale)[:, None]))) + y_mean - Y_val) ** 2).sum(0) for a in alphas]
        choice = torch.stack(losses).argmin(0)  # (T,)
        X, Y = torch.cat([X, X_val]), torch.cat([Y, Y_val])  # refit on all rows
        mean, K, _ = self._kernels(X)
        s, U = torch.linalg.eigh(K)
        s = s.clamp_min(0)
        scale = (s.sum() / n_components).clamp_min(1e-12)
        y_mean = Y.mean(0)
        proj_y = U.T @ (Y - y_mean)
        weights = torch.empty_like(proj_y)  # (n, T): coef = X_centred' weights
        for k in choice.unique():
            cols = choice == k
            weights[:, cols] = U @ (proj_y[:, cols] / (s + alphas[k] * scale)[:, None])
        coef = torch.empty(n_components, Y.shape[1], dtype=torch.float64, device=self.device)
        for cols in column_slices(X):
            coef[cols] = (X[:, cols].to(self.device, torch.float64) - mean[cols]).T @ weights
        self.alpha_ = alphas[choice].cpu().numpy()
        self._set_linear(coef.T, y_mean - coef.T @ mean)

    def _kernels(self, X: Tensor, X_val: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """Column means of ``X``, ``Xc Xc'`` and ``(X_val - mean) Xc'`` (Xc: ``X`` centred), by column slices."""
        n = len(X)
        slices = column_slices(X)
        mean = torch.cat([X[:, cols].to(self.device, torch.float64).sum(0) for cols in slices]) / n
        K = torch.zeros(n, n, dtype=torch.float64, device=self.device)
        K_val = None if X_val is None else torch.zeros(len(X_val), n, dtype=torch.float64, device=self.device)
        for cols in slices:
            a = X[:, cols].to(self.device, torch.float64) - mean[cols]
            K += a @ a.T
            if X_val is not None:
                K_val += (X_val[:, cols].to(self.device, torch.float64) - mean[cols]) @ a.T
        return mean, K, K_val
