"""The centred least-squares problem of a fit, from the rows' sums of products or from the rows themselves.

Iterative and eigenbasis fits (the lasso, the prior-corrected estimators) need only products with the
centred Gram matrix ``G = Xc'Xc / n``, the cross products ``Xc'yc``, and the eigenpairs of ``Xc'Xc`` with
nonzero eigenvalues. :class:`MomentForm` holds ``G`` (components x components); :class:`RowForm` holds
the masks (masks x components) and never forms it: the right one where masks are fewer than components.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse.linalg
import torch
from torch import Tensor

from compattr.estimators._base import Moments, Rows, column_slices

#: Masks up to which the largest eigenvalue comes from the dense masks x masks matrix, not by Lanczos.
DENSE_EIGENVALUES = 512


@dataclass
class Eigenbasis:
    """Eigenpairs of the centred Gram matrix ``Xc'Xc`` (not divided by n), as products with ``V``.

    ``e`` (k,) ascending and at least 0; ``project(M)`` is ``V' M`` for ``M`` (C, T), ``expand(c)`` is
    ``V c`` for ``c`` (k, T). The row form keeps the nonzero eigenvalues only: the rest carry nothing
    of ``Xc'y`` (it lies in the span of the others).
    """

    e: Tensor
    project: Callable[[Tensor], Tensor]
    expand: Callable[[Tensor], Tensor]


class LeastSquares:
    """Centred least squares on fit rows: ``G = Xc'Xc / n``, ``q = Xc'yc / n``, and sums over the rows."""

    n: int
    #: Column means of the masks (C,) and of the outputs (T,), float64.
    x_mean: Tensor
    y_mean: Tensor
    _basis: Eigenbasis | None = None

    def cross(self) -> Tensor:
        """``Xc'yc`` (C, T), float64."""
        raise NotImplementedError

    def q(self, dtype: torch.dtype) -> Tensor:
        """``Xc'yc / n`` (C, T) in ``dtype``."""
        return (self.cross() / self.n).to(dtype)

    def gram_times(self, W: Tensor) -> Tensor:
        """``G W`` for ``W`` (C, k), in ``W``'s dtype."""
        raise NotImplementedError

    def descent(self, Z: Tensor, shift: Tensor, step: float) -> Tensor:
        """A gradient step of the quadratic from ``Z``: ``Z - step G Z + shift`` (``shift = step q``)."""
        return torch.add(Z + shift, self.gram_times(Z), alpha=-step)

    def lipschitz(self, dtype: torch.dtype) -> float:
        """The largest eigenvalue of ``G`` (at least 1e-12): the gradient steps' Lipschitz constant."""
        raise NotImplementedError

    def eigenbasis(self) -> Eigenbasis:
        """The eigenpairs of ``Xc'Xc``, float64; computed once."""
        if self._basis is None:
            self._basis = self._eigenbasis()
        return self._basis

    def _eigenbasis(self) -> Eigenbasis:
        raise NotImplementedError

    def sse(self, coef: Tensor, intercept: Tensor) -> Tensor:
        """Sum of squared residuals of ``y ~ coef' x + intercept`` over the rows, per output (T,)."""
        raise NotImplementedError

    def __add__(self, other: LeastSquares) -> LeastSquares:
        raise NotImplementedError


class MomentForm(LeastSquares):
    """The problem from :class:`Moments`: ``G`` held as a components x components matrix."""

    def __init__(self, moments: Moments) -> None:
        self.moments = moments
        self.n, self.x_mean, self.y_mean = moments.n, moments.x_mean, moments.y_mean
        self._gram: dict[torch.dtype, Tensor] = {}

    def _g(self, dtype: torch.dtype) -> Tensor:
        if dtype not in self._gram:
            self._gram[dtype] = (self.moments.gram() / self.n).to(dtype)
        return self._gram[dtype]

    def cross(self) -> Tensor:
        return self.moments.cross()

    def gram_times(self, W: Tensor) -> Tensor:
        return self._g(W.dtype) @ W

    def descent(self, Z: Tensor, shift: Tensor, step: float) -> Tensor:
        return torch.addmm(Z + shift, self._g(Z.dtype), Z, alpha=-step)

    def lipschitz(self, dtype: torch.dtype) -> float:
        gram = self._g(dtype)
        # On CUDA in float64: cuSOLVER is faster there than in float32 (H100, 336 x 336: 3.2 ms against 7.3 ms).
        return float(torch.linalg.eigvalsh(gram.double() if gram.is_cuda else gram).max().clamp_min(1e-12))

    def _eigenbasis(self) -> Eigenbasis:
        e, V = torch.linalg.eigh(self.moments.gram())
        return Eigenbasis(e.clamp_min(0), lambda M: V.T @ M, lambda c: V @ c)

    def sse(self, coef: Tensor, intercept: Tensor) -> Tensor:
        return self.moments.sse(coef, intercept)

    def __add__(self, other: LeastSquares) -> MomentForm:
        assert isinstance(other, MomentForm)
        return MomentForm(self.moments + other.moments)


