"""Store integrity: every chunk is checksummed, damage is named where it is read, and a resampled shard repairs it."""

import numpy as np
import pytest
import zarr

from compattr.estimators import RidgeCVRegressor
from compattr.sampling import expected_shard_masks, run_shard
from compattr.stores import (
    StoreIntegrityError,
    check_mask_store,
    create_mask_store,
    load_fit,
    read_coordinates,
    read_rows,
    save_fit,
    write_coordinates,
)

THETA = np.random.default_rng(0).normal(size=(3, 5))


def _evaluate(masks):
    """Linear margins of 3 inputs on 5 components: what the sampling jobs would record."""
    return (masks @ THETA.T).astype(np.float32)


def _store(path):
    """A finished mask store (30 masks in 3 shards, 5 components, 3 inputs) with coordinates."""
    group = create_mask_store(path, n_masks=30, n_units=5, n_inputs=3, shard_size=10, ablation_rate=0.2, seed=4)
    write_coordinates(group, components=[f"c{k}" for k in range(5)], inputs=np.arange(3), labels=np.arange(3) + 1)
    for shard in range(3):
        run_shard(path, shard, _evaluate)
    return path


def _chunk(path, array, key="1/0"):
    return path / array / "c" / key


def _flip_a_byte(file):
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))


def _check(path):
    return check_mask_store(path, lambda shard: expected_shard_masks(path, shard))


def test_a_deleted_masks_chunk_is_found_and_resampling_the_shard_repairs_it_bit_for_bit(tmp_path):
    path = _store(tmp_path / "train.zarr")
    intact = read_rows(path)
    _check(path)
    _chunk(path, "masks").unlink()  # reads back as the fill value: nothing ablated
    with pytest.raises(StoreIntegrityError, match=r"shard 1 .*masks its seed does not give.*train.shards/1.json"):
        _check(path)
    run_shard(path, 1, _evaluate)  # the shard's job, run again
    for repaired, original in zip(read_rows(path), intact, strict=True):
        np.testing.assert_array_equal(repaired, original)
    _check(path)


@pytest.mark.parametrize("array", ["masks", "margins"])
def test_a_flipped_byte_in_a_rows_chunk_is_named_by_every_reader(tmp_path, array):
    path = _store(tmp_path / "s.zarr")
    _flip_a_byte(_chunk(path, array))
    with pytest.raises(StoreIntegrityError, match=rf"s.zarr: array '{array}', rows 10:20 is damaged"):
        read_rows(path)
    with pytest.raises(StoreIntegrityError, match=f"'{array}'"):
        _check(path)


@pytest.mark.parametrize("array", ["component", "input", "label"])
def test_a_flipped_byte_in_a_coordinate_array_is_named(tmp_path, array):
    path = _store(tmp_path / "s.zarr")
    _flip_a_byte(_chunk(path, array, "0"))
    with pytest.raises(StoreIntegrityError, match=f"array '{array}' is damaged"):
        read_coordinates(path)


@pytest.mark.parametrize("damage", ["delete", "flip"])
def test_damaged_fit_coefficients_are_refused_not_read_as_zeros(tmp_path, damage):
    masks, margins = read_rows(_store(tmp_path / "s.zarr"))
    fit = tmp_path / "fit.zarr"
    save_fit(fit, RidgeCVRegressor().fit(masks, margins), {"estimator": "ridge"})
    np.testing.assert_array_equal(load_fit(fit).coef.shape, (3, 5))
    chunk = _chunk(fit, "coef", "0/0")
    chunk.unlink() if damage == "delete" else _flip_a_byte(chunk)
    with pytest.raises(StoreIntegrityError, match="fit.zarr"):
        load_fit(fit)


def test_every_array_is_checksummed(tmp_path):
    path = _store(tmp_path / "s.zarr")
    masks, margins = read_rows(path)
    save_fit(tmp_path / "fit.zarr", RidgeCVRegressor().fit(masks, margins), {"estimator": "ridge"})
    for store in (path, tmp_path / "fit.zarr"):
        for name, array in zarr.open_group(str(store), mode="r").arrays():
            codecs = [type(codec).__name__ for codec in array.metadata.codecs]
            assert "Crc32cCodec" in codecs, (store, name, codecs)
