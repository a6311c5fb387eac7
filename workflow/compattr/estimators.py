"""Component models: multi-output linear surrogates fitted on a shared mask matrix.

Every estimator follows scikit-learn's contract: ``__init__`` only stores its
parameters, ``fit(X, Y)`` takes the masks ``X`` (n_masks, n_components) and the
outputs ``Y`` (n_masks,) or (n_masks, n_inputs), sets ``coef_`` (n_inputs,
n_components) and ``intercept_`` (n_inputs,) and returns ``self``. One fit
serves every test input at once: the inputs share the design matrix, so the
work on ``X`` (standardisation, Gram matrix, factorisations, the first layer's
matrix product) is done once for all of them.

Estimators that need a validation split (early stopping, penalty choice) take
it from the *last* ``validation_fraction`` of the rows they are given; the masks
are i.i.d., so this is a random split, and the held-out masks used for scoring
are never seen. Whatever they choose there, they are then refitted on all the
rows they were given; ``coar`` chooses nothing and fits all rows directly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import Tensor

from compattr.scores import lds_scores

__all__ = [
    "CoarRegressor",
    "EarlyStoppedLeastSquaresRegressor",
    "RidgeCVRegressor",
    "LassoCVRegressor",
    "lasso_fista",
    "ReluCollapseRegressor",
    "LinearCollapseRegressor",
    "ReluNetRegressor",
    "GradientPriorRegressor",
    "PriorReluCollapseRegressor",
    "predict_network",
    "ESTIMATORS",
    "ESTIMATOR_DEFAULTS",
    "Moments",
    "make_estimator",
    "collapse_relu_network",
]


class _Standardizer:
    """Column z-scores from the count, sums and sums of squares of the fit rows; constant columns keep a scale of 1."""

    def __init__(self, n: int, total: Tensor, squares: Tensor) -> None:
        mean = total / n
        variance = (squares / n - mean**2).clamp_min(0)
        constant = variance <= 1e-12 * (squares / n)  # zero up to the rounding of the sums
        self.mean = mean.float()
        self.std = _moment_std(torch.where(constant, 0.0, variance)).float()


def _unstandardize(theta: Tensor, bias: Tensor, xs: _Standardizer, ys: _Standardizer) -> tuple[Tensor, Tensor]:
    """Map a linear model on standardised data back to raw masks and outputs.

    ``theta`` (T, C) and ``bias`` (T,) predict ``(y - ys.mean) / ys.std`` from
    ``(x - xs.mean) / xs.std``.
    """
    coef = theta * (ys.std[:, None] / xs.std[None, :])
    intercept = ys.mean + ys.std * bias - coef @ xs.mean
    return coef, intercept


@dataclass
class Moments:
    """Sums over rows of masks ``x`` (C) and outputs ``y`` (T): all a linear least-squares fit needs.

    ``n`` rows; ``x`` (C,), ``y`` (T,), ``xx`` (C, C), ``xy`` (C, T), ``yy`` (T,)
    sums in float64. Moments of row blocks add up, so a store larger than memory
    is summarised chunk by chunk (:func:`compattr.fitting.store_moments`).
    """

    n: int
    x: Tensor
    y: Tensor
    xx: Tensor
    xy: Tensor
    yy: Tensor

    @classmethod
    def of(cls, X: Tensor, Y: Tensor) -> Moments:
        """Moments of the rows of ``X`` (n, C) and ``Y`` (n, T)."""
        X, Y = X.double(), Y.double()
        return cls(len(X), X.sum(0), Y.sum(0), X.T @ X, X.T @ Y, (Y * Y).sum(0))

    def __add__(self, other: Moments) -> Moments:
        return Moments(*(a + b for a, b in zip(self._fields(), other._fields(), strict=True)))

    def _fields(self) -> tuple:
        return (self.n, self.x, self.y, self.xx, self.xy, self.yy)

    def outputs(self, columns: Tensor) -> Moments:
        """The moments of a subset of the outputs (``columns``: bool mask or indices over T)."""
        return Moments(self.n, self.x, self.y[columns], self.xx, self.xy[:, columns], self.yy[columns])

    @property
    def x_mean(self) -> Tensor:
        """Mean mask (C,)."""
        return self.x / self.n

    @property
    def y_mean(self) -> Tensor:
        """Mean output (T,)."""
        return self.y / self.n

    def gram(self) -> Tensor:
        """Centred Gram matrix ``sum (x - mean)(x - mean)'`` (C, C)."""
        return self.xx - torch.outer(self.x, self.x) / self.n

    def cross(self) -> Tensor:
        """Centred cross products ``sum (x - mean)(y - mean)'`` (C, T)."""
        return self.xy - torch.outer(self.x, self.y) / self.n

    def sse(self, coef: Tensor, intercept: Tensor) -> Tensor:
        """Sum of squared residuals of ``y ~ coef' x + intercept`` over the rows, per output (T,)."""
        quadratic = (coef * (self.xx @ coef)).sum(0)
        linear = intercept * (self.x @ coef) - (coef * self.xy).sum(0)
        return quadratic + 2 * linear + self.n * intercept**2 - 2 * intercept * self.y + self.yy


def _intercept(coef: Tensor, moments: Moments) -> Tensor:
    """Intercepts (T,) that centre the linear models ``coef`` (C, T) on ``moments``' means."""
    return moments.y_mean - coef.T @ moments.x_mean


