"""Every on-disk format of compattr, written and read here: mask stores and fit stores (Zarr v3).

A **mask store** holds two arrays that share the ``mask`` dimension:

- ``masks`` (mask x component, bool): True where the component is ablated;
- ``margins`` (mask x input, float32): the output (e.g. correct-class margin)
  of the model ablated by that mask, for every test input;

coordinate arrays ``component`` (names), ``input`` (ids) and ``label``, and as
attributes the ``ablation_rate``, ``seed`` and ``shard_size`` it was drawn
with, plus provenance. Rows are split into shards of ``shard_size`` masks; a
shard is one chunk of each array, so shards written by parallel jobs never
share a chunk.

A **fit store** holds a component model: ``coef`` (input x component) and
``intercept`` (input), per-input diagnostics (:data:`DIAGNOSTICS`), a
``network`` group for estimators that predict with one, the same coordinate
arrays, and the fit's settings and provenance as attributes. Arrays carry
dimension names, so ``xarray.open_zarr`` gives labelled arrays.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

__all__ = [
    "NonFiniteMarginError",
    "StoreIntegrityError",
    "SettingsMismatchError",
    "MaskStore",
    "DamagedShardsError",
    "CHECKSUMMED",
    "MASK_STORE_SETTINGS",
    "create_mask_store",
    "mask_store_settings",
    "shard_count",
    "shard_rows",
    "write_shard",
    "shard_manifest_path",
    "check_summary_path",
    "read_manifest",
    "check_mask_store",
    "read_rows",
    "iter_rows",
    "write_coordinates",
    "read_coordinates",
    "DIAGNOSTICS",
    "SavedFit",
    "save_linear_fit",
    "save_fit",
    "load_fit",
    "read_array",
    "load_priors",
    "measured_units",
    "fit_stores",
    "fit_store_name",
]


#: Codecs of every array compattr writes: zstd, then a CRC32C checksum of each chunk, verified on every read.
CHECKSUMMED: dict[str, Any] = {"compressors": [ZstdCodec(level=0), Crc32cCodec()]}


class StoreIntegrityError(ValueError):
    """Raised when a store's bytes are damaged: a chunk that fails its checksum or its codec, or masks that
    differ from those their seed gives. ``store`` is the damaged store's path (None when unknown)."""

    def __init__(self, message: str, store: str | Path | None = None, reason: str | None = None):
        super().__init__(message)
        self.store = store
        self.reason = reason or message


class NonFiniteMarginError(ValueError):
    """Raised when an ablated forward pass gives NaN or infinite outputs; ``store`` is the store holding them."""

    def __init__(self, message: str, store: str | Path | None = None):
        super().__init__(message)
        self.store = store


class DamagedShardsError(StoreIntegrityError):
    """Raised by :func:`check_mask_store` for every shard of a store that is unwritten, damaged or not finite.

    ``faults`` maps each such shard to what is wrong with it.
    """

    def __init__(self, message: str, store: str | Path, faults: dict[int, str]):
        super().__init__(message, store)
        self.faults = faults


def shard_count(n_masks: int, shard_size: int) -> int:
    """Number of shards that cover ``n_masks`` rows."""
    return math.ceil(n_masks / shard_size)


class SettingsMismatchError(ValueError):
    """Raised when a mask store records other settings (ablation rate, seed) than the config asks for."""


