"""Lasso on the masks by batched FISTA, its penalty chosen per input on a validation split."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from numbers import Integral, Real
from typing import Any

import torch
from sklearn.utils._param_validation import Interval
from torch import Tensor

from compattr.estimators._base import (
    VALIDATION_FRACTION,
    Block,
    DualFormModel,
    RunningBest,
    centred_intercept,
)
from compattr.estimators._problem import LeastSquares, least_squares

#: Constraints of a lasso penalty path and of its FISTA runs (shared with the lasso-corrected prior).
PATH_CONSTRAINTS: dict[str, list[Any]] = {
    "n_alphas": [Interval(Integral, 1, None, closed="left")],
    "min_ratio": [Interval(Real, 0, 1, closed="right")],
    "max_iter": [Interval(Integral, 1, None, closed="left")],
    "tol": [Interval(Real, 0, None, closed="neither")],
}


def alpha_max(q: Tensor) -> Tensor:
    """scikit-learn's smallest penalty that zeroes every coefficient, per output, from ``q = X'y / n`` (C, T)."""
    return q.abs().amax(0).clamp_min(1e-12)


def fista_dtype(tol: float) -> torch.dtype:
    """FISTA's step precision: float32 unless the tolerance asks for more digits than it keeps."""
    return torch.float32 if tol >= 1e-6 else torch.float64


#: FISTA iterations between convergence checks (each check waits for the device: one sync).
FISTA_CHECK_EVERY = 10


def momentum(t: float) -> tuple[float, float]:
    """FISTA's next ``t`` and the extrapolation weight ``1 + (t - 1) / t_next`` of the new iterate over the old."""
    t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
    return t_next, 1 + (t - 1) / t_next


def fista(
    prox_step: Callable[[list[Tensor], list[Tensor]], list[Tensor]],
    start: list[Tensor],
    columns: list[Tensor],
    *,
    max_iter: int,
    tol: float,
) -> tuple[list[Tensor], int]:
    """Batched FISTA over independent columns (the last dimension of every tensor), each stopping on its own.

    ``prox_step(Z, columns)`` is one proximal gradient step from the extrapolated iterates
    ``Z``, given the per-column constants ``columns`` (penalties, cross products, ...) of the
    columns still running. Every ``FISTA_CHECK_EVERY`` steps, a column whose largest change in
    that step is at most ``tol`` times the largest coefficient of all columns (or ``tol``) stops
    and leaves the batch: later steps cost only the others. Returns every column's final
    iterates (from ``start``) and the step at which the last one stopped.
    """
    final = [x.clone() for x in start]
    X, Z, constants = list(start), [x.clone() for x in start], list(columns)
    active = torch.arange(start[0].shape[-1], device=start[0].device)
    t = 1.0
    for it in range(1, max_iter + 1):
        step = prox_step(Z, constants)
        t, weight = momentum(t)
        Z = [torch.lerp(x, new, weight) for x, new in zip(X, step, strict=True)]
        if it % FISTA_CHECK_EVERY == 0 or it == max_iter:
            changes = [(new - x).abs().reshape(-1, new.shape[-1]).amax(0) for x, new in zip(X, step, strict=True)]
            for out, new in zip(final, step, strict=True):
                out[..., active] = new
            size = torch.stack([out.abs().amax() for out in final]).amax().clamp_min(1.0)
            going = torch.stack(changes).amax(0) > tol * size
            if it == max_iter or not bool(going.any()):
                return final, it
            if not bool(going.all()):
                active = active[going]
                step, Z, constants = ([x[..., going] for x in xs] for xs in (step, Z, constants))
        X = step
    return final, max_iter


def lasso_fista(
    problem: LeastSquares,
    penalty: Tensor,
    init: Tensor | None = None,
    *,
    max_iter: int = 10_000,
    tol: float = 1e-8,
    lipschitz: float | None = None,
) -> tuple[Tensor, int]:
    """Batched lasso by FISTA on one least-squares problem, in ``penalty``'s dtype.

    Minimises ``w' G w / 2 - w' q + penalty_t |w|_1`` for every column ``t``,
    i.e. scikit-learn's ``(1 / 2n) |y - X w|^2 + alpha |w|_1`` with ``G = X'X / n``
    and ``q = X'y / n`` on centred data, in either form of the problem (``G``
    held, or products through the masks). A step is one product with ``G`` and
    three elementwise passes; each column stops on its own (see :func:`fista`).

    Parameters
    ----------
    problem : LeastSquares
    penalty : Tensor (T,)
    init : Tensor (C, T), optional
        Warm start.
    max_iter, tol
        A column stops at the first check where its largest coefficient change in that
        step is below ``tol`` times the largest coefficient of all (or ``tol`` when all are zero).
    lipschitz : float, optional
        The largest eigenvalue of ``G``, when the caller has it (a path reuses it).

    Returns
    -------
    W : Tensor (C, T)
    n_iter : int
        Steps of the last column to stop.
    """
    dtype = penalty.dtype
    L = problem.lipschitz(dtype) if lipschitz is None else lipschitz
    q = problem.q(dtype)
    W = torch.zeros_like(q) if init is None else init.to(dtype, copy=True)

    def prox_step(Z: list[Tensor], constants: list[Tensor]) -> list[Tensor]:
        shift, threshold, lower = constants
        step = problem.descent(Z[0], shift, 1 / L)
        return [step - step.clamp(lower, threshold)]  # soft thresholding

    threshold = penalty / L
    (W,), n_iter = fista(prox_step, [W], [q / L, threshold, -threshold], max_iter=max_iter, tol=tol)
    return W, n_iter


