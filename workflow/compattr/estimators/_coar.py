"""Least squares on the masks: COAR's minimum-norm fit, and gradient descent stopped early."""

from __future__ import annotations

from collections.abc import Iterator
from numbers import Integral, Real
from typing import Any

import torch
from sklearn.utils._param_validation import Interval
from torch import Tensor

from compattr.estimators._base import (
    DUAL_SLICE,
    VALIDATION_FRACTION,
    Block,
    DualFormModel,
    MomentModel,
    Moments,
    centred_intercept,
    column_slices,
    moment_std,
    standardized_gram,
)


class CoarRegressor(DualFormModel):
    """COAR's component model as its reference code fits it: minimum-norm least squares on standardised masks.

    The reference code (MadryLab/modelcomponents) fits ``margin ~ theta . mask + b``
    with datamodels' SAGA solver at one lambda of 0, on standardised masks with a
    fitted bias. With one lambda the solver's stopping test (a worse validation
    loss, checked only after 10 lambdas) never applies, so SAGA runs to
    convergence, and the model is refitted on the training plus validation masks.
    A gradient method from zero on least squares stays in the row space of the
    centred masks, so it converges to the minimum-norm solution, which is unique
    even when there are fewer masks than components.

    This class computes that limit directly, on all the masks it is given: with
    ``A`` the standardised centred masks, ``theta = pinv(A'A / n) A'(y - mean y) / n``,
    the pseudo-inverse taken on the eigenbasis of ``A'A / n`` (float64). Its rank
    is at most ``min(n - 1, C)``; eigenvalues beyond that rank, or below
    ``C * eps`` times the largest (rounding), are treated as zero. Nothing is
    held out: there is no setting to choose.

    With fewer masks than components the same solution is ``A' pinv(A A') (y - mean y)``
    (the dual form): memory grows with masks x components in the masks' own
    type (bool for a store's masks) plus masks x masks, never components x
    components, and the eigenvalues are those of ``A A'``, which has the same
    nonzero ones; both forms keep the same ones, so they agree up to rounding.

    Parameters
    ----------
    dual : {"auto", True, False}, default="auto"
        Solve in the masks x masks form (True), the components x components form
        (False), or the smaller of the two (``"auto"``: dual while the fit has
        fewer masks than components).
    device : str, default="cpu"

    Attributes
    ----------
    coef_ : ndarray of shape (n_inputs, n_components) or (n_components,)
    intercept_ : ndarray of shape (n_inputs,) or float
    rank_ : int
        Rank of the standardised centred masks (eigenvalues kept).
    dual_ : bool
        Whether the fit was solved in the masks x masks form.
    """

    _validates = False  # no validation split: every mask is fitted
    _parameter_constraints: dict[str, list[Any]] = {
        **DualFormModel._parameter_constraints,
    }

    def __init__(self, *, dual: str | bool = "auto", device: str = "cpu") -> None:
        self.dual = dual
        self.device = device

    def _memory_bytes(self, n_masks: int, n_components: int, n_inputs: int) -> int:
        coef = 3 * 8 * n_components * n_inputs
        dual = n_masks * n_components + 4 * 8 * n_masks**2 + 4 * 8 * min(DUAL_SLICE, n_masks * n_components)
        return coef + self._form_memory(n_masks, n_components, dual, 6 * 8 * n_components**2)

    def _fit_blocks(self, fit_blocks: Iterator[Block], validation_blocks: Iterator[Block], **fit_params: Any) -> None:
        rows, _ = self._gather(fit_blocks, validation_blocks)  # no validation rows: _check_rows refuses any
        if self.dual_:
            self._fit_dual(rows.X, rows.Y)
        else:
            self._fit_moments(rows.moments, None)

    def _fit_moments(self, total: Moments, val: None) -> None:
        x_std, gram, q = standardized_gram(total)
        e, V = torch.linalg.eigh(gram)  # ascending
        kept = _kept(e, min(total.n - 1, len(e)), len(e))
        inverse = torch.where(kept, 1 / e.clamp_min(1e-300), 0.0)
        theta = V @ (inverse[:, None] * (V.T @ q))  # (C, T) on standardised masks, raw outputs
        coef = theta / x_std[:, None]
        self.rank_ = int(kept.sum())
        self._set_linear(coef.T, centred_intercept(coef, total))

    def _fit_dual(self, X: Tensor, Y: Tensor) -> None:
        """Minimum-norm least squares from ``A A'`` (n, n), ``A`` the standardised centred masks, by column slices."""
        n, C = X.shape
        Y = Y.to(self.device, torch.float64)
        slices = column_slices(X)
        x_mean = torch.empty(C, dtype=torch.float64, device=self.device)
        x_std = torch.empty_like(x_mean)
        K = torch.zeros(n, n, dtype=torch.float64, device=self.device)
        for cols in slices:
            a = X[:, cols].to(self.device, torch.float64)
            total = a.sum(0)
            # As standardized_gram computes them: variance from sums, constant columns scaled by 1.
            x_mean[cols], x_std[cols] = total / n, moment_std(((a * a).sum(0) - total**2 / n) / n)
            a = (a - x_mean[cols]) / x_std[cols]
            K += a @ a.T
        e, U = torch.linalg.eigh(K)  # ascending; A A' has the nonzero eigenvalues of A'A
        kept = _kept(e, min(n - 1, C), C)
        inverse = torch.where(kept, 1 / e.clamp_min(1e-300), 0.0)
        v = U @ (inverse[:, None] * (U.T @ (Y - Y.mean(0))))  # (n, T): theta = A' v
        coef = torch.empty(C, Y.shape[1], dtype=torch.float64, device=self.device)
        for cols in slices:
            a = (X[:, cols].to(self.device, torch.float64) - x_mean[cols]) / x_std[cols]
            coef[cols] = (a.T @ v) / x_std[cols, None]
        self.rank_ = int(kept.sum())
        self._set_linear(coef.T, Y.mean(0) - coef.T @ x_mean)