class _ComponentModel(RegressorMixin, BaseEstimator):
    """Shared checks, tensors and prediction of the multi-output linear component models."""

    validation_fraction: float
    device: str
    #: Whether :meth:`fit` takes a prior attribution (the workflow passes attribution patching's).
    uses_prior: bool = False
    #: Whether the estimator chooses something on a validation split (then refits on all rows).
    _validates: bool = True

    def _check_params(self) -> None:
        if self._validates and not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must lie in (0, 1), got {self.validation_fraction}")

    def _validate(self, X: Any, Y: Any) -> tuple[np.ndarray, np.ndarray]:
        """Checked arrays ``X`` (n, C) and ``Y`` (n, T); sets the fitted attributes about the data."""
        self._check_params()
        # Bool masks (as stores hold them) and float32 stay as they are: no float64 copy of the rows.
        X, Y = validate_data(self, X, Y, multi_output=True, y_numeric=True, dtype=[np.float64, np.float32, np.bool_])
        self._single_output = Y.ndim == 1
        Y = Y.reshape(len(Y), -1)
        n_val = self.n_validation(len(X))
        if len(X) - n_val < 2 or (self._validates and n_val < 2):
            raise ValueError(f"{len(X)} masks leave too few rows for a {self.validation_fraction:.0%} validation split")
        self.n_validation_ = n_val
        return X, Y

    def _prepare(self, X: Any, Y: Any) -> tuple[Tensor, Tensor]:
        X, Y = self._validate(X, Y)
        return (
            torch.as_tensor(X, dtype=torch.float32, device=self.device),
            torch.as_tensor(Y, dtype=torch.float32, device=self.device),
        )

    def _split(self, X: Tensor, Y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        n_fit = len(X) - self.n_validation_
        return X[:n_fit], Y[:n_fit], X[n_fit:], Y[n_fit:]

    def n_validation(self, n_rows: int) -> int:
        """Number of validation rows (the last ones) of a fit on ``n_rows`` masks (0: no validation split)."""
        return math.ceil(self.validation_fraction * n_rows) if self._validates else 0

    @property
    def streams(self) -> bool:
        """Whether the estimator can fit from :class:`Moments` (:meth:`fit_moments`), without the rows."""
        return hasattr(self, "_fit_moments")

    def fit_moments(self, fit: Moments, val: Moments | None, **fit_params: Any) -> _ComponentModel:
        """Fit from the moments of the fit rows and of the validation rows (the last rows, as :meth:`fit` splits).

        The same model as :meth:`fit` on the rows (up to rounding), for the
        estimators that need only sums of products (``streams``); ``fit_params``
        as for :meth:`fit` (e.g. ``prior``). ``val`` is None for an estimator
        without a validation split (:meth:`n_validation` is 0).
        """
        if not self.streams:
            raise TypeError(f"{type(self).__name__} needs the rows themselves; it cannot fit from moments")
        fit, val = self._prepare_moments(fit, val)
        return self._fit_moments(fit, val, **fit_params)

    def _prepare_moments(self, fit: Moments, val: Moments | None) -> tuple[Moments, Moments | None]:
        """Check moments of the fit and validation rows and set what :meth:`_prepare` sets for arrays."""
        self._check_params()
        if (val is None) == self._validates:
            raise ValueError(f"{type(self).__name__} {'needs' if self._validates else 'takes no'} validation moments")
        n_val = 0 if val is None else val.n
        if fit.n < 2 or (self._validates and n_val < 2):
            raise ValueError(f"{fit.n} fit and {n_val} validation masks are too few")
        self.n_features_in_ = int(fit.x.shape[0])
        self._single_output = False
        self.n_validation_ = n_val
        device = torch.device(self.device)

        def moved(m: Moments) -> Moments:
            return Moments(m.n, *(t.to(device) for t in m._fields()[1:]))

        return moved(fit), None if val is None else moved(val)

    def _set_linear(self, coef: Tensor, intercept: Tensor) -> None:
        coef_np = coef.detach().double().cpu().numpy()
        intercept_np = intercept.detach().double().cpu().numpy()
        self.coef_ = coef_np[0] if self._single_output else coef_np
        self.intercept_ = intercept_np[0] if self._single_output else intercept_np

    def predict(self, X: Any) -> np.ndarray:
        """Predicted outputs, (n_masks,) or (n_masks, n_inputs) as ``Y`` was at fit."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return X @ self.coef_.T + self.intercept_


def _standardized_gram(moments: Moments) -> tuple[Tensor, Tensor, Tensor]:
    """The masks' column scales and, on masks standardised by them, ``A'A / n`` and ``A'(y - mean y) / n``.

    Constant columns (a component never or always ablated) keep a scale of 1:
    centred, they are zero.
    """
    x_std = _moment_std(moments.gram().diagonal() / moments.n)
    gram = moments.gram() / moments.n / torch.outer(x_std, x_std)
    return x_std, gram, moments.cross() / moments.n / x_std[:, None]


class CoarRegressor(_ComponentModel):
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

    Parameters
    ----------
    device : str, default="cpu"

    Attributes
    ----------
    coef_ : ndarray of shape (n_inputs, n_components) or (n_components,)
    intercept_ : ndarray of shape (n_inputs,) or float
    rank_ : int
        Rank of the standardised centred masks (eigenvalues kept).
    """

    _validates = False  # no validation split: every mask is fitted

    def __init__(self, *, device: str = "cpu") -> None:
        self.device = device

    def fit(self, X: Any, Y: Any) -> CoarRegressor:
        """Fit every input's minimum-norm least-squares model on all masks ``X``."""
        X, Y = self._prepare(X, Y)
        return self._fit_moments(Moments.of(X, Y), None)

    def _fit_moments(self, fit: Moments, val: Moments | None) -> CoarRegressor:
        total = fit if val is None else fit + val
        x_std, gram, q = _standardized_gram(total)
        e, V = torch.linalg.eigh(gram)  # ascending
        rank = min(total.n - 1, len(e))
        kept = torch.zeros_like(e, dtype=torch.bool)
        if rank > 0:
            kept[len(e) - rank :] = True
        kept &= e > len(e) * torch.finfo(e.dtype).eps * e.max().clamp_min(1e-300)
        inverse = torch.where(kept, 1 / e.clamp_min(1e-300), 0.0)
        theta = V @ (inverse[:, None] * (V.T @ q))  # (C, T) on standardised masks, raw outputs
        coef = theta / x_std[:, None]
        self.rank_ = int(kept.sum())
        self._set_linear(coef.T, _intercept(coef, total))
        return self


class EarlyStoppedLeastSquaresRegressor(_ComponentModel):
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

    def fit(self, X: Any, Y: Any) -> EarlyStoppedLeastSquaresRegressor:
        """Choose every input's step count on the validation rows, then refit on all rows."""
        X, Y = self._prepare(X, Y)
        Xf, Yf, Xv, Yv = self._split(X, Y)
        return self._fit_moments(Moments.of(Xf, Yf), Moments.of(Xv, Yv))

    def _descent(self, moments: Moments) -> tuple[Tensor, Tensor, float, Tensor, Tensor, Tensor]:
        """Eigenpairs, step and ``V' A'B / n`` of gradient descent on ``moments``' standardised rows, with the scales.

        Returns ``e, V, step, proj, x_std, y_std``.
        """
        x_std, gram, q = _standardized_gram(moments)
        y_std = _moment_std((moments.yy - moments.y**2 / moments.n) / moments.n)
        e, V = torch.linalg.eigh(gram)
        e = e.clamp_min(0)
        step = self.lr / max(float(e.max()) if len(e) else 1.0, 1e-12)
        return e, V, step, V.T @ (q / y_std[None, :]), x_std, y_std

    def _fit_moments(self, fit: Moments, val: Moments) -> EarlyStoppedLeastSquaresRegressor:
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
        self._set_linear(coef.T, _intercept(coef, total))
        return self


def _gradient_descent_filter(e: Tensor, step: float, k: Tensor) -> Tensor:
    """``(1 - (1 - step e)^k) / e`` (C, T) for eigenvalues ``e`` (C,) and step counts ``k`` (T,); ``step k`` at 0."""
    r = 1 - step * e[:, None]
    k = k[None, :].to(e.dtype)
    positive = r > 0
    # For 0 < r <= 1, 1 - r^k = -expm1(k log r) keeps its digits when step e is tiny.
    decayed = torch.where(positive, -torch.expm1(k * torch.log1p(-step * e[:, None])), 1 - r**k)
    return torch.where(e[:, None] > 0, decayed / e[:, None].clamp_min(1e-300), step * k)


def _moment_std(variance: Tensor) -> Tensor:
    """Standard deviations from variances; constant columns (variance 0) keep a scale of 1."""
    std = variance.clamp_min(0).sqrt()
    return torch.where(std > 0, std, torch.ones_like(std))


class RidgeCVRegressor(_ComponentModel):
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

    def __init__(self, *, alphas: Any = None, validation_fraction: float = 0.2, device: str = "cpu") -> None:
        self.alphas = alphas
        self.validation_fraction = validation_fraction
        self.device = device

    def _alphas(self) -> Tensor:
        alphas = np.logspace(-3, 3, 25) if self.alphas is None else np.asarray(self.alphas, dtype=np.float64)
        if alphas.ndim != 1 or len(alphas) == 0 or (alphas <= 0).any():
            raise ValueError("alphas must be a non-empty list of positive penalties")
        return torch.as_tensor(alphas, dtype=torch.float64, device=self.device)

    @staticmethod
    def _eig(moments: Moments) -> tuple[Tensor, Tensor]:
        e, V = torch.linalg.eigh(moments.gram())
        return e.clamp_min(0), V

    def fit(self, X: Any, Y: Any) -> RidgeCVRegressor:
        """Choose each input's penalty on the validation rows, then refit on all rows."""
        X, Y = self._prepare(X, Y)
        Xf, Yf, Xv, Yv = self._split(X, Y)
        return self._fit_moments(Moments.of(Xf, Yf), Moments.of(Xv, Yv))

    def _fit_moments(self, fit: Moments, val: Moments) -> RidgeCVRegressor:
        alphas = self._alphas()
        e, V = self._eig(fit)
        scale = e.mean().clamp_min(1e-12)
        proj_y = V.T @ fit.cross()  # (C, T)
        losses = []
        for a in alphas:
            coef = V @ (proj_y / (e + a * scale)[:, None])
            losses.append(val.sse(coef, _intercept(coef, fit)))
        choice = torch.stack(losses).argmin(0)  # (T,)
        total = fit + val
        e, V = self._eig(total)
        scale = e.mean().clamp_min(1e-12)
        proj_y = V.T @ total.cross()
        coef = torch.empty_like(proj_y)
        for k in choice.unique():
            cols = choice == k
            coef[:, cols] = V @ (proj_y[:, cols] / (e + alphas[k] * scale)[:, None])
        self.alpha_ = alphas[choice].cpu().numpy()
        self._set_linear(coef.T, _intercept(coef, total))
        return self


def _check_path(n_alphas: int, min_ratio: float) -> None:
    """Reject a lasso penalty path of no penalties or with a ratio outside (0, 1]."""
    if n_alphas < 1 or not 0 < min_ratio <= 1:
        raise ValueError("n_alphas must be positive and min_ratio in (0, 1]")


def _largest_eigenvalue(gram: Tensor) -> float:
    """Largest eigenvalue of a symmetric positive semi-definite matrix (at least 1e-12).

    On CUDA in float64: cuSOLVER is faster there than in float32 (H100, 336 x 336:
    3.2 ms against 7.3 ms).
    """
    return float(torch.linalg.eigvalsh(gram.double() if gram.is_cuda else gram).max().clamp_min(1e-12))


def _fista_dtype(tol: float) -> torch.dtype:
    """FISTA's step precision: float32 unless the tolerance asks for more digits than it keeps."""
    return torch.float32 if tol >= 1e-6 else torch.float64


#: FISTA iterations between convergence checks (each check waits for the device: one sync).
_FISTA_CHECK_EVERY = 10


def _fista_converged(steps: list[tuple[Tensor, Tensor]], tol: float) -> bool:
    """Whether the ``(new, old)`` pairs changed by at most ``tol`` times the largest new entry (or ``tol``)."""
    change = torch.stack([(new - old).abs().amax() for new, old in steps]).amax()
    size = torch.stack([new.abs().amax() for new, _ in steps]).amax().clamp_min(1.0)
    return bool(change <= tol * size)


def _momentum(t: float) -> tuple[float, float]:
    """FISTA's next ``t`` and the extrapolation weight ``1 + (t - 1) / t_next`` of the new iterate over the old."""
    t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
    return t_next, 1 + (t - 1) / t_next


def lasso_fista(
    gram: Tensor,
    xty: Tensor,
    penalty: Tensor,
    init: Tensor | None = None,
    *,
    max_iter: int = 10_000,
    tol: float = 1e-8,
    lipschitz: float | None = None,
) -> tuple[Tensor, int]:
    """Batched lasso by FISTA on a shared Gram matrix.

    Minimises ``w' G w / 2 - w' q + penalty_t |w|_1`` for every column ``t``,
    i.e. scikit-learn's ``(1 / 2n) |y - X w|^2 + alpha |w|_1`` with ``G = X'X / n``
    and ``q = X'y / n`` on centred data. A step is one matrix product and three
    elementwise passes; convergence is checked every ``_FISTA_CHECK_EVERY`` steps.

    Parameters
    ----------
    gram : Tensor (C, C)
    xty : Tensor (C, T)
    penalty : Tensor (T,)
    init : Tensor (C, T), optional
        Warm start.
    max_iter, tol
        Stops at the first check where that step's largest coefficient change is
        below ``tol`` times the largest coefficient (or ``tol`` when all are zero).
    lipschitz : float, optional
        The largest eigenvalue of ``gram``, when the caller has it (a path reuses it).

    Returns
    -------
    W : Tensor (C, T)
    n_iter : int
    """
    L = _largest_eigenvalue(gram) if lipschitz is None else lipschitz
    descent = torch.eye(len(gram), dtype=gram.dtype, device=gram.device) - gram / L  # Z - grad / L = descent Z + q / L
    shift, threshold = xty / L, penalty / L
    lower = -threshold
    W = torch.zeros_like(xty) if init is None else init.clone()
    Z, t = W.clone(), 1.0
    for it in range(1, max_iter + 1):
        step = torch.addmm(shift, descent, Z)
        W_next = step - step.clamp(lower, threshold)  # soft thresholding
        t, weight = _momentum(t)
        Z = torch.lerp(W, W_next, weight)
        if (it % _FISTA_CHECK_EVERY == 0 or it == max_iter) and _fista_converged([(W_next, W)], tol):
            return W_next, it
        W = W_next
    return W, max_iter


class LassoCVRegressor(_ComponentModel):
    """Lasso with the penalty chosen per input on a validation split, by batched FISTA.

    Every input's penalty path runs at once on the shared Gram matrix of the
    centred masks, from ``alpha_max`` (all coefficients zero) down to
    ``alpha_max * min_ratio`` with warm starts; each input keeps the ratio with
    the lowest validation MSE and is refitted on all rows at that ratio of its
    own ``alpha_max``. The objective is scikit-learn's ``Lasso``.

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
    device : str, default="cpu"

    Attributes
    ----------
    coef_, intercept_
    alpha_ : ndarray of shape (n_inputs,)
        Chosen penalty of each input, in scikit-learn's units for the refit.
    """

    def __init__(
        self,
        *,
        n_alphas: int = 20,
        min_ratio: float = 1e-3,
        max_iter: int = 1000,
        tol: float = 1e-4,
        validation_fraction: float = 0.2,
        device: str = "cpu",
    ) -> None:
        self.n_alphas = n_alphas
        self.min_ratio = min_ratio
        self.max_iter = max_iter
        self.tol = tol
        self.validation_fraction = validation_fraction
        self.device = device

    @staticmethod
    def _scaled(moments: Moments) -> tuple[Tensor, Tensor, Tensor]:
        """scikit-learn's lasso quantities: ``X'X / n`` and ``X'y / n`` on centred rows, and ``alpha_max``."""
        q = moments.cross() / moments.n
        return moments.gram() / moments.n, q, q.abs().amax(0).clamp_min(1e-12)

    def fit(self, X: Any, Y: Any) -> LassoCVRegressor:
        """Run every input's penalty path on the fit rows, choose on validation, refit on all rows."""
        X, Y = self._prepare(X, Y)
        Xf, Yf, Xv, Yv = self._split(X, Y)
        return self._fit_moments(Moments.of(Xf, Yf), Moments.of(Xv, Yv))

    def _fit_moments(self, fit: Moments, val: Moments) -> LassoCVRegressor:
        _check_path(self.n_alphas, self.min_ratio)
        ratios = torch.logspace(0, math.log10(self.min_ratio), self.n_alphas, dtype=torch.float64, device=fit.x.device)
        dtype = _fista_dtype(self.tol)
        gram, q, alpha_max = (t.to(dtype) for t in self._scaled(fit))
        L = _largest_eigenvalue(gram)
        W = None
        path, losses = [], []
        for ratio in ratios.to(dtype):
            W, _ = lasso_fista(gram, q, ratio * alpha_max, W, max_iter=self.max_iter, tol=self.tol, lipschitz=L)
            path.append(W)
            coef = W.double()
            losses.append(val.sse(coef, _intercept(coef, fit)))
        choice = torch.stack(losses).argmin(0)
        init = torch.stack(path)[choice, :, torch.arange(len(choice), device=choice.device)].T  # (C, T)
        total = fit + val
        gram, q, alpha_max = (t.to(dtype) for t in self._scaled(total))
        penalty = ratios[choice] * alpha_max.double()
        W, self.n_iter_ = lasso_fista(gram, q, penalty.to(dtype), init, max_iter=self.max_iter, tol=self.tol)
        self.alpha_ = penalty.cpu().numpy()
        W = W.double()
        self._set_linear(W.T, _intercept(W, total))
        return self


def _check_prior(prior: Any, T: int, C: int, device: str) -> Tensor:
    """The prior as a (T, C) float64 tensor; zeros when ``prior`` is None."""
    if prior is None:
        return torch.zeros(T, C, dtype=torch.float64, device=device)
    prior = np.atleast_2d(np.asarray(prior, dtype=np.float64))
    if prior.shape != (T, C):
        raise ValueError(f"prior has shape {prior.shape}; expected (n_inputs, n_components) = ({T}, {C})")
    if not np.isfinite(prior).all():
        raise ValueError("prior contains NaN or infinite values")
    return torch.as_tensor(prior, dtype=torch.float64, device=device)


def _check_priors(prior: Any, T: int, C: int, device: str) -> Tensor:
    """One prior (T, C) or several candidates (P, T, C), as a (P, T, C) float64 tensor (zeros when None)."""
    if prior is not None and np.ndim(prior) == 3:
        if len(prior) == 0:
            raise ValueError("prior holds no candidate priors")
        return torch.stack([_check_prior(p, T, C, device) for p in prior])
    return _check_prior(prior, T, C, device)[None]


class GradientPriorRegressor(_ComponentModel):
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
    """

    uses_prior = True

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
        device: str = "cpu",
    ) -> None:
        self.correction = correction
        self.alphas = alphas
        self.n_alphas = n_alphas
        self.min_ratio = min_ratio
        self.max_iter = max_iter
        self.tol = tol
        self.validation_fraction = validation_fraction
        self.device = device

    _alphas = RidgeCVRegressor._alphas

    def fit(self, X: Any, Y: Any, prior: Any = None) -> GradientPriorRegressor:
        """Fit ``s`` and the correction of every input; ``prior`` is (n_inputs, n_components) or (n_priors, ...)."""
        X, Y = self._prepare(X, Y)
        Xf, Yf, Xv, Yv = self._split(X, Y)
        return self._fit_moments(Moments.of(Xf, Yf), Moments.of(Xv, Yv), prior)

    def _fit_moments(self, fit: Moments, val: Moments, prior: Any = None) -> GradientPriorRegressor:
        if self.correction not in ("ridge", "lasso"):
            raise ValueError(f"correction must be 'ridge' or 'lasso', got {self.correction!r}")
        T, C = fit.y.shape[0], fit.x.shape[0]
        candidates = _check_priors(prior, T, C, self.device).transpose(1, 2)  # (P, C, T)
        total = fit + val
        if self.correction == "ridge":
            grid = [*self._alphas().tolist(), math.inf]
        else:
            _check_path(self.n_alphas, self.min_ratio)
            grid = torch.logspace(0, math.log10(self.min_ratio), self.n_alphas, dtype=torch.float64).tolist()
        losses, all_states = [], []
        for a in candidates:  # every prior's whole penalty path, scored on validation
            if self.correction == "ridge":
                path = self._ridge(fit, a, grid)
            else:
                states = self._lasso(fit, a, grid)
                all_states.append(states)
                path = [self._lasso_coef(a, *state) for state in states]
            losses += [val.sse(theta, _intercept(theta, fit)) for theta, _ in path]
        best = torch.stack(losses).argmin(0)  # (T,): index into (prior, penalty)
        which, choice = best // len(grid), best % len(grid)
        chosen = torch.as_tensor(grid, dtype=torch.float64)[choice.cpu()]
        columns = torch.arange(T, device=best.device)
        a = candidates[which, :, columns].T  # (C, T): each input's chosen prior
        if self.correction == "lasso":
            states = [
                tuple(torch.stack([state[k] for state in by_prior]) for k in range(2))
                for by_prior in zip(*all_states, strict=True)
            ]  # per penalty: (W (P, C, T), s (P, T))
            states = [(W[which, :, columns].T, s[which, columns]) for W, s in states]
        if self.correction == "ridge":  # closed form on all rows, once per penalty chosen by some input
            unique, inverse = choice.unique(return_inverse=True)
            refits = self._ridge(total, a, [grid[i] for i in unique.tolist()])
            theta = torch.stack([theta for theta, _ in refits])[inverse, :, columns].T
            s = torch.stack([s for _, s in refits])[inverse, columns]
        else:  # one FISTA run on all rows, each input at its ratio, warm-started from its path solution
            W0 = torch.stack([W for W, _ in states])[choice, :, columns].T
            s0 = torch.stack([s for _, s in states])[choice, columns]
            ((W, s_unit),) = self._lasso(total, a, [chosen.to(a.device)], init=(W0, s0))
            theta, s = self._lasso_coef(a, W, s_unit)
        self.alpha_ = chosen.numpy()
        self.prior_index_ = which.cpu().numpy()
        self.scale_ = s.cpu().numpy()
        self._set_linear(theta.T, _intercept(theta, total))
        return self

    def _ridge(self, moments: Moments, a: Tensor, grid: list[float]) -> list[tuple[Tensor, Tensor]]:
        """Closed-form ``(theta (C, T), s (T,))`` for each relative penalty of ``grid`` (``inf``: the prior alone)."""
        e, V = RidgeCVRegressor._eig(moments)
        scale = e.mean().clamp_min(1e-12)
        p = V.T @ moments.cross()  # (C, T)
        b = V.T @ a
        fits = []
        for lam in grid:
            w = torch.zeros_like(e) if math.isinf(lam) else 1 / (e + lam * scale)
            if math.isinf(lam):  # the limit: s by least squares on the prior's direction, no correction
                num, den = (b * p).sum(0), (e[:, None] * b**2).sum(0)
            else:
                num, den = (b * p * w[:, None]).sum(0), (e[:, None] * b**2 * w[:, None]).sum(0)
            s = torch.where(den > 1e-12 * den.max().clamp_min(1e-300), num / den.clamp_min(1e-300), 0.0)
            theta = s * a + V @ ((p - s * e[:, None] * b) * w[:, None])
            fits.append((theta, s))
        return fits

    def _lasso(
        self, moments: Moments, a: Tensor, ratios: list[Any], init: tuple[Tensor, Tensor] | None = None
    ) -> list[tuple[Tensor, Tensor]]:
        """Joint FISTA on ``(delta, s)`` at each ratio of each input's ``alpha_max`` (a float, or a (T,) tensor).

        Warm starts run down the path, from ``init`` when given (else the
        rescaled prior alone). Returns ``(delta (C, T), s (T,))`` per ratio, ``s``
        along the unit prior direction, in float64; the steps run in float32
        unless ``tol`` asks for more digits than it keeps (as in :class:`LassoCVRegressor`).
        """
        dtype = _fista_dtype(self.tol)
        gram, q, _ = (t.to(dtype) for t in LassoCVRegressor._scaled(moments))
        a = a.to(dtype)
        norm = a.norm(dim=0)
        u = torch.where(norm > 0, a / norm.clamp_min(1e-30), 0.0)  # unit prior directions (C, T)
        gu, uq = gram @ u, (u * q).sum(0)
        ugu = (u * gu).sum(0)
        s0 = torch.where(ugu > 0, uq / ugu.clamp_min(1e-30), 0.0)  # rescaled prior alone
        alpha_max = (q - gu * s0).abs().amax(0).clamp_min(1e-12)
        L = 2 * _largest_eigenvalue(gram)  # bounds [I u]' G [I u] for unit u
        W, s = (torch.zeros_like(q), s0) if init is None else (init[0].to(dtype), init[1].to(dtype))
        states = []
        for ratio in ratios:
            penalty = torch.as_tensor(ratio, device=q.device).to(dtype) * alpha_max
            W, s = _fista_with_free_direction(gram, q, u, gu, ugu, uq, penalty, W, s, L, self.max_iter, self.tol)
            states.append((W.double(), s.double()))
        return states

    @staticmethod
    def _lasso_coef(a: Tensor, W: Tensor, s_unit: Tensor) -> tuple[Tensor, Tensor]:
        """``(theta, s)`` from a lasso state: ``theta = s a + delta`` with ``s`` rescaled to the prior's own norm."""
        norm = a.norm(dim=0)
        scale = torch.where(norm > 0, s_unit / norm.clamp_min(1e-300), 0.0)
        return scale * a + W, scale


def _fista_with_free_direction(
    gram: Tensor,
    q: Tensor,
    u: Tensor,
    gu: Tensor,
    ugu: Tensor,
    uq: Tensor,
    penalty: Tensor,
    W: Tensor,
    s: Tensor,
    L: float,
    max_iter: int,
    tol: float,
) -> tuple[Tensor, Tensor]:
    """FISTA for ``min (w + s u)' G (w + s u) / 2 - (w + s u)' q + penalty |w|_1`` per column, ``s`` free.

    Convergence is checked as in :func:`lasso_fista`, on ``w`` and ``s`` together.
    """
    Zw, Zs, t = W.clone(), s.clone(), 1.0
    threshold = penalty / L
    lower = -threshold
    for it in range(1, max_iter + 1):
        grad_w = torch.addmm(torch.addcmul(-q, gu, Zs), gram, Zw)
        grad_s = (gu * Zw).sum(0) + ugu * Zs - uq
        step = Zw - grad_w / L
        W_next = step - step.clamp(lower, threshold)  # soft thresholding
        s_next = Zs - grad_s / L
        t, weight = _momentum(t)
        Zw, Zs = torch.lerp(W, W_next, weight), torch.lerp(s, s_next, weight)
        if (it % _FISTA_CHECK_EVERY == 0 or it == max_iter) and _fista_converged([(W_next, W), (s_next, s)], tol):
            return W_next, s_next
        W, s = W_next, s_next
    return W, s


def collapse_relu_network(W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor) -> tuple[Tensor, Tensor]:
    """Drop the ReLU of ``W2 relu(W1 x + b1) + b2``: ``theta = W2 W1``, ``b = W2 b1 + b2``.

    Batched over networks: ``W1`` (T, d, C), ``b1`` (T, d), ``W2`` (T, d), ``b2`` (T,);
    returns ``theta`` (T, C) and ``b`` (T,).
    """
    theta = torch.einsum("td,tdc->tc", W2, W1)
    return theta, (W2 * b1).sum(1) + b2


def _least_squares_scale(pred: Tensor, target: Tensor) -> Tensor:
    """Per column, the least-squares ``s`` of ``target ~ s * pred`` for centred (n, T) columns.

    A column of ``pred`` with no variance gets ``s = 0``.
    """
    variance = (pred * pred).sum(0)
    covariance = (pred * target).sum(0)
    return torch.where(variance > 0, covariance / variance.clamp_min(1e-30), 0.0)


#: Largest share of rare entries in binary masks for which the 2-layer fits use sparse products
#: (on CPU). Measured on 2 cores, masks 256 x 336 times a 336 x 3,200 first layer, forward plus
#: gradient: 1.2 ms sparse vs 5.8 ms dense at 5%, 4.5 vs 5.9 ms at 20%; about even near 35%.
_SPARSE_MAX_DENSITY = 0.2
#: Rows per block when masks given as one array are gathered (bounds the temporary copies).
_BLOCK_ROWS = 4096

#: A sparse matrix as the bags of :func:`torch.nn.functional.embedding_bag`: for each of its rows,
#: the columns of its entries (concatenated), where each row's columns start, and the entries.
_Bags = tuple[Tensor, Tensor, Tensor]


def _bag_product(bags: _Bags, W: Tensor) -> Tensor:
    """``S @ W`` for the sparse ``S`` held as ``bags``: per row, the weighted sum of the rows of ``W`` it names."""
    columns, starts, entries = bags
    W = W.contiguous()
    return torch.nn.functional.embedding_bag(columns, W, starts, mode="sum", per_sample_weights=entries.to(W.dtype))


class _Rows:
    """Standardised masks ``(x - mean) / std`` (n, C), held densely or, for binary masks, sparsely.

    Binary masks in which one value ``rare`` is uncommon (the ablated units, at a
    small ablation rate) are held as the coordinates of that value: a
    standardised row is ``base + s`` with ``base = (1 - rare - mean) / std`` and
    ``s`` sparse, ``(2 rare - 1) / std_j`` at its rare entries ``j``. A product
    with a (C, k) matrix then costs one row of ``k`` per rare entry (an
    embedding-bag sum: on 2 cores, less than half the time of a CSR product).
    """

    def __init__(self, mean: Tensor, std: Tensor, *, dense: Tensor | None = None, sparse: tuple | None = None) -> None:
        self.mean, self.std, self.dense = mean, std, dense
        if sparse is not None:  # (counts per row, column of each rare entry, rare value)
            counts, self.columns, self.rare = sparse
            self.offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
            self.base = (1 - self.rare - mean) / std
            self.values = (2 * self.rare - 1) / std
            self._bags: list[_Bags | None] = [None, None]  # of the rows, of their transpose

    def __len__(self) -> int:
        return len(self.dense) if self.dense is not None else len(self.offsets) - 1

    def take(self, rows: Tensor) -> _Rows:
        """The rows ``rows`` (indices), in the same form."""
        if self.dense is not None:
            return _Rows(self.mean, self.std, dense=self.dense[rows])
        starts, counts = self.offsets[rows], self.offsets[rows + 1] - self.offsets[rows]
        first = torch.cat([counts.new_zeros(1), counts.cumsum(0)[:-1]])
        where = torch.repeat_interleave(starts - first, counts) + torch.arange(int(counts.sum()), device=counts.device)
        return _Rows(self.mean, self.std, sparse=(counts, self.columns[where], self.rare))

    def _sparse(self, transposed: bool) -> _Bags:
        """The bags of ``s`` (n, C), or with ``transposed`` those of its transpose (C, n); each built once."""
        if self._bags[transposed] is None:
            entries = self.values[self.columns]
            if transposed:
                n, C = len(self), len(self.mean)
                row = torch.repeat_interleave(torch.arange(n, device=entries.device), self.offsets.diff())
                # Sparse rows live on the CPU; numpy's sort, not torch.argsort (5x slower inside the fit loop).
                order = torch.from_numpy(np.argsort(self.columns.numpy(), kind="stable"))
                per_column = torch.bincount(self.columns, minlength=C)
                starts = torch.cat([per_column.new_zeros(1), per_column.cumsum(0)[:-1]])
                self._bags[1] = (row[order], starts, entries[order])
            else:
                self._bags[0] = (self.columns, self.offsets[:-1], entries)
        return self._bags[transposed]

    def affine(self, W: Tensor, b: Tensor) -> Tensor:
        """``rows @ W + b`` (n, k) for ``W`` (C, k) and ``b`` (k,)."""
        if self.dense is not None:
            return torch.addmm(b, self.dense, W)
        return _bag_product(self._sparse(transposed=False), W).add_(self.base @ W + b)

    def __matmul__(self, W: Tensor) -> Tensor:
        """``rows @ W`` (n, k) for ``W`` (C, k)."""
        return self.affine(W, W.new_zeros(W.shape[1]))

    def transpose_matmul(self, G: Tensor, G_sums: Tensor) -> Tensor:
        """``rows' @ G`` (C, k) for ``G`` (n, k) whose column sums are ``G_sums``."""
        if self.dense is not None:
            return self.dense.T @ G
        return _bag_product(self._sparse(transposed=True), G).addr_(self.base, G_sums)


class _RowCollector:
    """Gathers blocks of masks and outputs (from an array or a store) into :class:`_Rows`.

    Keeps the count, sums and sums of squares of both (for standardising), the
    outputs as float32, and the masks either as the coordinates of their rare
    value (binary masks, on CPU) or as float32. Masks are never held as a whole
    in any other form.
    """

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)
        self.n = 0
        self.sums: list[Tensor] = []  # x, x^2, y, y^2 (float64)
        self.outputs: list[Tensor] = []
        self.blocks: list[Any] = []  # float32 masks, or (counts per row, columns) of the rare entries
        self.sparse = self.device.type == "cpu"  # binary masks so far, held as coordinates of `rare`
        self.rare: int | None = None  # their less common value, set by the first block
        self.n_rare = 0

    def add(self, X: np.ndarray, Y: np.ndarray) -> None:
        """Append the rows of ``X`` (n, C) and ``Y`` (n, T)."""
        x = torch.as_tensor(np.asarray(X))
        y = torch.as_tensor(np.asarray(Y, dtype=np.float32)).reshape(len(x), -1)
        if x.ndim != 2 or (self.sums and (x.shape[1], y.shape[1]) != (self.n_columns, self.n_outputs)):
            raise ValueError(f"a block of {tuple(x.shape)} masks, {tuple(y.shape)} outputs does not match the others")
        if not (bool(torch.isfinite(y).all()) and (x.dtype == torch.bool or bool(torch.isfinite(x).all()))):
            raise ValueError("masks or outputs contain NaN or infinity")
        total = x.sum(0, dtype=torch.float64)
        block = [total, total if x.dtype == torch.bool else (x.double() ** 2).sum(0)]  # bool: x^2 = x
        block += [y.sum(0, dtype=torch.float64), (y.double() ** 2).sum(0)]
        self.sums = block if not self.sums else [a + b for a, b in zip(self.sums, block, strict=True)]
        self.n += len(x)
        self.outputs.append(y.to(self.device))
        # Still sparse only for binary masks (not checked once the masks are held densely).
        self.sparse = self.sparse and (x.dtype == torch.bool or bool(((x == 0) | (x == 1)).all()))
        if self.sparse and self.rare is None:
            self.rare = int(float(block[0].sum()) < 0.5 * x.numel())  # the less common value
        if self.sparse:
            rows, columns = torch.nonzero(x == self.rare, as_tuple=True)
            self.blocks.append((torch.bincount(rows, minlength=len(x)), columns))
            self.n_rare += len(columns)
        else:
            self._densify()
            self.blocks.append(x.to(self.device, torch.float32))

    def _densify(self) -> None:
        """Turn the blocks held as coordinates into float32 masks; later blocks stay dense."""
        if self.rare is not None:
            dense = []
            for counts, columns in self.blocks:
                block = torch.full((len(counts), self.n_columns), float(1 - self.rare))
                block[torch.repeat_interleave(torch.arange(len(counts)), counts), columns] = float(self.rare)
                dense.append(block.to(self.device))
            self.blocks = dense
        self.sparse, self.rare = False, None

    @property
    def n_columns(self) -> int:
        """Number of mask columns (C)."""
        return len(self.sums[0])

    @property
    def n_outputs(self) -> int:
        """Number of outputs (T)."""
        return len(self.sums[2])

    def standardizers(self) -> tuple[_Standardizer, _Standardizer]:
        """Column z-scores of the masks and of the outputs gathered."""
        x, xx, y, yy = (t.to(self.device) for t in self.sums)
        return _Standardizer(self.n, x, xx), _Standardizer(self.n, y, yy)

    def extend(self, other: _RowCollector) -> None:
        """Append the rows gathered by ``other`` after this collector's own (e.g. validation rows after fit rows)."""
        if other.n == 0:
            return
        if not (self.sparse and other.sparse and self.rare in (None, other.rare)):
            self._densify()
            other._densify()
        elif self.rare is None:
            self.rare = other.rare
        self.sums = other.sums if not self.sums else [a + b for a, b in zip(self.sums, other.sums, strict=True)]
        self.n += other.n
        self.n_rare += other.n_rare
        self.outputs += other.outputs
        self.blocks += other.blocks

    def rows(self, xs: _Standardizer, ys: _Standardizer) -> tuple[_Rows, Tensor]:
        """The masks standardised by ``xs`` and the outputs by ``ys`` (the raw blocks are kept, joined in one)."""
        if self.sparse and self.n_rare > _SPARSE_MAX_DENSITY * self.n * self.n_columns:
            self._densify()
        self.outputs = [torch.cat(self.outputs)]
        outputs = (self.outputs[0] - ys.mean) / ys.std
        if self.sparse:
            counts = torch.cat([c for c, _ in self.blocks])
            columns = torch.cat([c for _, c in self.blocks])
            self.blocks = [(counts, columns)]
            rows = _Rows(xs.mean, xs.std, sparse=(counts.to(self.device), columns.to(self.device), self.rare))
        else:
            self.blocks = [torch.cat(self.blocks)]
            rows = _Rows(xs.mean, xs.std, dense=(self.blocks[0] - xs.mean) / xs.std)
        return rows, outputs


