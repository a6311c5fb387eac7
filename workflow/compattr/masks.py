"""Random ablation masks, drawn shard by shard from a mask store's own seed, and the repair of damaged stores.

Numpy and Zarr only (no torch), so jobs that only read stores start quickly; the forward passes
that the masks go through are :mod:`compattr.sampling`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import zarr

from compattr.stores import (
    NonFiniteMarginError,
    StoreIntegrityError,
    check_mask_store,
    mask_store_settings,
    shard_rows,
)

__all__ = ["bernoulli_masks", "shard_masks", "expected_shard_masks", "resampling_damaged_shards"]


def bernoulli_masks(n_masks: int, n_units: int, ablation_rate: float, rng: np.random.Generator) -> np.ndarray:
    """``(n_masks, n_units)`` bool masks, each unit ablated (True) independently with probability ``ablation_rate``."""
    if not 0.0 <= ablation_rate <= 1.0:
        raise ValueError(f"ablation_rate must lie in [0, 1], got {ablation_rate}")
    return rng.random((n_masks, n_units)) < ablation_rate


def shard_masks(seed: int, shard: int, n_masks: int, n_units: int, ablation_rate: float) -> np.ndarray:
    """The masks of one shard, drawn from a generator keyed by ``(seed, shard)`` alone."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(shard,)))
    return bernoulli_masks(n_masks, n_units, ablation_rate, rng)


def expected_shard_masks(path: str | Path, shard: int) -> np.ndarray:
    """The masks shard ``shard`` of a store holds: drawn from the store's own seed and ablation rate."""
    settings = mask_store_settings(path)
    masks_arr = zarr.open_group(str(path), mode="r")["masks"]
    start, stop = shard_rows(masks_arr, shard)
    return shard_masks(settings["seed"], shard, stop - start, masks_arr.shape[1], settings["ablation_rate"])


@contextlib.contextmanager
def resampling_damaged_shards() -> Iterator[None]:
    """Within: a damaged mask store that is read marks its faulty shards for sampling again, then raises.

    A :class:`~compattr.stores.StoreIntegrityError` or :class:`~compattr.stores.NonFiniteMarginError`
    raised by a mask store's reader leads to :func:`compattr.stores.check_mask_store` with
    ``repair=True`` on that store: every faulty shard (not only the first one read) loses its
    manifest, so the workflow's next run samples exactly those shards again. Errors of other stores
    (fits) pass through unchanged.
    """
    try:
        yield
    except (StoreIntegrityError, NonFiniteMarginError) as error:
        store = error.store
        if store is None or not _is_mask_store(store):
            raise
        check_mask_store(store, partial(expected_shard_masks, store), repair=True)
        raise  # the check found nothing to mark: report the reader's own error


def _is_mask_store(path: str | Path) -> bool:
    """Whether ``path`` is a mask store (a group with ``masks`` and ``margins`` that records its seed)."""
    try:
        group = zarr.open_group(str(path), mode="r")
        return "seed" in group.attrs and all(name in group for name in ("masks", "margins"))
    except (FileNotFoundError, ValueError, KeyError):
        return False