class RowForm(LeastSquares):
    """The problem from the rows: masks ``X`` (n, C) as given (bool stays bool), outputs ``Y`` (n, T).

    Products with ``G`` go through the centred masks, ``Xc'(Xc W) / n``, held dense in the
    products' precision once asked for (n x C); sums and eigenpairs run in float64 by column slices.
    """

    def __init__(self, X: Tensor, Y: Tensor, device: str | torch.device) -> None:
        self.X, self.device = X, device
        self.Y = Y.to(device, torch.float64)
        self.n = len(X)
        self.x_mean = torch.cat([self._slice(cols).sum(0) for cols in column_slices(X)]) / self.n
        self.y_mean = self.Y.mean(0)
        self._dense: dict[torch.dtype, Tensor] = {}
        self._cross: Tensor | None = None

    def _slice(self, cols: slice, centred: bool = False) -> Tensor:
        a = self.X[:, cols].to(self.device, torch.float64)
        return a - self.x_mean[cols] if centred else a

    def centred(self, dtype: torch.dtype) -> Tensor:
        """The centred masks (n, C) in ``dtype``, kept for later products."""
        if dtype not in self._dense:
            A = torch.empty(self.X.shape, dtype=dtype, device=self.device)
            for cols in column_slices(self.X):
                A[:, cols] = self._slice(cols, centred=True)
            self._dense[dtype] = A
        return self._dense[dtype]

    def cross(self) -> Tensor:
        if self._cross is None:
            yc = self.Y - self.y_mean
            self._cross = torch.cat([self._slice(cols, centred=True).T @ yc for cols in column_slices(self.X)])
        return self._cross

    def gram_times(self, W: Tensor) -> Tensor:
        A = self.centred(W.dtype)
        return A.T @ (A @ W) / self.n

    def descent(self, Z: Tensor, shift: Tensor, step: float) -> Tensor:
        A = self.centred(Z.dtype)
        return torch.addmm(Z + shift, A.T, A @ Z, alpha=-step / self.n)

    def lipschitz(self, dtype: torch.dtype) -> float:
        """From ``Xc Xc' / n`` (masks x masks): by Lanczos from a fixed start, raised by 1e-6 of itself.

        The margin keeps the steps stable where Lanczos stops just below the largest eigenvalue.
        A few hundred masks take the dense eigenvalues.
        """
        A = self.centred(dtype)

        def times(u: np.ndarray) -> np.ndarray:
            v = torch.as_tensor(u.ravel(), dtype=dtype, device=A.device)
            return (A @ (A.T @ v) / self.n).double().cpu().numpy()

        if self.n <= DENSE_EIGENVALUES:
            value = float(torch.linalg.eigvalsh((A @ A.T).double() / self.n).max())
        else:
            operator = scipy.sparse.linalg.LinearOperator((self.n, self.n), matvec=times, dtype=np.float64)
            start = np.random.default_rng(0).standard_normal(self.n)  # not ones: centred rows sum to zero
            value = float(scipy.sparse.linalg.eigsh(operator, k=1, which="LA", v0=start, tol=1e-8)[0][0])
        return max(value * (1 + 1e-6), 1e-12)

    def _eigenbasis(self) -> Eigenbasis:
        """From ``Xc Xc'`` (n, n): its eigenvalues above rounding are those of ``Xc'Xc``, ``V = Xc' U / sqrt(e)``."""
        slices = column_slices(self.X)
        K = torch.zeros(self.n, self.n, dtype=torch.float64, device=self.device)
        for cols in slices:
            a = self._slice(cols, centred=True)
            K += a @ a.T
        e, U = torch.linalg.eigh(K)
        kept = e > self.X.shape[1] * torch.finfo(e.dtype).eps * e.max().clamp_min(1e-300)
        e, U = e[kept], U[:, kept]
        root = e.sqrt()

        def project(M: Tensor) -> Tensor:
            XM = sum(self._slice(cols, centred=True) @ M[cols] for cols in slices)
            return (U.T @ XM) / root[:, None]

        def expand(c: Tensor) -> Tensor:
            weights = U @ (c / root[:, None])
            return torch.cat([self._slice(cols, centred=True).T @ weights for cols in slices])

        return Eigenbasis(e, project, expand)

    def sse(self, coef: Tensor, intercept: Tensor) -> Tensor:
        pred = sum(self._slice(cols) @ coef[cols].double() for cols in column_slices(self.X))
        return ((pred + intercept - self.Y) ** 2).sum(0)

    def __add__(self, other: LeastSquares) -> RowForm:
        assert isinstance(other, RowForm)
        return RowForm(torch.cat([self.X, other.X]), torch.cat([self.Y, other.Y]), self.device)


def least_squares(rows: Rows, device: str | torch.device) -> LeastSquares:
    """The problem of ``rows``: the row form while they are held, else the moment form."""
    if rows.moments is None and rows.X is not None:
        return RowForm(rows.X, rows.Y, device)
    return MomentForm(rows.summed(device))