class LassoCVRegressor(DualFormModel):
    """Lasso with the penalty chosen per input on a validation split, by batched FISTA.

    Every input's penalty path runs at once on the shared Gram matrix of the
    centred masks, from ``alpha_max`` (all coefficients zero) down to
    ``alpha_max * min_ratio`` with warm starts; each input keeps the ratio with
    the lowest validation MSE and is refitted on all rows at that ratio of its
    own ``alpha_max``. The objective is scikit-learn's ``Lasso``. With fewer
    masks than components the steps multiply by the centred masks, ``X'(X W)``,
    and never form the Gram matrix: memory grows with masks x components.

    Parameters
    ----------
    n_alphas : int, default=20
    min_ratio : float, default=1e-3
    max_iter : int, default=1000
        FISTA steps per penalty.
    tol : float, default=1e-4
        Relative coefficient change at which FISTA stops. FISTA runs in float32
        for ``tol >= 1e-6``, in float64 below.
    validation_fraction : float, default=0.2
    dual : {"auto", True, False}, default="auto"
        Step through the masks (True), through the Gram matrix (False), or the
        cheaper (``"auto"``: through the masks while all masks are fewer than the
        components).
    device : str, default="cpu"

    Attributes
    ----------
    coef_, intercept_
    alpha_ : ndarray of shape (n_inputs,)
        Chosen penalty of each input, in scikit-learn's units for the refit.
    n_iter_ : int
        FISTA steps of the refit.
    dual_ : bool
        Whether the steps went through the masks.
    """

    _parameter_constraints: dict[str, list[Any]] = {
        **DualFormModel._parameter_constraints,
        **PATH_CONSTRAINTS,
        "validation_fraction": VALIDATION_FRACTION,
    }

    def __init__(
        self,
        *,
        n_alphas: int = 20,
        min_ratio: float = 1e-3,
        max_iter: int = 1000,
        tol: float = 1e-4,
        validation_fraction: float = 0.2,
        dual: str | bool = "auto",
        device: str = "cpu",
    ) -> None:
        self.n_alphas = n_alphas
        self.min_ratio = min_ratio
        self.max_iter = max_iter
        self.tol = tol
        self.validation_fraction = validation_fraction
        self.dual = dual
        self.device = device

    def _memory_bytes(self, n_masks: int, n_components: int, n_inputs: int) -> int:
        step = fista_dtype(self.tol).itemsize
        coef = 8 * 8 * n_components * n_inputs  # iterates, the refit's start, their float64 copies
        dual = 2 * n_masks * n_components + step * n_masks * n_components
        return coef + self._form_memory(n_masks, n_components, dual, (4 * 8 + step) * n_components**2)

    def _fit_blocks(self, fit_blocks: Iterator[Block], validation_blocks: Iterator[Block], **fit_params: Any) -> None:
        fit_rows, val_rows = self._gather(fit_blocks, validation_blocks)
        fit, val = least_squares(fit_rows, self.device), least_squares(val_rows, self.device)
        ratios = torch.logspace(0, math.log10(self.min_ratio), self.n_alphas, dtype=torch.float64, device=self.device)
        dtype = fista_dtype(self.tol)
        largest = alpha_max(fit.q(dtype))
        L = fit.lipschitz(dtype)
        W, best = None, RunningBest()
        for k, ratio in enumerate(ratios.to(dtype)):  # each input keeps its best ratio and its solution
            W, _ = lasso_fista(fit, ratio * largest, W, max_iter=self.max_iter, tol=self.tol, lipschitz=L)
            coef = W.double()
            best.update(val.sse(coef, centred_intercept(coef, fit)), k, W)
        choice, (init,) = best.index, best.states  # init: the refit's warm start (C, T)
        total = fit + val
        del fit, val
        penalty = ratios[choice] * alpha_max(total.q(dtype)).double()
        W, self.n_iter_ = lasso_fista(total, penalty.to(dtype), init, max_iter=self.max_iter, tol=self.tol)
        self.alpha_ = penalty.cpu().numpy()
        W = W.double()
        self._set_linear(W.T, centred_intercept(W, total))