class ReluCollapseRegressor(_ComponentModel):
    """The ReLU-collapse estimator: fit a 2-layer ReLU net per input, keep its linear collapse.

    Each input gets its own network ``phi(x) = W2 relu(W1 x + b1) + b2`` of width
    ``hidden``; all networks train together as one batched ensemble (the first
    layer of every network is one matrix product with the shared masks) with
    Adam(W) or SGD on the mean squared error of standardised masks (and, by
    default, standardised outputs). The returned linear model is the collapse
    ``theta = W2 W1``, ``b = W2 b1 + b2`` (see :func:`collapse_relu_network`),
    mapped back to raw masks and outputs; with ``calibrate`` (the default) its
    scale and intercept are refitted by least squares on the training rows.

    Training length is counted in optimisation steps (batches), so patience
    means the same at every number of masks. Every ``check_every`` steps each
    input's validation MSE is computed, of the collapsed model
    (``early_stopping="collapse"``) or of the network itself (``"network"``);
    each input keeps its best step count and stops when it has not improved
    for ``patience`` steps (it leaves the ensemble, so the others train faster).
    Then every network is trained again from the same initialisation on all
    the rows, standardised by all of them, for its chosen number of steps
    (Goodfellow et al., 2016, Algorithm 7.2): the returned model is a fit on
    every mask the budget counts. An input whose best step count is 0 keeps its
    random initialisation: it is marked in ``failed_``. With
    ``early_stopping="none"`` there is no validation split and every network
    trains on all rows for ``max_steps``. With networks seeded per input
    position, each input gets the network it would get fitted alone.

    Binary masks with few ablated units (on CPU) are held as the coordinates of
    those units and multiplied as sparse matrices (see :class:`_Rows`);
    :meth:`fit_chunks` gathers them block by block, e.g. from a store's chunks.

    Why calibrate: dropping the ReLUs counts every unit as always active, so the
    raw collapse's slope is off by a factor that drifts during training. Its
    validation MSE is then dominated by that scale, which rank-based scores
    (LDS) ignore, and stopping on it keeps a far too early step. The least-squares
    factor is usually positive (LDS unchanged), but it may be negative, which
    flips the sign of the collapse: ``calibration_`` records it per input.
    ``calibrate=False`` is the seed's raw collapse.

    Parameters
    ----------
    hidden : int, default=32
        Width ``d`` of each network.
    lr : float, default=1e-3
        Learning rate.
    optimizer : {"adam", "sgd"}, default="adam"
        AdamW (decoupled weight decay) or SGD (L2 weight decay, ``momentum``).
    momentum : float, default=0.0
        SGD's momentum (ignored by Adam).
    weight_decay : float, default=0.0
    init_scale : float, default=1.0
        Multiplier of PyTorch's default (Kaiming-uniform) initialisation.
    max_steps : int, default=3000
        Largest number of optimisation steps.
    batch_size : int, default=256
        Masks per step (all of them when fewer).
    check_every : int, default=10
        Steps between validation checks (the chosen step count is a multiple of it).
    patience : int, default=300
        Steps without improvement after which an input stops training.
    early_stopping : {"auto", "collapse", "network", "none"}, default="auto"
        Whose validation MSE picks each input's step count; "auto" is the
        predictor the estimator returns (the collapse here, the network for
        :class:`ReluNetRegressor`); "none": no validation split, ``max_steps`` on all rows.
    fit_bias : bool, default=True
        Train ``b1`` and ``b2``; when False they stay zero (outputs are centred).
    standardize_targets : bool, default=True
        Train on z-scored outputs (else on centred raw outputs).
    calibrate : bool, default=True
        Rescale each input's collapse by the least-squares factor on the
        training rows (and refit its intercept) before validating and returning it.
    validation_fraction : float, default=0.2
    random_state : int, default=0
        Seed of the batch order, and with each input's position, of its initialisation.
    device : str, default="cpu"

    Attributes
    ----------
    coef_, intercept_
    n_iter_ : ndarray of shape (n_inputs,)
        Step count each input kept (chosen on validation, used in the refit).
    failed_ : ndarray of shape (n_inputs,)
        Whether the input kept step 0 with a random initialisation (with a
        prior, step 0 is the prior: a choice, not a failure).
    validation_mse_ : ndarray of shape (n_inputs,)
        Validation MSE of the predictor returned (the collapse here), at the kept
        step, in output units, before the refit; comparable across settings whatever ``early_stopping`` is.
    validation_spearman_ : ndarray of shape (n_inputs,)
        Spearman correlation of that predictor with the validation outputs, at the kept step.
    calibration_ : ndarray of shape (n_inputs,)
        Least-squares factor applied to the returned collapse (1 without ``calibrate``;
        negative where the rescaling flipped its sign). Not set when the predictor is the network.
    """

    _activation = "relu"
    _predictor = "collapse"

    def __init__(
        self,
        *,
        hidden: int = 32,
        lr: float = 1e-3,
        optimizer: str = "adam",
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        init_scale: float = 1.0,
        max_steps: int = 3000,
        batch_size: int = 256,
        check_every: int = 10,
        patience: int = 300,
        early_stopping: str = "auto",
        fit_bias: bool = True,
        standardize_targets: bool = True,
        calibrate: bool = True,
        validation_fraction: float = 0.2,
        random_state: int = 0,
        device: str = "cpu",
    ) -> None:
        self.hidden = hidden
        self.lr = lr
        self.optimizer = optimizer
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.init_scale = init_scale
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.check_every = check_every
        self.patience = patience
        self.early_stopping = early_stopping
        self.fit_bias = fit_bias
        self.standardize_targets = standardize_targets
        self.calibrate = calibrate
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.device = device

    @property
    def _validates(self) -> bool:  # type: ignore[override]
        return self.early_stopping != "none"

    def _initial_weights(self, T: int, C: int, prior: Tensor | None = None) -> list[Tensor]:
        """Scaled Kaiming-uniform weights; with ``prior`` (T, C), plus pairs of units that encode it.

        Each input's network is drawn from its own generator, seeded by
        ``(random_state, input)``: a network does not depend on which other
        inputs are fitted with it.

        Pairs of units ``(W1, W2) = (+k a, +c)`` and ``(-k a, -c)`` collapse to
        ``2 c k a``; with ``c k = 1 / (2 * pairs)`` the prior part of the collapse
        is ``a`` exactly, and both layers get the same norm. The network itself
        is then linear in that part too (``c relu(k a.x) - c relu(-k a.x) = c k a.x``),
        with half the collapse's slope.
        """
        d = self.hidden
        bound1, bound2 = self.init_scale / math.sqrt(C), self.init_scale / math.sqrt(d)
        drawn: list[list[Tensor]] = [[], [], [], []]
        for t in range(T):
            seed = int(np.random.SeedSequence([self.random_state, t]).generate_state(1)[0])
            generator = torch.Generator().manual_seed(seed)
            shapes = (((d, C), bound1), ((d,), bound1), ((d,), bound2), ((), bound2))  # W1, b1, W2, b2
            for (shape, bound), out in zip(shapes, drawn, strict=True):
                out.append((torch.rand(shape, generator=generator) * 2 - 1) * bound)
        params = [torch.stack(values).to(self.device) for values in drawn]
        if not self.fit_bias:
            for bias in params[1::2]:
                bias.zero_()
        pairs = d // 2
        if prior is not None and pairs:
            norm = prior.norm(dim=1, keepdim=True).float().to(self.device)  # (T, 1)
            c = (norm / (2 * pairs)).sqrt()
            k = torch.where(norm > 0, 1 / (2 * pairs * c.clamp_min(1e-30)), 0.0)
            sign = torch.cat([torch.ones(pairs), -torch.ones(pairs)]).to(self.device)  # (2 * pairs,)
            params[0][:, : 2 * pairs] += sign[None, :, None] * k[:, :, None] * prior.float()[:, None, :]
            params[2][:, : 2 * pairs] += sign[None, :] * c
        params[0] = params[0].permute(2, 0, 1).contiguous()  # (C, T, d): the first layer of all networks at once
        return params

    def _forward(self, rows: _Rows, params: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Hidden activations (n, T, d) and outputs (n, T) of every network on standardised masks ``rows`` (n, C)."""
        W1, b1, W2, b2 = params
        C, T, d = W1.shape
        hidden = rows.affine(W1.reshape(C, T * d), b1.reshape(-1)).reshape(-1, T, d)
        if self._activation == "relu":
            hidden.clamp_min_(0)
        return hidden, (hidden * W2).sum(-1) + b2

    def _network(self, rows: _Rows, params: list[Tensor]) -> Tensor:
        """Outputs (n, T) of every network on standardised masks ``rows`` (n, C)."""
        return self._forward(rows, params)[1]

    def _gradients(self, rows: _Rows, hidden: Tensor, residual: Tensor, params: list[Tensor]) -> list[Tensor]:
        """Gradients of the step's loss (per input, the mean squared ``residual``; summed) for ``params``.

        Backpropagation by hand, as scikit-learn's MLP does: ``hidden`` and
        ``residual`` (outputs minus targets) come from :meth:`_forward` on ``rows``.
        """
        W1, _, W2, _ = params
        C, T, d = W1.shape
        grad_out = residual * (2 / len(residual))  # (n, T)
        grad_hidden = grad_out[:, :, None] * W2  # (n, T, d)
        if self._activation == "relu":  # zero where the unit is off: ReLU's own backward (masked_fill is 30x slower)
            grad_hidden = torch.ops.aten.threshold_backward(grad_hidden, hidden, 0)
        grad_W2 = (hidden * grad_out[:, :, None]).sum(0)
        grad_hidden = grad_hidden.reshape(-1, T * d)
        grad_b1 = grad_hidden.sum(0)
        grad_W1 = rows.transpose_matmul(grad_hidden, grad_b1)
        return [grad_W1.reshape(C, T, d), grad_b1.reshape(T, d), grad_W2, grad_out.sum(0)]

    def _optimizer(self, params: list[Tensor]) -> torch.optim.Optimizer:
        """The optimizer over the trained parameters (the biases stay zero without ``fit_bias``)."""
        trained = params if self.fit_bias else params[0::2]
        if self.optimizer == "adam":
            return torch.optim.AdamW(trained, lr=self.lr, weight_decay=self.weight_decay, fused=True)
        return torch.optim.SGD(trained, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay, fused=True)

    def _keep_inputs(
        self, params: list[Tensor], optimizer: torch.optim.Optimizer, keep: Tensor
    ) -> tuple[list[Tensor], torch.optim.Optimizer]:
        """The parameters and optimizer (with its state) of the inputs ``keep`` (bool over the current ones)."""

        def select(t: Tensor, first_layer: bool) -> Tensor:
            return t[:, keep] if first_layer else t[keep]

        kept = [select(p, i == 0).clone() for i, p in enumerate(params)]
        new = self._optimizer(kept)
        for old_param, param in zip(optimizer.param_groups[0]["params"], new.param_groups[0]["params"], strict=True):
            first_layer = old_param is params[0]
            state = optimizer.state.get(old_param, {})
            new.state[param] = {k: select(v, first_layer).clone() if v.dim() else v.clone() for k, v in state.items()}
        return kept, new

    def fit(self, X: Any, Y: Any, prior: Any = None) -> ReluCollapseRegressor:
        """Choose every input's step count on the validation rows, then train it on all rows.

        ``prior`` (n_inputs, n_components), optional: a linear attribution in raw
        units that the networks start from (see :meth:`_initial_weights`).
        """
        X, Y = self._validate(X, Y)
        n_fit = len(X) - self.n_validation_

        def blocks(start: int, stop: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for lo in range(start, stop, _BLOCK_ROWS):
                yield X[lo : min(lo + _BLOCK_ROWS, stop)], Y[lo : min(lo + _BLOCK_ROWS, stop)]

        return self._fit_blocks(blocks(0, n_fit), blocks(n_fit, len(X)), prior)

    def fit_chunks(
        self,
        fit_chunks: Iterable[tuple[np.ndarray, np.ndarray]],
        validation_chunks: Iterable[tuple[np.ndarray, np.ndarray]],
        prior: Any = None,
    ) -> ReluCollapseRegressor:
        """Fit from blocks of (masks, outputs) rows, e.g. a store's chunks, without holding the masks whole.

        ``fit_chunks`` and ``validation_chunks`` are the fit rows and the
        validation rows (the last ones, as :meth:`fit` splits; none with
        ``early_stopping="none"``). The same model as :meth:`fit` on the
        concatenated rows; binary masks are kept only as the coordinates of
        their rare value (see :class:`_Rows`).
        """
        self._check_params()
        self._single_output = False
        return self._fit_blocks(fit_chunks, validation_chunks, prior)

    def _check_training(self) -> None:
        if min(self.hidden, self.max_steps, self.batch_size, self.check_every, self.patience) < 1:
            raise ValueError("hidden, max_steps, batch_size, check_every and patience must be positive")
        if self.early_stopping not in ("auto", "collapse", "network", "none"):
            raise ValueError(
                f"early_stopping must be 'auto', 'collapse', 'network' or 'none', got {self.early_stopping!r}"
            )
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum}")

    @torch.no_grad()  # gradients are computed by hand (see _gradients)
    def _fit_blocks(
        self,
        fit_chunks: Iterable[tuple[np.ndarray, np.ndarray]],
        validation_chunks: Iterable[tuple[np.ndarray, np.ndarray]],
        prior: Any,
    ) -> ReluCollapseRegressor:
        self._check_training()
        collected = [_RowCollector(self.device), _RowCollector(self.device)]
        for collector, chunks in zip(collected, (fit_chunks, validation_chunks), strict=True):
            for masks, outputs in chunks:
                collector.add(masks, outputs)
        n_fit, n_val = collected[0].n, collected[1].n
        if n_fit < 2 or (self._validates and n_val < 2):
            raise ValueError(f"{n_fit} fit and {n_val} validation masks are too few")
        if n_val and collected[0].n_columns != collected[1].n_columns:
            raise ValueError("the fit and validation masks have different numbers of components")
        self.n_features_in_, self.n_validation_ = collected[0].n_columns, n_val
        T = collected[0].n_outputs
        if prior is not None:
            prior = _check_prior(prior, T, self.n_features_in_, self.device)
        if self._validates:
            xs, ys = self._standardizers(collected[0])
            rows, B = collected[0].rows(xs, ys)
            val_rows, Bv = collected[1].rows(xs, ys)
            chosen, mse, spearman = self._select_steps(rows, B, val_rows, Bv, self._init_params(T, xs, ys, prior))
            self.validation_mse_ = (mse * ys.std**2).cpu().numpy()
            self.validation_spearman_ = spearman.cpu().numpy()
            del rows, val_rows
            collected[0].extend(collected[1])
        else:
            chosen = torch.full((T,), self.max_steps, dtype=torch.long)
        # The refit: every network from its initialisation, on all rows, for its chosen number of steps.
        xs, ys = self._standardizers(collected[0])
        rows, B = collected[0].rows(xs, ys)
        del collected
        final = self._train(rows, B, self._init_params(T, xs, ys, prior), stop=chosen.to(B.device))
        self.n_iter_ = chosen.cpu().numpy()
        # Step 0 keeps the initialisation: a failure when it is random, a choice when it encodes a prior.
        encoded = np.zeros(T, dtype=bool) if prior is None else (prior.abs().amax(1) > 0).cpu().numpy()
        self.failed_ = (self.n_iter_ == 0) & ~encoded
        collapse, bias, scale = self._collapsed(final, rows, B)
        if self._predictor == "collapse":  # a network predictor's collapse is for inspection only
            self.calibration_ = scale.cpu().numpy()
        coef, intercept = _unstandardize(collapse, bias, xs, ys)
        self._set_linear(coef, intercept)
        if self._predictor == "network":
            network = {"W1": final[0].permute(1, 2, 0), "b1": final[1], "W2": final[2], "b2": final[3]}
            network |= {"x_mean": xs.mean, "x_std": xs.std, "y_mean": ys.mean, "y_std": ys.std}
            self.network_ = {k: v.detach().cpu().contiguous().numpy() for k, v in network.items()}
        return self

    def _standardizers(self, collector: _RowCollector) -> tuple[_Standardizer, _Standardizer]:
        """The rows' z-scores (outputs only centred without ``standardize_targets``)."""
        xs, ys = collector.standardizers()
        if not self.standardize_targets:
            ys.std = torch.ones_like(ys.std)
        return xs, ys

    def _collapsed(self, params: list[Tensor], rows: _Rows, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The networks' collapse (T, C) and bias (T,) on standardised units, calibrated on ``rows``, and the factor."""
        theta, bias = collapse_relu_network(params[0].permute(1, 2, 0), *params[1:])
        if not self.calibrate:
            return theta, bias, torch.ones_like(bias)
        scale = _least_squares_scale(rows @ theta.T, target)
        return scale[:, None] * theta, torch.zeros_like(bias), scale

    def _predict(self, params: list[Tensor], rows: _Rows, fit_rows: _Rows, targets: Tensor) -> Tensor:
        """Predictions (n, T) of the returned predictor on ``rows`` (the collapse is calibrated on ``fit_rows``)."""
        if self._predictor == "network":
            return self._network(rows, params)
        collapse, bias, _ = self._collapsed(params, fit_rows, targets)
        return rows @ collapse.T + bias

    def _init_params(self, T: int, xs: _Standardizer, ys: _Standardizer, prior: Tensor | None) -> list[Tensor]:
        """Initial parameters of every network (see :meth:`_initial_weights`), the prior in standardised units."""
        if prior is not None:  # to standardised units: the inverse of _unstandardize
            prior = prior * (xs.std[None, :] / ys.std[:, None]).double()
        return self._initial_weights(T, len(xs.mean), prior)

    def _select_steps(
        self, rows: _Rows, B: Tensor, val_rows: _Rows, Bv: Tensor, params: list[Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Each input's best step count on the validation rows, and its predictor's validation MSE and Spearman."""
        on_network = (self.early_stopping if self.early_stopping != "auto" else self._predictor) == "network"
        T = B.shape[1]
        best = [p.clone() for p in params]
        best_step = torch.zeros(T, dtype=torch.long, device=B.device)
        best_loss = torch.zeros(T, dtype=B.dtype, device=B.device)
        stale = torch.zeros(T, dtype=torch.long, device=B.device)

        def check(step: int, params: list[Tensor], active: Tensor) -> Tensor:
            """Keep the ``active`` inputs' parameters where ``step`` improved; which of them go on training."""
            if on_network:
                pred = self._network(val_rows, params)
            else:
                pred = self._predict(params, val_rows, rows, B[:, active])
            loss = ((pred - Bv[:, active]) ** 2).mean(0)
            better = loss < best_loss[active] if step else torch.ones_like(loss, dtype=torch.bool)
            improved = active[better]
            best_loss[improved], best_step[improved] = loss[better], step
            best[0][:, improved] = params[0][:, better]  # W1 is (C, T, d)
            for kept, current in zip(best[1:], params[1:], strict=True):
                kept[improved] = current[better]
            stale[active] = torch.where(better, 0, stale[active] + self.check_every)
            return stale[active] < self.patience

        self._train(rows, B, params, check=check)
        # Scores of the predictor returned (the collapse, or the network), whatever chose the step.
        pred = self._predict(best, val_rows, rows, B)
        mse = ((pred - Bv) ** 2).mean(0)
        spearman, _ = lds_scores(pred.cpu().numpy(), Bv.cpu().numpy())
        return best_step, mse, torch.as_tensor(spearman)

    def _train(
        self,
        rows: _Rows,
        B: Tensor,
        params: list[Tensor],
        *,
        stop: Tensor | None = None,
        check: Any = None,
    ) -> list[Tensor]:
        """Train every network on ``rows`` (standardised masks) and ``B`` (standardised outputs), batch by batch.

        Either ``stop`` (T,): each input leaves after that many steps, and its
        parameters then are returned; or ``check(step, params, active)``, called
        at step 0 and every ``check_every`` steps, returning which of the
        ``active`` inputs go on. Inputs that leave drop out of the ensemble, so
        later steps cost only the rest. The batches run through a random
        permutation of the rows per epoch, seeded by ``random_state``; with
        no more rows than ``batch_size``, every step takes all rows in order.
        """
        n, T = len(rows), B.shape[1]
        final = [p.clone() for p in params] if stop is not None else []
        active = torch.arange(T, device=B.device)
        optimizer = self._optimizer(params)

        def leave(going: Tensor) -> bool:
            """Drop the inputs not ``going``; whether any are left."""
            nonlocal active, params, optimizer
            if stop is not None:
                done = active[~going]
                final[0][:, done] = params[0][:, ~going]  # W1 is (C, T, d)
                for out, current in zip(final[1:], params[1:], strict=True):
                    out[done] = current[~going]
            if not going.any():
                return False
            if not going.all():
                active = active[going]
                params, optimizer = self._keep_inputs(params, optimizer, going)
            return True

        first = stop > 0 if stop is not None else check(0, params, active)
        if not leave(first):
            return final
        order_generator = torch.Generator().manual_seed(self.random_state)
        order, position = torch.empty(0, dtype=torch.long), n
        full_batch = n <= self.batch_size  # every step sees all rows: no shuffling, no gathering
        for step in range(1, self.max_steps + 1):
            if full_batch:
                batch, targets = rows, B
            else:
                if position >= n:
                    order, position = torch.randperm(n, generator=order_generator).to(self.device), 0
                idx = order[position : position + self.batch_size]
                position += self.batch_size
                batch, targets = rows.take(idx), B[idx]
            hidden, out = self._forward(batch, params)
            residual = out - targets[:, active]
            for param, grad in zip(params, self._gradients(batch, hidden, residual, params), strict=True):
                param.grad = grad
            optimizer.step()
            if stop is not None:
                going = stop[active] > step
            elif step % self.check_every == 0:
                going = check(step, params, active)
            else:
                continue
            if not leave(going):
                return final
        return final


class LinearCollapseRegressor(ReluCollapseRegressor):
    """Control: the same 2-layer network and training as ReLU-collapse, with no ReLU.

    The network is then linear, and its collapse is exactly the network; any
    difference from :class:`ReluCollapseRegressor` is due to the ReLU.
    """

    _activation = "identity"


class PriorReluCollapseRegressor(ReluCollapseRegressor):
    """ReLU-collapse whose networks start from a prior attribution (the workflow's: attribution patching).

    Half of each network's units encode ``+a`` and half ``-a`` (see
    :meth:`ReluCollapseRegressor._initial_weights`), so at initialisation the
    collapse is the prior (plus the small random initialisation) and the network
    is linear along it; training then proceeds as for :class:`ReluCollapseRegressor`.
    """

    uses_prior = True


class ReluNetRegressor(ReluCollapseRegressor):
    """Control: the uncollapsed 2-layer ReLU network used directly as the predictor.

    Trained as :class:`ReluCollapseRegressor`, stopped early on the network's own
    validation MSE (``early_stopping="auto"``); ``predict`` runs the network. ``coef_`` and
    ``intercept_`` hold the network's collapse, for inspection only.
    """

    _predictor = "network"

    def predict(self, X: Any) -> np.ndarray:
        """Network outputs, (n_masks,) or (n_masks, n_inputs) as ``Y`` was at fit."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        out = predict_network(self.network_, X)
        return out[:, 0] if self._single_output else out


def predict_network(network: dict[str, np.ndarray], masks: np.ndarray) -> np.ndarray:
    """Outputs (n_masks, n_inputs) of saved 2-layer ReLU networks (``ReluNetRegressor.network_``)."""
    A = (np.asarray(masks, dtype=np.float32) - network["x_mean"]) / network["x_std"]
    T, d, C = network["W1"].shape
    hidden = np.maximum((A @ network["W1"].reshape(T * d, C).T).reshape(-1, T, d) + network["b1"], 0)
    return ((hidden * network["W2"]).sum(-1) + network["b2"]) * network["y_std"] + network["y_mean"]


ESTIMATORS: dict[str, type[_ComponentModel]] = {
    "coar": CoarRegressor,
    "ls_early_stopped": EarlyStoppedLeastSquaresRegressor,
    "ridge": RidgeCVRegressor,
    "lasso": LassoCVRegressor,
    "relu_collapse": ReluCollapseRegressor,
    "relu_collapse_raw": ReluCollapseRegressor,
    "linear_collapse": LinearCollapseRegressor,
    "relu_net": ReluNetRegressor,
    "gradient_prior": GradientPriorRegressor,
    "gradient_prior_lasso": GradientPriorRegressor,
    "relu_collapse_prior": PriorReluCollapseRegressor,
}
#: Defaults of registered names that share a class with another name.
ESTIMATOR_DEFAULTS: dict[str, dict[str, Any]] = {
    "gradient_prior_lasso": {"correction": "lasso"},
    # The seed's method as written: the raw collapse W2 W1, stopped on the network's own validation loss.
    "relu_collapse_raw": {"calibrate": False, "early_stopping": "network"},
}


def make_estimator(name: str, params: dict[str, Any] | None = None, **overrides: Any) -> _ComponentModel:
    """Build the estimator registered as ``name`` with ``params`` (and ``overrides``)."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; known: {sorted(ESTIMATORS)}")
    return ESTIMATORS[name](**{**ESTIMATOR_DEFAULTS.get(name, {}), **(params or {}), **overrides})
