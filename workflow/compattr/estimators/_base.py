"""What every component model shares: moments of rows, standardisation, the fit protocol, prior checks."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np
import psutil
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import Tensor

#: A block of rows: masks (n, C) and outputs (n,) or (n, T), as arrays or tensors.
Block = tuple[Any, Any]
#: The constraint of every estimator's ``validation_fraction``: the share of rows held out, in (0, 1).
VALIDATION_FRACTION: list[Any] = [Interval(Real, 0, 1, closed="neither")]
#: Rows per block when masks given as one array are cut into blocks (bounds the temporary copies).
BLOCK_ROWS = 4096
#: Bytes every fit's estimate adds for what a fit allocates whatever its size (libraries' buffers, thread pools).
FIT_OVERHEAD = 2**28
#: Float64 elements of the column slice of masks a masks x masks (dual) fit converts at once (128 MB).
DUAL_SLICE = 2**24


class InsufficientMemoryError(MemoryError):
    """A fit that would need more memory than its device has free: raised before any work."""


def available_memory(device: str | torch.device) -> int:
    """Bytes free for a fit on ``device``: the GPU's free memory, or the host's available memory."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


def gib(n_bytes: float) -> str:
    """A byte count in GiB, for messages."""
    return f"{n_bytes / 2**30:.1f} GiB"


class Standardizer:
    """Column z-scores from the count, sums and sums of squares of the fit rows; constant columns keep a scale of 1."""

    def __init__(self, n: int, total: Tensor, squares: Tensor) -> None:
        mean = total / n
        variance = (squares / n - mean**2).clamp_min(0)
        constant = variance <= 1e-12 * (squares / n)  # zero up to the rounding of the sums
        self.mean = mean.float()
        self.std = moment_std(torch.where(constant, 0.0, variance)).float()
        #: Columns with one value on every row (a component never, or always, ablated): they carry no information.
        self.constant = constant


def unstandardize(theta: Tensor, bias: Tensor, xs: Standardizer, ys: Standardizer) -> tuple[Tensor, Tensor]:
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
    is summarised block by block (:func:`sum_moments`).
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


class RunningBest:
    """Per output, the lowest loss seen so far (of equals, the lowest index), the index it came with, and its states.

    ``update(loss (T,), index, *states)``: each state's last axis is the outputs (e.g. coefficients (C, T)).
    Indices may come in any order.
    """

    def __init__(self) -> None:
        self.loss: Tensor | None = None
        self.index: Tensor | None = None
        self.states: list[Tensor] = []

    def update(self, loss: Tensor, index: int, *states: Tensor) -> None:
        """Keep ``loss``, ``index`` and ``states`` for the outputs where ``loss`` is lower than the best so far
        (or equal to it, with a lower index)."""
        if self.loss is None:
            better = torch.ones_like(loss, dtype=torch.bool)
        else:
            better = (loss < self.loss) | ((loss == self.loss) & (self.index > index))
        self.loss = loss if self.loss is None else torch.where(better, loss, self.loss)
        self.index = torch.where(better, index, 0 if self.index is None else self.index)
        kept = self.states or states
        self.states = [torch.where(better, new, old) for new, old in zip(states, kept, strict=True)]


def centred_intercept(coef: Tensor, moments: Any) -> Tensor:
    """Intercepts (T,) that centre the linear models ``coef`` (C, T) on the means of ``moments``.

    ``moments``: :class:`Moments` or a least-squares problem (anything with ``x_mean`` and ``y_mean``).
    """
    return moments.y_mean - coef.T @ moments.x_mean