class MaskStore:
    """A mask store opened once: its group, its ``masks`` and ``margins`` arrays, and its own settings.

    Every function of this module that takes a mask store takes a path or a handle
    (:meth:`open` returns a handle as it is), so a job opens its store once and passes
    the handle down. ``mode`` "r" reads, "r+" also writes shards.
    """

    def __init__(self, path: str | Path, mode: str = "r") -> None:
        self.path = Path(path)
        self.group = open_store(path, mode)

    @functools.cached_property
    def masks(self) -> zarr.Array:
        """The ``masks`` array (mask x unit, bool)."""
        return store_member(self.group, "masks", self.path)

    @functools.cached_property
    def margins(self) -> zarr.Array:
        """The ``margins`` array (mask x input, float32)."""
        return store_member(self.group, "margins", self.path)

    @classmethod
    def open(cls, store: str | Path | MaskStore, mode: str = "r") -> MaskStore:
        """``store`` itself when it is a handle (opened for writing when ``mode`` asks), else the store at that path."""
        if isinstance(store, MaskStore):
            return store if mode == "r" or store.group.store.read_only is False else cls(store.path, mode)
        return cls(store, mode)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def n_masks(self) -> int:
        """Number of mask rows."""
        return self.masks.shape[0]

    @property
    def shard_size(self) -> int:
        """Rows per shard (one chunk of each array)."""
        return self.masks.chunks[0]

    @property
    def n_shards(self) -> int:
        """Number of shards."""
        return shard_count(self.n_masks, self.shard_size)

    def settings(self) -> dict[str, Any]:
        """The ablation rate, seed and shard size the store was created with (its attributes)."""
        attrs = dict(self.group.attrs)
        missing = [key for key in MASK_STORE_SETTINGS if key not in attrs]
        if missing:
            raise ValueError(
                f"the mask store at {self.path} does not record {', '.join(missing)}: it predates self-describing "
                "stores; create it again (Snakemake reruns init_ablation_store when its parameters change)"
            )
        return {key: attrs[key] for key in MASK_STORE_SETTINGS}

    def check_settings(self, **expected: Any) -> dict[str, Any]:
        """The store's settings, after checking each of ``expected`` (e.g. the config's ablation rate) against them.

        The config is the source of truth: a store that records another value is an error naming both.
        """
        settings = self.settings()
        wrong = {key: value for key, value in expected.items() if settings.get(key) != value}
        if wrong:
            listed = "; ".join(
                f"{key} {settings.get(key)!r} where the config says {value!r}" for key, value in wrong.items()
            )
            raise SettingsMismatchError(
                f"the mask store at {self.path} records {listed}: delete the store (and its .shards folder) "
                "to sample it again at the config's settings"
            )
        return settings

    def shard_rows(self, shard: int) -> tuple[int, int]:
        """The first and past-the-last rows of ``shard``; an error names a shard out of range."""
        return shard_rows(self.masks, shard)


def open_store(path: str | Path, mode: str = "r") -> zarr.Group:
    """The Zarr group of a store; a folder without its ``zarr.json`` is a :class:`StoreIntegrityError` naming it."""
    if mode in ("r", "r+") and Path(path).is_dir() and not (Path(path) / "zarr.json").is_file():
        raise StoreIntegrityError(f"{path} has lost its metadata (zarr.json): rebuild the store", path)
    return zarr.open_group(str(path), mode=mode)


def store_member(group: zarr.Group, name: str, path: str | Path) -> Any:
    """``group[name]``; a member a store must hold but lacks is a :class:`StoreIntegrityError` naming both."""
    try:
        return group[name]
    except KeyError:
        message = f"{path} has lost its array {name!r} (or its metadata): rebuild the store"
        raise StoreIntegrityError(message, path) from None


def create_mask_store(
    path: str | Path,
    *,
    n_masks: int,
    n_units: int,
    n_inputs: int,
    shard_size: int,
    ablation_rate: float,
    seed: int,
    attributes: dict[str, Any] | None = None,
    unit_dim: str = "component",
) -> zarr.Group:
    """Create an empty mask store (arrays ``masks`` and ``margins``) at ``path``, replacing any there.

    The store describes itself: its ``ablation_rate``, ``seed`` and ``shard_size``
    are attributes (:func:`mask_store_settings`), which the sampling jobs read
    rather than being told again; ``attributes`` (provenance) are kept beside them.
    """
    if min(n_masks, n_units, n_inputs, shard_size) < 1:
        raise ValueError("n_masks, n_units, n_inputs and shard_size must all be positive")
    if not 0 < ablation_rate < 1:
        raise ValueError(f"ablation_rate must lie in (0, 1), got {ablation_rate}")
    settings = {"ablation_rate": float(ablation_rate), "seed": int(seed), "shard_size": int(shard_size)}
    group = zarr.open_group(str(path), mode="w", attributes={**(attributes or {}), **settings})
    group.create_array(
        "masks",
        shape=(n_masks, n_units),
        chunks=(shard_size, n_units),
        dtype="bool",
        dimension_names=("mask", unit_dim),
        fill_value=False,
        attributes={"description": f"True where the {unit_dim} is ablated"},
        **CHECKSUMMED,
    )
    group.create_array(
        "margins",
        shape=(n_masks, n_inputs),
        chunks=(shard_size, n_inputs),
        dtype="float32",
        dimension_names=("mask", "input"),
        fill_value=float("nan"),
        attributes={"description": "model output (correct-class margin) under each mask"},
        **CHECKSUMMED,
    )
    return group