def _kept(e: Tensor, rank: int, n_components: int) -> Tensor:
    """Which of the ascending eigenvalues ``e`` a minimum-norm fit keeps: the top ``rank``, above rounding.

    Rounding: ``n_components * eps`` times the largest, in either form (the primal's matrix is
    components x components), so that both keep the same eigenvalues.
    """
    kept = torch.zeros_like(e, dtype=torch.bool)
    if rank > 0:
        kept[len(e) - rank :] = True
    return kept & (e > n_components * torch.finfo(e.dtype).eps * e.max().clamp_min(1e-300))


class EarlyStoppedLeastSquaresRegressor(MomentModel):
    """Least squares by gradient descent from zero, stopped early per input on a validation split.

    Not COAR (which runs its solver to convergence: :class:`CoarRegressor`), but
    what an earlier version of this study called COAR: an implicitly regularised
    least-squares fit. On standardised masks and outputs of the fit rows, full-batch
    gradient descent (step ``lr / L``, ``L`` the largest eigenvalue of the
    standardised Gram matrix over ``n``) runs from zero; the validation MSE of
    every input is checked every ``check_every`` steps and each input keeps its
    best step count; the search stops when no input improved for ``patience``
    checks. The model is then refitted on all rows: the same number of steps
    from zero on all rows, standardised by all rows (Goodfellow et al., 2016,
    Algorithm 7.2). Gradient descent on a quadratic has a closed form in the
    eigenbasis of the Gram matrix (see :func:`_gradient_descent_filter`), so the
    iterates are computed from the masks' :class:`Moments`, without stepping.
    An input whose best step count is 0 keeps the zero model: it is marked in
    ``failed_``.

    Parameters
    ----------
    lr : float, default=1.0
        Step size relative to ``1 / L`` (values up to 2 are stable).
    max_iter : int, default=2000
        Largest number of gradient steps.
    check_every : int, default=10
        Steps between validation checks.
    patience : int, default=20
        Checks without improvement on any input before stopping.
    validation_fraction : float, default=0.2
        Fraction of the masks held out to choose the step count.
    device : str, default="cpu"

    Attributes
    ----------
    coef_ : ndarray of shape (n_inputs, n_components) or (n_components,)
    intercept_ : ndarray of shape (n_inputs,) or float
    n_iter_ : ndarray of shape (n_inputs,)
        Step count each input kept (chosen on validation, used in the refit).
    failed_ : ndarray of shape (n_inputs,)
        Whether the input kept step 0 (the zero model).
    """

    _parameter_constraints: dict[str, list[Any]] = {
        **MomentModel._parameter_constraints,
        "lr": [Interval(Real, 0, 2, closed="right")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "check_every": [Interval(Integral, 1, None, closed="left")],
        "patience": [Interval(Integral, 1, None, closed="left")],
        "validation_fraction": VALIDATION_FRACTION,
    }

    def __init__(
        self,
        *,
        lr: float = 1.0,
        max_iter: int = 2000,
        check_every: int = 10,
        patience: int = 20,
        validation_fraction: float = 0.2,
        device: str = "cpu",
    ) -> None:
        self.lr = lr
        self.max_iter = max_iter
        self.check_every = check_every
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.device = device

    def _descent(self, moments: Moments) -> tuple[Tensor, Tensor, float, Tensor, Tensor, Tensor]:
        """Eigenpairs, step and ``V' A'B / n`` of gradient descent on ``moments``' standardised rows, with the scales.

        Returns ``e, V, step, proj, x_std, y_std``.
        """
        x_std, gram, q = standardized_gram(moments)
        y_std = moment_std((moments.yy - moments.y**2 / moments.n) / moments.n)
        e, V = torch.linalg.eigh(gram)
        e = e.clamp_min(0)
        step = self.lr / max(float(e.max()) if len(e) else 1.0, 1e-12)
        return e, V, step, V.T @ (q / y_std[None, :]), x_std, y_std

    def _fit_moments(self, fit: Moments, val: Moments) -> None:
        # Gradient descent from 0 on (1/2n)|A theta - B|^2 (A, B standardised fit rows) reaches, after k steps,
        # theta_k = V diag(g_k(e)) V' A'B / n with g_k(e) = (1 - (1 - step e)^k) / e.
        e, V, step, proj, x_std, y_std = self._descent(fit)
        # Sums over the validation rows standardised with the fit rows' statistics, in the same eigenbasis.
        mean = fit.x_mean / x_std
        val_x = val.x / x_std
        val_y = (val.y - val.n * fit.y_mean) / y_std
        val_gram = val.xx / torch.outer(x_std, x_std) - torch.outer(val_x, mean) - torch.outer(mean, val_x)
        val_gram = V.T @ (val_gram + val.n * torch.outer(mean, mean)) @ V
        val_cross = (val.xy - torch.outer(val.x, fit.y_mean)) / torch.outer(x_std, y_std) - torch.outer(mean, val_y)
        val_cross = V.T @ val_cross
        val_yy = (val.yy - 2 * fit.y_mean * val.y + val.n * fit.y_mean**2) / y_std**2

        def validation_sse(u: Tensor) -> Tensor:
            return (u * (val_gram @ u)).sum(0) - 2 * (u * val_cross).sum(0) + val_yy

        T = proj.shape[1]
        best_iter = torch.zeros(T, dtype=torch.long, device=proj.device)
        best_loss = val_yy.clone()  # theta = 0
        stale = 0
        for it in range(self.check_every, self.max_iter + 1, self.check_every):
            loss = validation_sse(_gradient_descent_filter(e, step, torch.full((T,), it, device=proj.device)) * proj)
            better = loss < best_loss
            if better.any():
                best_loss = torch.where(better, loss, best_loss)
                best_iter = torch.where(better, it, best_iter)
                stale = 0
            else:
                stale += 1
                if stale >= self.patience:
                    break
        self.n_iter_ = best_iter.cpu().numpy()
        self.failed_ = self.n_iter_ == 0
        total = fit + val  # refit: the chosen number of steps on all rows
        e, V, step, proj, x_std, y_std = self._descent(total)
        coef = (V @ (_gradient_descent_filter(e, step, best_iter) * proj)) * (y_std[None, :] / x_std[:, None])
        self._set_linear(coef.T, centred_intercept(coef, total))


def _gradient_descent_filter(e: Tensor, step: float, k: Tensor) -> Tensor:
    """``(1 - (1 - step e)^k) / e`` (C, T) for eigenvalues ``e`` (C,) and step counts ``k`` (T,); ``step k`` at 0."""
    r = 1 - step * e[:, None]
    k = k[None, :].to(e.dtype)
    positive = r > 0
    # For 0 < r <= 1, 1 - r^k = -expm1(k log r) keeps its digits when step e is tiny.
    decayed = torch.where(positive, -torch.expm1(k * torch.log1p(-step * e[:, None])), 1 - r**k)
    return torch.where(e[:, None] > 0, decayed / e[:, None].clamp_min(1e-300), step * k)
