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

from compattr.stores import MaskStore, NonFiniteMarginError, StoreIntegrityError, check_mask_store

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


def expected_shard_masks(store: str | Path | MaskStore, shard: int) -> np.ndarray:
    """The masks shard ``shard`` of a mask store holds: drawn from the store's own seed and ablation rate."""
    store = MaskStore.open(store)
    settings = store.settings()
    start, stop = store.shard_rows(shard)
    return shard_masks(settings["seed"], shard, stop - start, store.masks.shape[1], settings["ablation_rate"])


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
        store = None if error.store is None else _mask_store(error.store)
        if store is None:
            raise
        check_mask_store(store, partial(expected_shard_masks, store), repair=True)
        raise  # the check found nothing to mark: report the reader's own error


def _mask_store(path: str | Path) -> MaskStore | None:
    """The mask store at ``path`` (a group with ``masks`` and ``margins`` that records its seed), else None."""
    try:
        store = MaskStore.open(path)
    except (FileNotFoundError, ValueError, KeyError):
        return None
    return store if "seed" in store.group.attrs else None
