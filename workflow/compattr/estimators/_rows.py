"""Rows of masks and outputs held for the 2-layer fits: dense, or for binary masks as sparse coordinates."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from compattr.estimators._base import Standardizer, check_block

#: Largest share of rare entries in binary masks for which the 2-layer fits use sparse products
#: (on CPU). Measured on 2 cores, masks 256 x 336 times a 336 x 3,200 first layer, forward plus
#: gradient: 1.2 ms sparse vs 5.8 ms dense at 5%, 4.5 vs 5.9 ms at 20%; about even near 35%.
_SPARSE_MAX_DENSITY = 0.2

_INT16_MAX = np.iinfo(np.int16).max

#: A sparse matrix as the bags of :func:`torch.nn.functional.embedding_bag`: for each of its rows,
#: the columns of its entries (concatenated), where each row's columns start, and the entries.
_Bags = tuple[Tensor, Tensor, Tensor]


def _bag_product(bags: _Bags, W: Tensor) -> Tensor:
    """``S @ W`` for the sparse ``S`` held as ``bags``: per row, the weighted sum of the rows of ``W`` it names."""
    columns, starts, entries = bags
    W = W.contiguous()
    return torch.nn.functional.embedding_bag(columns, W, starts, mode="sum", per_sample_weights=entries.to(W.dtype))


class Rows:
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

    def take(self, rows: Tensor) -> Rows:
        """The rows ``rows`` (indices), in the same form."""
        if self.dense is not None:
            return Rows(self.mean, self.std, dense=self.dense[rows])
        starts, counts = self.offsets[rows], self.offsets[rows + 1] - self.offsets[rows]
        first = torch.cat([counts.new_zeros(1), counts.cumsum(0)[:-1]])
        where = torch.repeat_interleave(starts - first, counts) + torch.arange(int(counts.sum()), device=counts.device)
        return Rows(self.mean, self.std, sparse=(counts, self.columns[where], self.rare))

    def _sparse(self, transposed: bool) -> _Bags:
        """The bags of ``s`` (n, C), or with ``transposed`` those of its transpose (C, n); each built once."""
        if self._bags[transposed] is None:
            entries = self.values[self.columns]
            if transposed:
                n, C = len(self), len(self.mean)
                row = torch.repeat_interleave(torch.arange(n, device=entries.device), self.offsets.diff())
                # Sparse rows live on the CPU; numpy's stable sort, not torch.argsort (5x slower inside the fit
                # loop), on 16-bit keys where the columns fit, which numpy sorts by radix (9x faster again).
                keys = self.columns.numpy()
                order = torch.from_numpy(np.argsort(keys.astype(np.int16) if C <= _INT16_MAX else keys, kind="stable"))
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


class RowCollector:
    """Gathers blocks of masks and outputs (from an array or a store) into :class:`Rows`.

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

    def add(self, X: Any, Y: Any) -> None:
        """Append the rows of ``X`` (n, C) and ``Y`` (n, T) (checked by :func:`check_block`)."""
        x, y = check_block(X, Y, (self.n_columns, self.n_outputs) if self.sums else None)
        y = y.float()
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

    def standardizers(self) -> tuple[Standardizer, Standardizer]:
        """Column z-scores of the masks and of the outputs gathered."""
        x, xx, y, yy = (t.to(self.device) for t in self.sums)
        return Standardizer(self.n, x, xx), Standardizer(self.n, y, yy)

    def extend(self, other: RowCollector) -> None:
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

    def rows(self, xs: Standardizer, ys: Standardizer) -> tuple[Rows, Tensor]:
        """The masks standardised by ``xs`` and the outputs by ``ys`` (the raw blocks are kept, joined in one)."""
        if self.sparse and self.n_rare > _SPARSE_MAX_DENSITY * self.n * self.n_columns:
            self._densify()
        self.outputs = [torch.cat(self.outputs)]
        outputs = (self.outputs[0] - ys.mean) / ys.std
        if self.sparse:
            counts = torch.cat([c for c, _ in self.blocks])
            columns = torch.cat([c for _, c in self.blocks])
            self.blocks = [(counts, columns)]
            rows = Rows(xs.mean, xs.std, sparse=(counts.to(self.device), columns.to(self.device), self.rare))
        else:
            self.blocks = [torch.cat(self.blocks)]
            rows = Rows(xs.mean, xs.std, dense=(self.blocks[0] - xs.mean) / xs.std)
        return rows, outputs