#: The attributes that make a mask store self-describing (:func:`create_mask_store`).
MASK_STORE_SETTINGS = ("ablation_rate", "seed", "shard_size")


def mask_store_settings(store: str | Path | MaskStore) -> dict[str, Any]:
    """The ablation rate, seed and shard size a mask store was created with (its attributes)."""
    return MaskStore.open(store).settings()


def write_shard(store: str | Path | MaskStore, shard: int, masks: np.ndarray, values: np.ndarray) -> dict[str, Any]:
    """Write the rows of ``shard``: its masks (n, C) and outputs (n, T), one chunk of each array; then its manifest.

    The manifest (:func:`shard_manifest_path`) is written last, atomically: it is
    there only when both arrays' rows are. Returns it: the shard, its rows, the
    SHA-256 digests of its masks and margins, and the margins' mean and std.
    """
    store = MaskStore.open(store, mode="r+")
    path, masks_arr, margins_arr = store.path, store.masks, store.margins
    start, stop = store.shard_rows(shard)
    if masks.shape != (stop - start, masks_arr.shape[1]) or values.shape != (stop - start, margins_arr.shape[1]):
        raise ValueError(
            f"shard {shard} of {path} holds {stop - start} rows of {masks_arr.shape[1]} components and "
            f"{margins_arr.shape[1]} inputs; got masks {masks.shape} and outputs {values.shape}"
        )
    masks_arr[start:stop] = masks
    margins_arr[start:stop] = values
    manifest = {
        "shard": shard,
        "rows": [start, stop],
        **_digests(masks, values),
        "mean": float(values.mean()),
        "std": float(values.std()),
    }
    target = shard_manifest_path(path, shard)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".json.partial")
    partial.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(partial, target)
    return manifest


def _digests(masks: np.ndarray, margins: np.ndarray) -> dict[str, str]:
    """SHA-256 digests of a shard's masks (bool) and margins (little-endian float32), as its manifest holds them."""
    return {
        "masks_sha256": hashlib.sha256(np.ascontiguousarray(masks, dtype=bool).tobytes()).hexdigest(),
        "margins_sha256": hashlib.sha256(np.ascontiguousarray(margins, dtype="<f4").tobytes()).hexdigest(),
    }


def shard_manifest_path(path: str | Path, shard: int) -> Path:
    """Where the manifest of ``shard`` of the store at ``path`` is: ``<store>.shards/<shard>.json`` beside it."""
    return Path(path).with_suffix(".shards") / f"{shard}.json"


def check_summary_path(path: str | Path) -> Path:
    """Where the summary of a verified store is written (``<store>.summary.json``): the job output standing for it."""
    return Path(path).with_suffix(".summary.json")


def read_manifest(path: str | Path, shard: int) -> dict[str, Any] | None:
    """The manifest of ``shard`` (:func:`write_shard`), or None when the shard has none (not finished)."""
    target = shard_manifest_path(path, shard)
    return json.loads(target.read_text()) if target.is_file() else None


def shard_rows(array: zarr.Array, shard: int) -> tuple[int, int]:
    """The first and past-the-last rows of ``shard`` in a store's ``array``; an error names a shard out of range."""
    size = array.chunks[0]
    n_shards = shard_count(array.shape[0], size)
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} out of range: the store has {n_shards} shards")
    return shard * size, min((shard + 1) * size, array.shape[0])


def write_coordinates(group: zarr.Group, *, components: Sequence[str], inputs: np.ndarray, labels: np.ndarray) -> None:
    """Write the coordinate arrays of a store: ``component`` (names), ``input`` (ids) and ``label`` (per input).

    Each is a one-dimensional array named after its dimension, so readers that
    follow the convention (xarray) label the ``component`` and ``input`` axes.
    """
    if len(inputs) != len(labels):
        raise ValueError(f"{len(inputs)} input ids but {len(labels)} labels")
    names = np.array(list(components), dtype=np.dtypes.StringDType())
    for name, data, dim in (
        ("component", names, "component"),
        ("input", np.asarray(inputs, dtype=np.int64), "input"),
        ("label", np.asarray(labels, dtype=np.int64), "input"),
    ):
        group.create_array(name, data=data, dimension_names=(dim,), overwrite=True, **CHECKSUMMED)