class ComponentModel(RegressorMixin, BaseEstimator):
    """Base of the multi-output linear component models: parameter checks, the fit protocol, prediction.

    One fit protocol serves every estimator: :meth:`fit_blocks` takes the fit
    rows and the validation rows as iterables of ``(masks, outputs)`` blocks
    (e.g. a store's chunks), and :meth:`fit` cuts arrays into such blocks, its
    last ``validation_fraction`` of rows being the validation split. Subclasses
    implement ``_fit_blocks``; those that need only sums of products derive
    from :class:`MomentModel`. Parameters are checked at fit against
    ``_parameter_constraints``, as scikit-learn's estimators do.
    """

    _parameter_constraints: dict[str, list[Any]] = {"device": [str, torch.device]}
    validation_fraction: float
    device: str
    #: Whether :meth:`fit` takes a prior attribution (the workflow passes first-order ones).
    uses_prior: bool = False
    #: Whether the estimator chooses something on a validation split (then refits on all rows).
    _validates: bool = True

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True  # one fit serves every input (column of Y)
        return tags

    def memory_bytes(self, n_masks: int, n_components: int, n_inputs: int) -> int:
        """Estimated peak memory (bytes) of a fit on that many masks (held as bool), components and inputs.

        Above what the process held before; measured against the peaks in ``results/bench/scale.json``.
        """
        return FIT_OVERHEAD + self._memory_bytes(n_masks, n_components, n_inputs)

    def _memory_bytes(self, n_masks: int, n_components: int, n_inputs: int) -> int:
        return 9 * 8 * n_components**2 + 4 * 8 * n_components * n_inputs  # the moments' Gram matrices

    def memory_advice(self, n_masks: int, n_components: int) -> str:
        """Which settings lower :meth:`memory_bytes`, for the error of :meth:`check_memory`."""
        return "fewer components (coarser units)"

    def check_memory(
        self, n_masks: int, n_components: int, n_inputs: int, available: int | None = None, extra: int = 0
    ) -> None:
        """Raise :class:`InsufficientMemoryError` before any work if the fit needs more than ``available``.

        ``available``: bytes free (default: :func:`available_memory` of the estimator's device);
        ``extra``: bytes the fit needs besides its own (estimators fitted with it, say).
        """
        need = self.memory_bytes(n_masks, n_components, n_inputs) + extra
        free = available_memory(self.device) if available is None else available
        if need > free:
            raise InsufficientMemoryError(
                f"{type(self).__name__} on {n_masks:,} masks x {n_components:,} components x {n_inputs:,} inputs "
                f"needs about {gib(need)} on {self.device}, where {gib(free)} is free: "
                f"{self.memory_advice(n_masks, n_components)}, fewer inputs, or a device with more memory"
            )

    def n_validation(self, n_rows: int) -> int:
        """Number of validation rows (the last ones) of a fit on ``n_rows`` masks (0: no validation split)."""
        return math.ceil(self.validation_fraction * n_rows) if self._validates else 0

    def fit(self, X: Any, Y: Any, **fit_params: Any) -> ComponentModel:
        """Fit on masks ``X`` (n_masks, n_components) and outputs ``Y`` (n_masks,) or (n_masks, n_inputs).

        The last :meth:`n_validation` rows are the validation split of an
        estimator that chooses something on one; ``fit_params`` as the
        estimator takes them (e.g. ``prior``).
        """
        self._validate_params()
        shape, y_shape = getattr(X, "shape", ()), getattr(Y, "shape", ())  # arrays: checked before any copy
        if len(shape) == 2 and len(y_shape) in (1, 2):
            self.check_memory(shape[0], shape[1], 1 if len(y_shape) == 1 else y_shape[1])
        # Bool masks (as stores hold them) and float32 stay as they are: no float64 copy of the rows.
        X, Y = validate_data(self, X, Y, multi_output=True, y_numeric=True, dtype=[np.float64, np.float32, np.bool_])
        self._single_output = Y.ndim == 1
        Y = Y.reshape(len(Y), -1)
        n_fit = len(X) - self.n_validation(len(X))
        self._fit_blocks(_array_blocks(X, Y, 0, n_fit), _array_blocks(X, Y, n_fit, len(X)), **fit_params)
        return self

    def fit_blocks(
        self,
        fit_blocks: Iterable[tuple[Any, Any]],
        validation_blocks: Iterable[tuple[Any, Any]] = (),
        **fit_params: Any,
    ) -> ComponentModel:
        """Fit from blocks of ``(masks, outputs)`` rows, without holding the masks whole.

        ``fit_blocks`` and ``validation_blocks`` are the fit rows and the
        validation rows (the last ones, as :meth:`fit` splits; none for an
        estimator without a validation split). The same model as :meth:`fit` on
        the concatenated rows, up to rounding; the outputs are (n, n_inputs).
        Blocks do not say how many rows they hold: a caller that knows calls
        :meth:`check_memory` first (:func:`compattr.fitting.fit_on_store` does).
        """
        self._validate_params()
        self._single_output = False
        self._fit_blocks(iter(fit_blocks), iter(validation_blocks), **fit_params)
        return self

    def _fit_blocks(self, fit_blocks: Iterator[Block], validation_blocks: Iterator[Block], **fit_params: Any) -> None:
        raise NotImplementedError

    def _check_rows(self, n_fit: int, n_val: int, n_components: int) -> None:
        """Reject too few fit or validation rows; record the number of components and of validation rows."""
        if n_fit < 2 or (self._validates and n_val < 2):
            split = f"a {self.validation_fraction:.0%} validation split" if self._validates else "a fit"
            raise ValueError(f"n_samples={n_fit + n_val}: too few masks for {split} ({n_fit} fit, {n_val} validation)")
        if not self._validates and n_val:
            raise ValueError(f"{type(self).__name__} has no validation split; it was given {n_val} validation rows")
        self.n_features_in_ = n_components
        self.n_validation_ = n_val

    def _set_linear(self, coef: Tensor, intercept: Tensor) -> None:
        coef_np = coef.detach().double().cpu().numpy()
        intercept_np = intercept.detach().double().cpu().numpy()
        if not (np.isfinite(coef_np).all() and np.isfinite(intercept_np).all()):
            bad = np.flatnonzero(~np.isfinite(np.atleast_2d(coef_np)).all(axis=1) | ~np.isfinite(intercept_np))
            raise FloatingPointError(f"{type(self).__name__} fitted non-finite coefficients for inputs {bad[:10]}")
        self.coef_ = coef_np[0] if self._single_output else coef_np
        self.intercept_ = intercept_np[0] if self._single_output else intercept_np

    def predict(self, X: Any) -> np.ndarray:
        """Predicted outputs, (n_masks,) or (n_masks, n_inputs) as ``Y`` was at fit."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return X @ self.coef_.T + self.intercept_


class MomentModel(ComponentModel):
    """A component model fitted from the :class:`Moments` of its fit and validation rows alone.

    Memory does not grow with the number of masks: every block is reduced to
    its sums of products on ``device`` as it arrives. Subclasses implement
    ``_fit_moments(fit, val, **fit_params)`` (``val`` None without a validation split).
    """

    def _fit_blocks(self, fit_blocks: Iterator[Block], validation_blocks: Iterator[Block], **fit_params: Any) -> None:
        fit = sum_moments(fit_blocks, self.device)
        val = sum_moments(validation_blocks, self.device, like=fit)
        self._check_rows(0 if fit is None else fit.n, 0 if val is None else val.n, 0 if fit is None else len(fit.x))
        self._fit_moments(fit, val, **fit_params)

    def _fit_moments(self, fit: Moments, val: Moments | None, **fit_params: Any) -> None:
        raise NotImplementedError


class DualFormModel(MomentModel):
    """A moment model that works in the masks x masks form while the masks are fewer than the components.

    ``dual``: True takes that form, False the components x components one (the moments),
    ``"auto"`` the smaller. Subclasses read their rows with :meth:`_gather` and give the
    memory of each form to :meth:`_form_memory`.
    """

    _parameter_constraints: dict[str, list[Any]] = {
        **MomentModel._parameter_constraints,
        "dual": [StrOptions({"auto"}), "boolean"],
    }
    dual: str | bool

    def _takes_dual(self, n_masks: int, n_components: int) -> bool:
        return self.dual is True or (self.dual == "auto" and n_masks < n_components)

    def _form_memory(self, n_masks: int, n_components: int, dual: int, primal: int) -> int:
        """``dual`` bytes where a fit on these masks takes the masks x masks form, else ``primal``."""
        return dual if self._takes_dual(n_masks, n_components) else primal

    def memory_advice(self, n_masks: int, n_components: int) -> str:
        if self._takes_dual(n_masks, n_components):
            return "fewer masks (the masks x masks form grows with their square)"
        return "fewer masks than components (dual='auto' then works in the masks x masks form), fewer components"

    def _gather(self, fit_blocks: Iterator[Block], validation_blocks: Iterator[Block]) -> tuple[Rows, Rows]:
        """The fit and validation rows (:func:`gather_split`), checked; sets ``dual_``."""
        fit, val = gather_split(fit_blocks, validation_blocks, self.device, self.dual)
        self._check_rows(fit.n, val.n, 0 if fit.shape is None else fit.shape[0])
        self.dual_ = fit.moments is None
        return fit, val


def _array_blocks(X: np.ndarray, Y: np.ndarray, start: int, stop: int) -> Iterator[Block]:
    """Rows ``start:stop`` of ``X`` and ``Y`` in blocks of :data:`BLOCK_ROWS`."""
    for lo in range(start, stop, BLOCK_ROWS):
        hi = min(lo + BLOCK_ROWS, stop)
        yield X[lo:hi], Y[lo:hi]


def check_block(masks: Any, outputs: Any, like: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """A block of rows as tensors, masks (n, C) and outputs (n, T); errors for bad shapes or values.

    ``like`` is the (C, T) of the blocks before it, which this one must match.
    """
    x = torch.as_tensor(np.asarray(masks) if not isinstance(masks, Tensor) else masks)
    y = torch.as_tensor(np.asarray(outputs) if not isinstance(outputs, Tensor) else outputs)
    if x.ndim != 2 or len(y) != len(x) or y.ndim > 2:
        raise ValueError(f"a block of {tuple(x.shape)} masks and {tuple(y.shape)} outputs: need (n, C) and (n, T)")
    y = y.reshape(len(x), -1)
    if like is not None and (x.shape[1], y.shape[1]) != like:
        raise ValueError(
            f"a block of {tuple(x.shape)} masks, {tuple(y.shape)} outputs does not match the others "
            f"({like[0]} components, {like[1]} outputs)"
        )
    if not (bool(torch.isfinite(y).all()) and (x.dtype == torch.bool or bool(torch.isfinite(x).all()))):
        raise ValueError("masks or outputs contain NaN or infinity")
    return x, y


def sum_moments(blocks: Iterable[Block], device: str | torch.device, like: Moments | None = None) -> Moments | None:
    """The :class:`Moments` of blocks of rows, each reduced on ``device`` as it comes (None for no rows).

    ``like``: moments the blocks must match in numbers of components and outputs.
    """
    total = None
    shape = None if like is None else (len(like.x), len(like.y))
    for masks, outputs in blocks:
        x, y = check_block(masks, outputs, shape)
        shape = (x.shape[1], y.shape[1])
        block = Moments.of(x.to(device), y.to(device))
        total = block if total is None else total + block
    return total


@dataclass
class Rows:
    """Rows of blocks: held as given (bool masks stay bool) while the masks x masks form may serve, else summed.

    ``X`` (n, C) and ``Y`` (n, T) while held, ``moments`` once summed (then ``X`` and ``Y`` are None).
    """

    n: int
    shape: tuple[int, int] | None
    X: Tensor | None = None
    Y: Tensor | None = None
    moments: Moments | None = None

    def summed(self, device: str | torch.device) -> Moments | None:
        """The rows' :class:`Moments` (None for no rows)."""
        if self.moments is None and self.X is not None:
            self.moments, self.X, self.Y = Moments.of(self.X.to(device), self.Y.to(device)), None, None
        return self.moments


