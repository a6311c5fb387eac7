"""Regression with a prior attribution: the prior rescaled, plus a ridge or lasso correction."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from sklearn.utils._param_validation import StrOptions
from torch import Tensor

from compattr.estimators._base import (
    DUAL_SLICE,
    VALIDATION_FRACTION,
    Block,
    DualFormModel,
    RunningBest,
    centred_intercept,
    check_priors,
)
from compattr.estimators._lasso import PATH_CONSTRAINTS, fista, fista_dtype
from compattr.estimators._problem import LeastSquares, least_squares
from compattr.estimators._ridge import ridge_alphas


class GradientPriorRegressor(DualFormModel):
    """Regression on the masks with a prior: ``theta_z = s_z * a_z + delta_z``.

    ``a_z`` is a prior attribution of input ``z`` (in the workflow, attribution
    patching: one forward and one backward pass, no ablations), passed to
    :meth:`fit`. The scale ``s_z`` is unpenalised least squares; the correction
    ``delta_z`` is shrunk toward zero by a ridge (``correction="ridge"``) or
    lasso (``"lasso"``) penalty chosen per input on the validation split, then
    the model is refitted on all rows. With a huge penalty the model is the
    rescaled prior; with no penalty it is least squares, whatever the prior.

    Ridge: for a penalty ``lam`` the correction is profiled out in closed form,
    ``s(lam) = sum_k b_k p_k / (e_k + lam) / sum_k e_k b_k^2 / (e_k + lam)`` with
    ``e, V`` the eigenpairs of the centred Gram matrix ``X'X``, ``b = V'a`` and
    ``p = V'X'y``, and ``delta = V diag(1 / (e + lam)) (p - s e * b)``: one
    eigendecomposition serves every input and penalty, as in
    :class:`RidgeCVRegressor` (the grid also holds ``lam = inf``, the prior alone,
    rescaled). Lasso: ``s`` and ``delta`` are solved jointly by batched FISTA on
    the penalty path (``s`` unpenalised), with warm starts.

    ``prior`` may also hold several candidate priors (n_priors, n_inputs,
    n_components), e.g. first-order priors taken at different points: each
    input then chooses its prior together with its penalty, by the lowest
    validation error over every (prior, penalty) pair, and is refitted on all
    rows with that pair.

    Parameters
    ----------
    correction : {"ridge", "lasso"}, default="ridge"
    alphas : sequence of float, default=logspace(-3, 3, 25)
        Ridge penalties relative to the mean eigenvalue of the Gram matrix.
    n_alphas, min_ratio, max_iter, tol
        Lasso path, as in :class:`LassoCVRegressor` (``alpha_max`` is that of
        the residual of the rescaled prior).
    validation_fraction : float, default=0.2
    dual : {"auto", True, False}, default="auto"
        Work through the masks (True: the ridge from the masks x masks matrix,
        the lasso's steps by products with the masks), through the Gram matrix
        (False), or the smaller (``"auto"``: through the masks while all masks
        are fewer than the components).
    device : str, default="cpu"

    Attributes
    ----------
    coef_, intercept_
    alpha_ : ndarray of shape (n_inputs,)
        Chosen penalty: ridge, in the relative units of ``alphas`` (``inf``: the
        rescaled prior alone); lasso, as a ratio of the input's ``alpha_max``.
    prior_index_ : ndarray of shape (n_inputs,)
        Which candidate prior each input chose (0 with a single prior).
    scale_ : ndarray of shape (n_inputs,)
        Fitted scale ``s`` of each input's prior.
    n_iter_ : int
        FISTA steps of the refit (lasso correction only; the ridge one is in closed form).
    dual_ : bool
        Whether the fit worked through the masks.
    """

    uses_prior = True
    _parameter_constraints: dict[str, list[Any]] = {
        **DualFormModel._parameter_constraints,
        **PATH_CONSTRAINTS,
        "correction": [StrOptions({"ridge", "lasso"})],
        "alphas": ["array-like", None],
        "validation_fraction": VALIDATION_FRACTION,
    }

    def __init__(
        self,
        *,
        correction: str = "ridge",
        alphas: Any = None,
        n_alphas: int = 20,
        min_ratio: float = 1e-3,
        max_iter: int = 1000,
        tol: float = 1e-4,
        validation_fraction: float = 0.2,
        dual: str | bool = "auto",
        device: str = "cpu",
    ) -> None:
        self.correction = correction
        self.alphas = alphas
        self.n_alphas = n_alphas
        self.min_ratio = min_ratio
        self.max_iter = max_iter
        self.tol = tol
        self.validation_fraction = validation_fraction
        self.dual = dual
        self.device = device

    def _memory_bytes(self, n_masks: int, n_components: int, n_inputs: int) -> int:
        """For up to three candidate priors."""
        coef = (3 * 2 + 20) * 8 * n_components * n_inputs  # candidates, the path's states, the refit
        step = fista_dtype(self.tol).itemsize if self.correction == "lasso" else 0
        dual = (
            (2 + step) * n_masks * n_components + 5 * 8 * n_masks**2 + 4 * 8 * min(DUAL_SLICE, n_masks * n_components)
        )
        return coef + self._form_memory(n_masks, n_components, dual, (9 * 8 + step) * n_components**2)

    def fit(self, X: Any, Y: Any, prior: Any = None) -> GradientPriorRegressor:
        """Fit ``s`` and the correction of every input; ``prior`` is (n_inputs, n_components) or (n_priors, ...)."""
        return super().fit(X, Y, prior=prior)

    def _fit_blocks(
        self, fit_blocks: Iterator[Block], validation_blocks: Iterator[Block], prior: Any = None, **fit_params: Any
    ) -> None:
        fit_rows, val_rows = self._gather(fit_blocks, validation_blocks)
        fit, val = least_squares(fit_rows, self.device), least_squares(val_rows, self.device)
        T, C = len(fit.y_mean), len(fit.x_mean)
        candidates = check_priors(prior, T, C, self.device).transpose(1, 2)  # (P, C, T)
        total = fit + val
        if self.correction == "ridge":
            grid = [*ridge_alphas(self.alphas, self.device).tolist(), math.inf]
        else:
            grid = torch.logspace(0, math.log10(self.min_ratio), self.n_alphas, dtype=torch.float64).tolist()
        # Every prior's whole penalty path, scored on validation as it comes: each input keeps its best
        # (prior, penalty) pair so far (the first of equals) and, for the lasso, that pair's state.
        best = RunningBest()
        if self.correction == "ridge":
            for index, a in enumerate(candidates):
                for k, (theta, _) in enumerate(prior_ridge_path(fit, a, grid)):
                    best.update(val.sse(theta, centred_intercept(theta, fit)), index * len(grid) + k)
        else:  # every candidate's path in one batch of FISTA runs
            path = prior_lasso_path(fit, candidates, grid, max_iter=self.max_iter, tol=self.tol)
            for k, (W, s_unit, _) in enumerate(path):
                for index, a in enumerate(candidates):
                    theta, _ = _lasso_coef(a, W[index], s_unit[index])
                    sse = val.sse(theta, centred_intercept(theta, fit))
                    best.update(sse, index * len(grid) + k, W[index], s_unit[index])
        which, choice = best.index // len(grid), best.index % len(grid)
        chosen = torch.as_tensor(grid, dtype=torch.float64)[choice.cpu()]
        columns = torch.arange(T, device=best.index.device)
        a = candidates[which, :, columns].T  # (C, T): each input's chosen prior
        if self.correction == "ridge":  # closed form on all rows, once per penalty chosen by some input
            unique, inverse = choice.unique(return_inverse=True)
            refits = list(prior_ridge_path(total, a, [grid[i] for i in unique.tolist()]))
            theta = torch.stack([theta for theta, _ in refits])[inverse, :, columns].T
            s = torch.stack([s for _, s in refits])[inverse, columns]
        else:  # one FISTA run on all rows, each input at its ratio, warm-started from its path solution
            ratio, init = [chosen.to(a.device)], tuple(best.states)
            ((W, s_unit, self.n_iter_),) = prior_lasso_path(
                total, a, ratio, max_iter=self.max_iter, tol=self.tol, init=init
            )
            theta, s = _lasso_coef(a, W, s_unit)
        self.alpha_ = chosen.numpy()
        self.prior_index_ = which.cpu().numpy()
        self.scale_ = s.cpu().numpy()
        self._set_linear(theta.T, centred_intercept(theta, total))


def prior_ridge_path(problem: LeastSquares, a: Tensor, grid: list[float]) -> Iterator[tuple[Tensor, Tensor]]:
    """The ridge-corrected prior ``a`` (C, T) on ``problem``, in closed form (see :class:`GradientPriorRegressor`).

    Yields ``(theta (C, T), s (T,))`` for each relative penalty of ``grid`` (``inf``: the prior alone).
    """
    basis = problem.eigenbasis()
    e = basis.e
    scale = (e.sum() / len(a)).clamp_min(1e-12)  # the Gram matrix's mean eigenvalue (those left out are 0)
    p = basis.project(problem.cross())  # (k, T)
    b = basis.project(a)
    for lam in grid:
        w = torch.zeros_like(e) if math.isinf(lam) else 1 / (e + lam * scale)
        if math.isinf(lam):  # the limit: s by least squares on the prior's direction, no correction
            num, den = (b * p).sum(0), (e[:, None] * b**2).sum(0)
        else:
            num, den = (b * p * w[:, None]).sum(0), (e[:, None] * b**2 * w[:, None]).sum(0)
        s = torch.where(den > 1e-12 * den.max().clamp_min(1e-300), num / den.clamp_min(1e-300), 0.0)
        theta = s * a + basis.expand((p - s * e[:, None] * b) * w[:, None])
        yield theta, s


def prior_lasso_path(
    problem: LeastSquares,
    a: Tensor,
    ratios: list[Any],
    *,
    max_iter: int,
    tol: float,
    init: tuple[Tensor, Tensor] | None = None,
) -> Iterator[tuple[Tensor, Tensor, int]]:
    """Joint FISTA on ``(delta, s)`` at each ratio of each input's ``alpha_max`` (a float, or a (T,) tensor).

    ``a``: the prior (C, T), or candidate priors (P, C, T), all solved in one batch. Warm starts
    run down the path, from ``init`` when given (else the rescaled prior alone). Yields
    ``(delta, s, n_iter)`` per ratio, ``delta`` shaped as ``a`` and ``s`` (T,) or (P, T) along
    the unit prior direction, in float64; the steps run in float32 unless ``tol`` asks for more
    digits than it keeps (as in :func:`~compattr.estimators._lasso.lasso_fista`).
    """
    dtype = fista_dtype(tol)
    stacked, P, T = a.dim() == 3, a[..., 0, 0].numel(), a.shape[-1]

    def batched(x: Tensor) -> Tensor:  # (P, C, T) or (P, T) to one batch of P * T columns
        return x.movedim(0, -2).reshape(*x.shape[1:-1], P * T) if stacked else x

    def split(x: Tensor) -> Tensor:  # the inverse of batched
        return x.reshape(*x.shape[:-1], P, T).movedim(-2, 0) if stacked else x

    q = problem.q(dtype).repeat(1, P)
    a = batched(a.to(dtype))
    norm = a.norm(dim=0)
    u = torch.where(norm > 0, a / norm.clamp_min(1e-30), 0.0)  # unit prior directions (C, P * T)
    gu, uq = problem.gram_times(u), (u * q).sum(0)
    ugu = (u * gu).sum(0)
    s0 = torch.where(ugu > 0, uq / ugu.clamp_min(1e-30), 0.0)  # rescaled prior alone
    alpha_max = (q - gu * s0).abs().amax(0).clamp_min(1e-12)
    L = 2 * problem.lipschitz(dtype)  # bounds [I u]' G [I u] for unit u
    W, s = (torch.zeros_like(q), s0) if init is None else (batched(init[0].to(dtype)), batched(init[1].to(dtype)))
    for ratio in ratios:
        ratio = torch.as_tensor(ratio, device=q.device).to(dtype)
        penalty = (ratio.repeat(P) if ratio.dim() else ratio) * alpha_max
        W, s, n_iter = _fista_with_free_direction(problem, q, gu, ugu, uq, penalty, W, s, L, max_iter, tol)
        yield split(W.double()), split(s.double()), n_iter


def _lasso_coef(a: Tensor, W: Tensor, s_unit: Tensor) -> tuple[Tensor, Tensor]:
    """``(theta, s)`` from a lasso state: ``theta = s a + delta`` with ``s`` rescaled to the prior's own norm."""
    norm = a.norm(dim=0)
    scale = torch.where(norm > 0, s_unit / norm.clamp_min(1e-300), 0.0)
    return scale * a + W, scale


def _fista_with_free_direction(
    problem: LeastSquares,
    q: Tensor,
    gu: Tensor,
    ugu: Tensor,
    uq: Tensor,
    penalty: Tensor,
    W: Tensor,
    s: Tensor,
    L: float,
    max_iter: int,
    tol: float,
) -> tuple[Tensor, Tensor, int]:
    """FISTA for ``min (w + s u)' G (w + s u) / 2 - (w + s u)' q + penalty |w|_1`` per column, ``s`` free.

    Each column stops as in :func:`lasso_fista`, on ``w`` and ``s`` together; returns ``w``, ``s``
    and the steps of the last column to stop.
    """

    def prox_step(Z: list[Tensor], constants: list[Tensor]) -> list[Tensor]:
        (Zw, Zs), (q, gu, ugu, uq, threshold, lower) = Z, constants
        grad_w = torch.addcmul(-q, gu, Zs).add_(problem.gram_times(Zw))
        grad_s = (gu * Zw).sum(0) + ugu * Zs - uq
        step = Zw - grad_w / L
        return [step - step.clamp(lower, threshold), Zs - grad_s / L]  # soft thresholding of w only

    threshold = penalty / L
    (W, s), n_iter = fista(prox_step, [W, s], [q, gu, ugu, uq, threshold, -threshold], max_iter=max_iter, tol=tol)
    return W, s, n_iter