def read_coordinates(path: str | Path | MaskStore) -> dict[str, np.ndarray] | None:
    """The coordinates a store (a mask or fit store) holds (``component``, ``input``, ``label``), or None."""
    group = path.group if isinstance(path, MaskStore) else open_store(path)
    try:  # looked up by name: listing the group would warn about files Snakemake keeps in output folders
        component, inputs, labels = (group[name] for name in ("component", "input", "label"))
    except KeyError:
        return None
    names = read_array(component, path).tolist()
    return {
        "components": np.array(names, dtype=object),
        "inputs": read_array(inputs, path),
        "labels": read_array(labels, path),
    }


def check_mask_store(
    store: str | Path | MaskStore, expected_masks: Callable[[int], np.ndarray] | None = None, *, repair: bool = False
) -> dict[str, Any]:
    """Verify every shard of a mask store: finished (a manifest), readable (checksums), finite, its own rows.

    A shard's rows must match the digests of its manifest and, when ``expected_masks(shard)``
    is given, hold the masks it returns (masks are a pure function of the store's seed and
    shard: :func:`compattr.masks.expected_shard_masks`). Every shard is looked at;
    :class:`DamagedShardsError` names each faulty one and what is wrong. With ``repair``,
    the manifests of those shards are deleted first: sampling them again (their jobs rerun,
    :mod:`compattr.repair`) gives the store it should be, bit for bit. Returns the store's
    shape and margin statistics.
    """
    store = MaskStore.open(store)
    path, masks_arr, margins_arr, n_shards = store.path, store.masks, store.margins, store.n_shards
    total, total_sq, count = 0.0, 0.0, 0
    faults = {}
    for shard in range(n_shards):
        expected = None if expected_masks is None else expected_masks(shard)
        masks, block, fault = _read_shard(store, shard, expected)
        if fault is not None:
            faults[shard] = str(fault)
            continue
        total += float(block.sum(dtype=np.float64))
        total_sq += float(np.square(block, dtype=np.float64).sum())
        count += block.size
    if faults:
        raise _damaged(path, faults, repair)
    mean = total / count
    return {
        "n_masks": margins_arr.shape[0],
        "n_units": masks_arr.shape[1],
        "n_inputs": margins_arr.shape[1],
        "n_shards": n_shards,
        "margin_mean": mean,
        "margin_std": math.sqrt(max(total_sq / count - mean**2, 0.0)),
    }


def _read_shard(
    store: MaskStore, shard: int, expected_masks: np.ndarray | None = None
) -> tuple[np.ndarray | None, np.ndarray | None, StoreIntegrityError | NonFiniteMarginError | None]:
    """The masks and margins of a finished, intact shard, or an error that says what is wrong with it.

    In order: a manifest (the shard was finished), chunks that decode (checksums),
    finite margins, the ``expected_masks`` when given, rows matching the manifest's digests.
    """
    path, masks_arr, margins_arr = store.path, store.masks, store.margins
    start, stop = store.shard_rows(shard)
    where = f"shard {shard} of {path} (rows {start}:{stop})"
    manifest = read_manifest(path, shard)
    if manifest is None:
        error = StoreIntegrityError(f"{where} has no manifest: it was never finished, or is marked to be sampled again")
        return None, None, error
    rows_of = {}
    for array in (margins_arr, masks_arr):
        try:
            rows_of[array.basename] = read_array(array, path, slice(start, stop))
        except StoreIntegrityError as error:
            chunk = Path(path) / array.basename / array.metadata.encode_chunk_key((shard, 0))
            damaged = StoreIntegrityError(f"{where}: {error.reason} (chunk file {chunk})")
            damaged.__cause__ = error.__cause__
            return None, None, damaged
    margins, masks = rows_of["margins"], rows_of["masks"]
    bad = ~np.isfinite(margins)
    if bad.any():
        rows = start + np.flatnonzero(bad.any(axis=1))
        count = f"{int(bad.sum())} NaN or infinite margins in {len(rows)} rows"
        return None, None, NonFiniteMarginError(f"{where} holds {count}, the first at row {rows[0]} (shard {shard})")
    if expected_masks is not None and not np.array_equal(masks, expected_masks):
        error = StoreIntegrityError(f"{where} holds masks its seed does not give (a damaged or deleted chunk)")
        return None, None, error
    if _digests(masks, margins) != {key: manifest.get(key) for key in ("masks_sha256", "margins_sha256")}:
        return (
            None,
            None,
            StoreIntegrityError(
                f"{where} differs from the digests of its manifest (a damaged, deleted or replaced chunk)"
            ),
        )
    return masks, margins, None


