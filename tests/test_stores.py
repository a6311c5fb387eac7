"""Store integrity: every chunk is checksummed, damage is named where it is read, and a resampled shard repairs it."""

import sys

import numpy as np
import pytest
import zarr

from compattr.estimators import RidgeCVRegressor
from compattr.masks import expected_shard_masks
from compattr.repair import damaged_output, findings, rebuild_on_damage, repair_log_path, repair_logs
from compattr.sampling import run_shard
from compattr.stores import (
    DamagedShardsError,
    StoreIntegrityError,
    check_mask_store,
    check_summary_path,
    create_mask_store,
    load_fit,
    read_coordinates,
    read_manifest,
    read_rows,
    save_fit,
    shard_manifest_path,
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


def _check(path, repair=False):
    return check_mask_store(path, lambda shard: expected_shard_masks(path, shard), repair=repair)


def _files(path):
    """Every file of a store and its manifests, by relative path, with its bytes."""
    root = path.parent
    return {
        str(f.relative_to(root)): f.read_bytes()
        for folder in (path, path.with_suffix(".shards"))
        for f in sorted(folder.rglob("*"))
        if f.is_file()
    }


def test_a_deleted_masks_chunk_is_found_and_resampling_the_shard_repairs_it_bit_for_bit(tmp_path):
    path = _store(tmp_path / "train.zarr")
    intact = read_rows(path)
    _check(path)
    _chunk(path, "masks").unlink()  # reads back as the fill value: nothing ablated
    with pytest.raises(StoreIntegrityError, match=r"shard 1 of .* holds masks its seed does not give.*shards/1.json"):
        _check(path)
    run_shard(path, 1, _evaluate)  # the shard's job, run again
    for repaired, original in zip(read_rows(path), intact, strict=True):
        np.testing.assert_array_equal(repaired, original)
    _check(path)


@pytest.mark.parametrize("array", ["masks", "margins"])
def test_repair_marks_exactly_the_damaged_shards_and_resampling_them_gives_the_same_bytes(tmp_path, array):
    path = _store(tmp_path / "train.zarr")
    intact = _files(path)
    check_summary_path(path).write_text("{}")  # what the workflow's check wrote when the store was whole
    _chunk(path, array, "0/0").unlink()
    _flip_a_byte(_chunk(path, "margins" if array == "masks" else "masks", "2/0"))
    with pytest.raises(DamagedShardsError, match="shard 0 of .*; shard 2 of .*samples exactly these shards") as found:
        _check(path, repair=True)
    assert sorted(found.value.faults) == [0, 2]
    assert [read_manifest(path, shard) is None for shard in range(3)] == [True, False, True]
    assert check_summary_path(path).exists()  # its job reruns by its repair log (compattr.repair), not by absence
    for shard in (0, 2):  # what the workflow's next run does: the jobs of the shards without a manifest
        run_shard(path, shard, _evaluate)
    assert _files(path) == intact
    _check(path)


def test_rows_that_pass_their_checksums_but_differ_from_the_manifest_are_found(tmp_path):
    path = _store(tmp_path / "train.zarr")
    manifest = read_manifest(path, 1)
    assert manifest["rows"] == [10, 20] and len(manifest["margins_sha256"]) == 64
    zarr.open_group(str(path), mode="r+")["margins"][10:20] = _evaluate(expected_shard_masks(path, 1)) + 1
    with pytest.raises(DamagedShardsError, match=r"shard 1 of .*\(rows 10:20\) differs from the digests of its"):
        _check(path)


def test_a_shard_whose_margins_are_not_finite_gets_no_manifest(tmp_path):
    path = tmp_path / "s.zarr"
    create_mask_store(path, n_masks=20, n_units=5, n_inputs=3, shard_size=10, ablation_rate=0.2, seed=4)
    with pytest.raises(ValueError, match="non-finite"):
        run_shard(path, 0, lambda masks: np.full((len(masks), 3), np.inf, dtype=np.float32))
    assert not shard_manifest_path(path, 0).exists()
    run_shard(path, 0, _evaluate)
    assert shard_manifest_path(path, 0).is_file()


def _uncaught(error, inputs, monkeypatch):
    """What a workflow job does with ``error`` uncaught after :func:`rebuild_on_damage` (``inputs``)."""
    monkeypatch.setattr(sys, "excepthook", lambda *args: None)  # the interpreter's own printing, left out
    rebuild_on_damage(inputs)
    sys.excepthook(type(error), error, error.__traceback__)


def test_a_reader_that_meets_damage_marks_every_faulty_shard_and_logs_the_store_for_rebuilding(tmp_path, monkeypatch):
    path = _store(tmp_path / "train.zarr")
    _chunk(path, "masks", "2/0").unlink()  # found by the check, not by the reader's checksums
    _flip_a_byte(_chunk(path, "margins", "0/0"))
    with pytest.raises(StoreIntegrityError) as found:
        read_rows(path)
    summary = check_summary_path(path)
    assert findings(summary) == [] and repair_logs([summary]) == []
    _uncaught(found.value, [str(summary)], monkeypatch)
    assert [shard_manifest_path(path, shard).exists() for shard in range(3)] == [False, True, False]
    assert [finding["store"] for finding in findings(summary)] == [str(path)]
    assert repair_logs([summary, tmp_path / "elsewhere"]) == [str(repair_log_path(summary))]
    _uncaught(found.value, [str(summary)], monkeypatch)  # a second finding: a second line
    assert len(findings(summary)) == 2


def test_damage_to_a_fit_store_logs_the_job_output_that_holds_it(tmp_path, monkeypatch):
    masks, margins = read_rows(_store(tmp_path / "s.zarr"))
    fits = tmp_path / "fits" / "ridge"
    save_fit(fits / "n30.r0.zarr", RidgeCVRegressor().fit(masks, margins), {"estimator": "ridge"})
    _flip_a_byte(_chunk(fits / "n30.r0.zarr", "coef", "0/0"))
    with pytest.raises(StoreIntegrityError, match="n30.r0.zarr") as found:
        load_fit(fits / "n30.r0.zarr")
    assert damaged_output(found.value, [str(tmp_path / "other"), str(fits)]) == fits
    assert damaged_output(found.value, [str(tmp_path / "other")]) is None  # not this job's input: nothing marked
    _uncaught(found.value, [str(fits)], monkeypatch)
    assert len(findings(fits)) == 1
    assert all(shard_manifest_path(tmp_path / "s.zarr", shard).exists() for shard in range(3))


def test_a_mask_store_that_lost_its_metadata_is_named_and_rebuilt_whole(tmp_path, monkeypatch):
    path = _store(tmp_path / "train.zarr")
    (path / "zarr.json").unlink()
    with pytest.raises(StoreIntegrityError, match=r"train.zarr has lost its metadata \(zarr.json\)") as found:
        read_rows(path)
    _uncaught(found.value, [], monkeypatch)
    assert len(findings(check_summary_path(path))) == 1


@pytest.mark.parametrize("array", ["masks", "margins"])
def test_a_flipped_byte_in_a_rows_chunk_is_named_by_every_reader(tmp_path, array):
    path = _store(tmp_path / "s.zarr")
    _flip_a_byte(_chunk(path, array))
    with pytest.raises(
        StoreIntegrityError,
        match=rf"\(rows 10:20\): array '{array}' is damaged.*chunk file .*{array}/c/1/0.*s.shards/1.json",
    ):
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


class _Diagnosed:
    """A fitted model with diagnostics and a network, as the 2-layer estimators leave them."""

    coef_, intercept_ = np.ones((3, 5)), np.zeros(3)
    failed_ = np.array([True, False, True])
    alpha_ = np.array([0.1, 1.0, 10.0])
    network_ = {"W1": np.ones((4, 5)), "b2": np.zeros(3)}


@pytest.mark.parametrize(
    "array, damage",
    [("failed", "delete"), ("alpha", "edit"), ("coef", "edit"), ("network/W1", "delete"), ("component", "edit")],
)
def test_every_array_of_a_fit_store_is_sealed_so_a_deleted_or_forged_chunk_is_refused(tmp_path, array, damage):
    fit = tmp_path / "fit.zarr"
    coords = {"components": [f"c{k}" for k in range(5)], "inputs": np.arange(3), "labels": np.arange(3)}
    save_fit(fit, _Diagnosed(), {"estimator": "x"}, coords)
    saved = load_fit(fit)
    np.testing.assert_array_equal(saved.failed, [True, False, True])
    assert saved.network is not None and saved.network["W1"].shape == (4, 5)
    if damage == "delete":
        _chunk(fit, array, "0/0" if array == "network/W1" else "0").unlink()
    else:  # written through Zarr: the chunk's own checksum is valid, only the seal tells
        member = zarr.open_group(str(fit), mode="r+")[array]
        member[0] = "forged" if array == "component" else 7.0
    with pytest.raises(StoreIntegrityError, match=f"array '{array}' differs from the digest it was sealed with"):
        load_fit(fit)


def test_every_array_is_checksummed(tmp_path):
    path = _store(tmp_path / "s.zarr")
    masks, margins = read_rows(path)
    save_fit(tmp_path / "fit.zarr", RidgeCVRegressor().fit(masks, margins), {"estimator": "ridge"})
    for store in (path, tmp_path / "fit.zarr"):
        for name, array in zarr.open_group(str(store), mode="r").arrays():
            codecs = [type(codec).__name__ for codec in array.metadata.codecs]
            assert "Crc32cCodec" in codecs, (store, name, codecs)


def test_a_store_opened_once_serves_every_reader_and_the_config_overrides_nothing(tmp_path):
    from compattr.stores import MaskStore, SettingsMismatchError, fit_store_name, fit_stores

    path = _store(tmp_path / "s.zarr")
    store = MaskStore.open(path)
    assert MaskStore.open(store) is store and (store.n_masks, store.shard_size, store.n_shards) == (30, 10, 3)
    for a, b in zip(read_rows(store), read_rows(path), strict=True):
        np.testing.assert_array_equal(a, b)
    assert _check(store)["n_masks"] == 30 and read_coordinates(store)["components"][0] == "c0"
    assert store.check_settings(ablation_rate=0.2, seed=4)["shard_size"] == 10
    # an edited attribute never silently changes what is sampled: the run names both values
    zarr.open_group(str(path), mode="r+").attrs["ablation_rate"] = 0.4
    with pytest.raises(SettingsMismatchError, match=r"ablation_rate 0.4 where the config says 0.2"):
        run_shard(path, 0, _evaluate, ablation_rate=0.2, seed=4)
    with pytest.raises(SettingsMismatchError, match=r"seed 4 where the config says 5"):
        MaskStore.open(path).check_settings(seed=5)
    fits = tmp_path / "fits"
    for n, r in ((20, 1), (5, 0), (20, 0)):
        save_fit(fits / fit_store_name(n, r), RidgeCVRegressor().fit(*read_rows(store, 10)), {})
    assert [p.name for p in fit_stores(fits)] == ["n5.r0.zarr", "n20.r0.zarr", "n20.r1.zarr"]
