"""Random ablation masks, drawn shard by shard from a mask store's own seed.

Numpy and Zarr only (no torch), so jobs that only read stores start quickly; the forward passes
that the masks go through are :mod:`compattr.sampling`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compattr.stores import MaskStore

__all__ = ["bernoulli_masks", "shard_masks", "expected_shard_masks"]


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