def _damaged(path: str | Path, faults: dict[int, str], repair: bool) -> DamagedShardsError:
    """The error for a store's faulty shards; with ``repair``, their manifests are deleted (marked for sampling)."""
    manifests = [shard_manifest_path(path, shard) for shard in faults]
    if repair:
        for manifest in manifests:
            manifest.unlink(missing_ok=True)
        action = "their manifests are deleted: run the workflow again, which samples exactly these shards again"
    else:
        action = f"delete {', '.join(map(str, manifests))} and run the workflow again, which samples them again"
    listed = "; ".join(faults.values())
    return DamagedShardsError(f"{len(faults)} shard(s) of {path} are not usable: {listed}; {action}", path, faults)


def read_rows(store: str | Path | MaskStore, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``stop`` rows (all when None) of a mask store: masks (bool) and margins (float32), verified."""
    store = MaskStore.open(store)
    n = store.n_masks
    if stop is not None and stop > n:
        raise ValueError(f"asked for {stop} masks but the store at {store.path} holds {n}")
    blocks = list(iter_rows(store, 0, n if stop is None else stop))
    if not blocks:
        return store.masks[:0], store.margins[:0]
    masks, margins = zip(*blocks, strict=True)
    return np.concatenate(masks), np.concatenate(margins)


def iter_rows(store: str | Path | MaskStore, start: int, stop: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Rows ``start:stop`` of a store, as (masks, margins) blocks of at most one shard each.

    Every shard is verified as it is read (:func:`check_mask_store` does the same for all
    of them): a shard without a manifest, a damaged chunk or rows that differ from the
    manifest's digests raise :class:`StoreIntegrityError`, a NaN or infinite margin
    :class:`NonFiniteMarginError`, naming the store, shard and rows and the manifest to
    delete so that the shard is sampled again.
    """
    store = MaskStore.open(store)
    path, n_masks, step = store.path, store.n_masks, store.shard_size
    if not 0 <= start <= stop <= n_masks:
        raise ValueError(f"rows {start}:{stop} are outside the store at {path} ({n_masks} masks)")
    for shard in range(start // step, -(-stop // step) if stop > start else 0):
        masks, margins, fault = _read_shard(store, shard)
        if fault is not None:
            action = f"delete {shard_manifest_path(path, shard)} if it is there and rerun, which samples it again"
            raise type(fault)(f"{fault}: {action}", path) from fault.__cause__
        rows = slice(max(start - shard * step, 0), min(stop - shard * step, step))
        yield masks[rows], margins[rows]


#: Per-input diagnostics a fit store keeps when its estimator has them: the chosen penalty, the kept
#: step, the validation scores at the choice, the chosen prior among several, the prior's fitted scale,
#: whether the fit failed (kept its initial state), and the least-squares factor of a calibrated collapse.
DIAGNOSTICS = (
    "alpha",
    "n_iter",
    "validation_mse",
    "validation_spearman",
    "prior_index",
    "scale",
    "failed",
    "calibration",
)


@dataclass
class SavedFit:
    """A component model read back from its Zarr group.

    ``coef`` (input x component) and ``intercept`` (input) always; ``network``
    (the arrays of :func:`compattr.estimators.predict_network`) for estimators
    whose predictor is a network.
    """

    coef: np.ndarray
    intercept: np.ndarray
    attrs: dict[str, Any]
    network: dict[str, np.ndarray] | None = None
    diagnostics: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def failed(self) -> np.ndarray:
        """Per input, whether the fit failed (returned its initial state); all False when not recorded."""
        return self.diagnostics.get("failed", np.zeros(len(self.intercept), dtype=bool)).astype(bool)

    def predict(self, masks: np.ndarray) -> np.ndarray:
        """Predicted outputs (n_masks, n_inputs) for bool or 0/1 masks (n_masks, n_components)."""
        if self.network is not None:
            from compattr.estimators import predict_network  # torch: only for fits that are networks

            return predict_network(self.network, masks)
        return np.asarray(masks, dtype=np.float32) @ self.coef.T + self.intercept


def load_priors(paths: str | Path | Sequence[str | Path] | None) -> tuple[np.ndarray | None, int]:
    """The coefficients of one or more prior fits, and their cost in passes together.

    One path gives its ``coef`` (n_inputs, n_components); several give them
    stacked (n_priors, n_inputs, n_components), candidates an estimator chooses
    among. The cost is the sum of the fits' ``passes`` attributes (each prior
    is computed). None or no paths: ``(None, 0)``.
    """
    if paths is None or isinstance(paths, (str, Path)):
        paths = [] if paths is None else [paths]
    fits = [load_fit(path) for path in paths]
    if not fits:
        return None, 0
    passes = sum(int(fit.attrs["passes"]) for fit in fits)
    if len(fits) == 1:
        return fits[0].coef, passes
    return np.stack([fit.coef for fit in fits]), passes


def measured_units(folder: str | Path) -> dict[str, int]:
    """Per first-order prior saved in ``folder`` (a model's ``baselines/``), the units it measures by ablation.

    That is its ``exact_top`` (0 for a prior that measures none): the perturbed evaluations it
    makes, beside its gradient passes. Leave-one-out is not a prior and is not listed; a
    missing folder lists nothing.
    """
    measured = {}
    for path in sorted(Path(folder).glob("*.zarr")):
        attrs = open_store(path).attrs
        if attrs.get("baseline") and attrs.get("prior") is not None:
            measured[str(attrs["estimator"])] = int(attrs["prior"].get("exact_top", 0))
    return measured


def fit_store_name(n_train: int, replicate: int) -> str:
    """The file name of an estimator's fit on ``n_train`` masks of draw ``replicate``: ``n<N>.r<R>.zarr``."""
    return f"n{n_train}.r{replicate}.zarr"


def fit_stores(path: str | Path) -> list[Path]:
    """The fit stores at ``path``: itself if it is one, else its :func:`fit_store_name` stores by size and draw."""
    path = Path(path)
    if (path / "zarr.json").exists():
        return [path]
    stores = []
    for store in path.glob(fit_store_name("*", "*")):  # type: ignore[arg-type]
        n, r = store.name.removesuffix(".zarr").removeprefix("n").split(".r")
        stores.append((int(n), int(r), store))
    if not stores:
        raise ValueError(f"{path} holds no fit stores (n<N>.r<R>.zarr)")
    return [store for *_, store in sorted(stores)]


def save_linear_fit(
    path: str | Path,
    coef: np.ndarray,
    intercept: np.ndarray,
    attributes: dict[str, Any],
    coords: dict[str, Any] | None = None,
) -> zarr.Group:
    """Write a linear component model: ``coef`` (input x component) and ``intercept`` (input).

    ``coords`` (``components``, ``inputs``, ``labels``, as
    :func:`read_coordinates` gives them) label the axes. The store is sealed: the SHA-256 digest
    of every array it holds is its ``sha256`` attribute, which :func:`load_fit` checks.
    """
    group, written = _write_linear_fit(path, coef, intercept, attributes, coords)
    _seal(group, written)
    return group


def _write_linear_fit(
    path: str | Path,
    coef: np.ndarray,
    intercept: np.ndarray,
    attributes: dict[str, Any],
    coords: dict[str, Any] | None,
) -> tuple[zarr.Group, dict[str, np.ndarray]]:
    """The arrays of :func:`save_linear_fit`, written unsealed; returns the group and what each array holds."""
    group = zarr.open_group(str(path), mode="w", attributes=attributes)
    coef = np.atleast_2d(coef)
    written = {"coef": coef.astype(np.float32), "intercept": np.atleast_1d(intercept).astype(np.float32)}
    # NaN fill: a missing chunk reads as NaN, which load_fit refuses, never as zero effects
    for name, dims in (("coef", ("input", "component")), ("intercept", ("input",))):
        group.create_array(name, data=written[name], dimension_names=dims, fill_value=np.nan, **CHECKSUMMED)
    if coords is not None:
        if (len(coords["inputs"]), len(coords["components"])) != coef.shape:
            raise ValueError(
                f"coordinates name {len(coords['inputs'])} inputs x {len(coords['components'])} components "
                f"but coef is {coef.shape[0]} x {coef.shape[1]}"
            )
        write_coordinates(group, **coords)
        written.update(component=np.asarray(coords["components"]), input=coords["inputs"], label=coords["labels"])
    return group, written


def _array_digest(data: np.ndarray) -> str:
    """SHA-256 of an array's values, shape and dtype kind (strings by their text, numbers little-endian)."""
    data = np.asarray(data)
    digest = hashlib.sha256(f"{data.shape}".encode())
    if data.dtype.kind in "OTU":
        digest.update("\x00".join(map(str, data.ravel().tolist())).encode())
    else:
        digest.update(data.dtype.kind.encode())
        digest.update(np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<")).tobytes())
    return digest.hexdigest()


def _seal(group: zarr.Group, written: dict[str, np.ndarray]) -> None:
    """Record the digest of every array written (``network/W1`` for a member of a subgroup), last."""
    group.attrs["sha256"] = {name: _array_digest(data) for name, data in sorted(written.items())}


def save_fit(path: str | Path, model: Any, attributes: dict[str, Any], coords: dict[str, Any] | None = None) -> None:
    """Write a fitted estimator: its linear model, its network if it predicts with one, and diagnostics.

    Per-input diagnostics the estimator exposes (:data:`DIAGNOSTICS`, with a
    trailing underscore) are kept as arrays over inputs; ``coords`` as for
    :func:`save_linear_fit`. Every array is sealed by its digest, diagnostics included.
    """
    group, written = _write_linear_fit(path, model.coef_, model.intercept_, attributes, coords)
    for name in (f"{key}_" for key in DIAGNOSTICS):
        if hasattr(model, name):
            data = written[name.rstrip("_")] = np.atleast_1d(getattr(model, name))
            group.create_array(name.rstrip("_"), data=data, dimension_names=("input",), **CHECKSUMMED)
    if hasattr(model, "network_"):
        net = group.create_group("network")
        for key, value in model.network_.items():
            data = written[f"network/{key}"] = np.asarray(value, dtype=np.float32)
            net.create_array(key, data=data, fill_value=np.nan, **CHECKSUMMED)
    _seal(group, written)


def load_fit(path: str | Path) -> SavedFit:
    """Read a fit written by :func:`save_fit` or :func:`save_linear_fit`, verifying every array it holds.

    A chunk that fails its checksum, an array that differs from the digest it was sealed with
    (a deleted chunk reads back as its fill value; an edited value), a missing array or
    non-finite coefficients raise :class:`StoreIntegrityError` naming the store and the array.
    """
    group = open_store(path)
    attrs = dict(group.attrs)
    digests = attrs.pop("sha256", None)
    if digests is None:
        raise StoreIntegrityError(f"the fit store at {path} records no digests (unsealed or older): fit it again", path)
    arrays = {}
    for name, expected in digests.items():
        parent, _, key = name.rpartition("/")
        member = store_member(store_member(group, parent, path) if parent else group, key, path)
        arrays[name] = data = read_array(member, path)
        if _array_digest(data) != expected:
            reason = f"array {name!r} differs from the digest it was sealed with (a deleted, damaged or edited chunk)"
            raise StoreIntegrityError(f"the fit store at {path}: {reason}: fit it again", path, reason)
    coef, intercept = arrays["coef"], arrays["intercept"]
    if not (np.isfinite(coef).all() and np.isfinite(intercept).all()):
        message = f"the fit store at {path} holds missing or non-finite coefficients: fit it again"
        raise StoreIntegrityError(message, path)
    network = {name.removeprefix("network/"): data for name, data in arrays.items() if name.startswith("network/")}
    diagnostics = {name: arrays[name] for name in DIAGNOSTICS if name in arrays}
    return SavedFit(coef, intercept, attrs, network or None, diagnostics)


def read_array(array: zarr.Array, path: str | Path, rows: slice = slice(None)) -> np.ndarray:
    """``array[rows]``, or a :class:`StoreIntegrityError` naming the store, array and rows if a chunk is damaged."""
    try:
        return array[rows]
    except Exception as error:  # a chunk failing its checksum, or bytes its codec cannot decode
        span = "" if rows == slice(None) else f", rows {rows.start}:{rows.stop}"
        cause = f"is damaged ({type(error).__name__}: {error})"
        reason = f"array {array.basename!r} {cause}"  # for callers that name the rows themselves
        raise StoreIntegrityError(f"{path}: array {array.basename!r}{span} {cause}", path, reason) from error