def gather_rows(
    blocks: Iterable[Block],
    device: str | torch.device,
    dual: str | bool,
    like: tuple[int, int] | None = None,
    before: int = 0,
) -> Rows:
    """The rows of ``blocks``, held while the dual form may serve, else reduced to :class:`Moments` as they come.

    ``dual``: True holds every row, False sums every block, ``"auto"`` holds rows while they (and
    ``before`` rows held elsewhere, e.g. the fit rows of a validation split) are fewer than the
    components. ``like`` is the (C, T) the blocks must match.
    """
    held: list[tuple[Tensor, Tensor]] = []
    moments, shape, n = None, like, 0
    for masks, outputs in blocks:
        x, y = check_block(masks, outputs, shape)
        shape = (x.shape[1], y.shape[1])
        n += len(x)
        if moments is not None:
            moments = moments + Moments.of(x.to(device), y.to(device))
            continue
        held.append((x, y))
        if dual is False or (dual == "auto" and before + n >= shape[0]):
            moments, held = sum_moments(held, device), []
    if moments is not None or not held:
        return Rows(n, shape, moments=moments)
    return Rows(n, shape, torch.cat([x for x, _ in held]), torch.cat([y for _, y in held]))


def gather_split(
    fit_blocks: Iterable[Block], validation_blocks: Iterable[Block], device: str | torch.device, dual: str | bool
) -> tuple[Rows, Rows]:
    """Fit and validation rows (:func:`gather_rows`), both held for the masks x masks form or both summed."""
    fit = gather_rows(fit_blocks, device, dual)
    val = gather_rows(validation_blocks, device, dual if fit.moments is None else False, like=fit.shape, before=fit.n)
    if fit.moments is not None or val.moments is not None:
        fit.summed(device)
        val.summed(device)
    return fit, val


def column_slices(X: Tensor) -> list[slice]:
    """Column slices of masks ``X`` (n, C) of at most :data:`DUAL_SLICE` elements each: the dual forms' unit of work."""
    step = max(1, DUAL_SLICE // max(len(X), 1))
    return [slice(lo, min(lo + step, X.shape[1])) for lo in range(0, X.shape[1], step)]


def standardized_gram(moments: Moments) -> tuple[Tensor, Tensor, Tensor]:
    """The masks' column scales and, on masks standardised by them, ``A'A / n`` and ``A'(y - mean y) / n``.

    Constant columns (a component never or always ablated) keep a scale of 1:
    centred, they are zero.
    """
    x_std = moment_std(moments.gram().diagonal() / moments.n)
    gram = moments.gram() / moments.n / torch.outer(x_std, x_std)
    return x_std, gram, moments.cross() / moments.n / x_std[:, None]


def moment_std(variance: Tensor) -> Tensor:
    """Standard deviations from variances; constant columns (variance 0) keep a scale of 1."""
    std = variance.clamp_min(0).sqrt()
    return torch.where(std > 0, std, torch.ones_like(std))


def check_prior(prior: Any, T: int, C: int, device: str) -> Tensor:
    """The prior as a (T, C) float64 tensor; zeros when ``prior`` is None."""
    if prior is None:
        return torch.zeros(T, C, dtype=torch.float64, device=device)
    prior = np.atleast_2d(np.asarray(prior, dtype=np.float64))
    if prior.shape != (T, C):
        raise ValueError(f"prior has shape {prior.shape}; expected (n_inputs, n_components) = ({T}, {C})")
    if not np.isfinite(prior).all():
        raise ValueError("prior contains NaN or infinite values")
    return torch.as_tensor(prior, dtype=torch.float64, device=device)


def check_priors(prior: Any, T: int, C: int, device: str) -> Tensor:
    """One prior (T, C) or several candidates (P, T, C), as a (P, T, C) float64 tensor (zeros when None)."""
    if prior is not None and np.ndim(prior) == 3:
        if len(prior) == 0:
            raise ValueError("prior holds no candidate priors")
        return torch.stack([check_prior(p, T, C, device) for p in prior])
    return check_prior(prior, T, C, device)[None]
