import numpy as np
import pytest
import torch
import zarr

from compattr import sampling
from compattr.masks import shard_masks
from compattr.outputs import margins
from compattr.sampling import ComponentMarginEvaluator, DistinctMasks, run_shard
from compattr.stores import (
    NonFiniteMarginError,
    check_mask_store,
    create_mask_store,
    iter_rows,
    mask_store_settings,
    read_rows,
)


def test_shard_masks_depend_only_on_seed_and_shard():
    a = shard_masks(7, 3, 100, 50, 0.1)
    np.testing.assert_array_equal(a, shard_masks(7, 3, 100, 50, 0.1))
    assert not np.array_equal(a, shard_masks(7, 4, 100, 50, 0.1))
    assert not np.array_equal(a, shard_masks(8, 3, 100, 50, 0.1))
    big = shard_masks(0, 0, 20000, 50, 0.05)
    assert big.dtype == bool and abs(big.mean() - 0.05) < 0.003


def test_evaluator_matches_one_mask_at_a_time(trained_model, digits):
    model, components = trained_model
    _, test = digits
    images, labels = test.images[:7], test.labels[:7]
    masks = shard_masks(0, 0, 9, len(components), 0.1)
    batched = ComponentMarginEvaluator(model, components, images, labels, batch_size=20)(masks)
    assert batched.shape == (9, 7) and batched.dtype == np.float32
    network = components.ablatable(model)
    for i, mask in enumerate(masks):
        keep = torch.from_numpy(~mask).float().repeat(7, 1)
        with torch.no_grad():
            expected = margins(network(images, keep), labels)
        np.testing.assert_allclose(batched[i], expected.numpy(), rtol=1e-5, atol=1e-5)


def test_auto_batch_size_is_the_device_types_and_a_bad_one_is_named(trained_model, digits):
    model, components = trained_model
    _, test = digits
    images, labels = test.images[:30], test.labels[:30]
    masks = shard_masks(0, 0, 50, len(components), 0.1)  # 1,500 samples: two passes at 1,024
    auto = ComponentMarginEvaluator(model, components, images, labels)
    assert auto.batch_size == sampling.AUTO_BATCH_SIZE["cpu"] < len(masks) * len(images)
    explicit = ComponentMarginEvaluator(model, components, images, labels, batch_size=len(masks) * len(images))
    np.testing.assert_allclose(auto(masks), explicit(masks), rtol=1e-5, atol=1e-5)
    for bad in (0, "large", 2.5):
        with pytest.raises(ValueError, match="batch_size"):
            ComponentMarginEvaluator(model, components, images, labels, batch_size=bad)


def _linear_evaluator(n_units: int, n_inputs: int):
    weights = np.random.default_rng(0).normal(size=(n_units, n_inputs)).astype(np.float32)
    return lambda masks: masks.astype(np.float32) @ weights


def test_distinct_masks_evaluates_each_mask_once():
    weights = np.random.default_rng(0).integers(-9, 10, size=(13, 4))  # exact sums, whatever the batch
    seen = []

    def evaluator(ablated):
        seen.extend(map(tuple, ablated))
        return ablated @ weights

    masks = shard_masks(0, 0, 6, 13, 0.3)
    first = np.concatenate([masks, masks[[2, 0]]])  # repeats within one call
    second = np.concatenate([masks[[5]], ~masks[[1]], masks[[1]]])  # one new mask, two seen before
    cached = DistinctMasks(evaluator)
    np.testing.assert_array_equal(cached(first), first @ weights)
    np.testing.assert_array_equal(cached(second), second @ weights)
    assert len(seen) == len(set(seen)) == len({*map(tuple, masks), tuple(~masks[1])})


def test_shards_in_any_order_give_the_same_store(tmp_path):
    evaluator = _linear_evaluator(30, 4)
    stores = []
    for name, order in [("forward", [0, 1, 2]), ("backward", [2, 0, 1])]:
        path = tmp_path / f"{name}.zarr"
        create_mask_store(path, n_masks=25, n_units=30, n_inputs=4, shard_size=10, ablation_rate=0.1, seed=5)
        for shard in order:
            run_shard(path, shard, evaluator)
        stores.append(read_rows(path))
    for a, b in zip(*stores, strict=True):
        np.testing.assert_array_equal(a, b)
    group = zarr.open_group(str(tmp_path / "forward.zarr"), mode="r")
    assert group["masks"].metadata.dimension_names == ("mask", "component")
    assert group["margins"].metadata.dimension_names == ("mask", "input")
    assert check_mask_store(tmp_path / "forward.zarr")["n_shards"] == 3


def test_missing_and_non_finite_shards_are_named(tmp_path):
    path = tmp_path / "s.zarr"
    create_mask_store(path, n_masks=30, n_units=5, n_inputs=3, shard_size=10, ablation_rate=0.2, seed=0)
    good = _linear_evaluator(5, 3)
    run_shard(path, 0, good)
    with pytest.raises(ValueError, match="shard 1 of .* has no manifest.*; shard 2 of .* has no manifest"):
        check_mask_store(path)

    def broken(masks):
        out = good(masks)
        out[1, 2] = np.nan
        return out

    with pytest.raises(NonFiniteMarginError, match="shard 1 "):
        run_shard(path, 1, broken)
    assert np.isnan(zarr.open_group(str(path), mode="r")["margins"][10:20]).all()  # nothing written
    with pytest.raises(ValueError, match="out of range"):
        run_shard(path, 3, good)


def test_read_rows_refuses_more_masks_than_stored(tmp_path):
    path = tmp_path / "s.zarr"
    create_mask_store(path, n_masks=10, n_units=5, n_inputs=3, shard_size=10, ablation_rate=0.05, seed=0)
    with pytest.raises(ValueError, match="asked for 11 masks but the store"):
        read_rows(path, 11)


def test_reduced_precision_and_channels_last_keep_float32_margins_close(trained_model, digits):
    model, components = trained_model
    _, test = digits
    images, labels = test.images[:6], test.labels[:6]
    masks = shard_masks(3, 0, 5, len(components), 0.1)
    reference = ComponentMarginEvaluator(model, components, images, labels)(masks)
    for options in ({"channels_last": True}, {"precision": "bfloat16"}):
        evaluator = ComponentMarginEvaluator(model, components, images, labels, **options)
        out = evaluator(masks)
        assert out.dtype == np.float32
        tolerance = 1e-4 if "channels_last" in options else 0.1  # bfloat16 keeps 8 bits of mantissa
        np.testing.assert_allclose(out, reference, atol=tolerance * np.abs(reference).max())
    model.to(memory_format=torch.contiguous_format)
    with pytest.raises(ValueError, match="precision"):
        ComponentMarginEvaluator(model, components, images, labels, precision="int8")
    with pytest.raises(ValueError, match="compile must be one of"):
        ComponentMarginEvaluator(model, components, images, labels, compile="max-autotune")
    assert ComponentMarginEvaluator(model, components, images, labels).compile_mode is None  # auto, on CPU


def test_compiled_evaluator_matches_eager_and_compiles_once(trained_model, digits):
    """The masks are buffers: new masks of the same shape reuse the compiled graph."""
    model, components = trained_model
    _, test = digits
    images, labels = test.images[:4], test.labels[:4]
    eager = ComponentMarginEvaluator(model, components, images, labels, batch_size=8)
    compiled = ComponentMarginEvaluator(model, components, images, labels, batch_size=8, compile=True)
    assert compiled.compiled and not eager.compiled
    first, second = shard_masks(4, 0, 2, len(components), 0.2), shard_masks(4, 1, 2, len(components), 0.2)
    np.testing.assert_allclose(compiled(first), eager(first), rtol=1e-4, atol=1e-4)
    with torch._dynamo.config.patch(error_on_recompile=True):
        np.testing.assert_allclose(compiled(second), eager(second), rtol=1e-4, atol=1e-4)


def test_mask_stores_describe_themselves(tmp_path):
    """The sampling reads the ablation rate and seed from the store: a shard is the masks they give."""
    path = tmp_path / "s.zarr"
    create_mask_store(path, n_masks=20, n_units=6, n_inputs=2, shard_size=10, ablation_rate=0.3, seed=11)
    assert mask_store_settings(path) == {"ablation_rate": 0.3, "seed": 11, "shard_size": 10}
    run_shard(path, 1, _linear_evaluator(6, 2))
    ((masks, _),) = iter_rows(path, 10, 20)  # shard 0 is not written
    np.testing.assert_array_equal(masks, shard_masks(11, 1, 10, 6, 0.3))
    with pytest.raises(ValueError, match="ablation_rate must lie in"):
        create_mask_store(path, n_masks=20, n_units=6, n_inputs=2, shard_size=10, ablation_rate=1.5, seed=0)
    old = tmp_path / "old.zarr"
    zarr.open_group(str(old), mode="w", attributes={"shard_size": 10})
    with pytest.raises(ValueError, match="does not record ablation_rate, seed"):
        mask_store_settings(old)


def test_inputs_kept_on_the_host_give_the_same_outputs(trained_model, digits, monkeypatch):
    """Streamed block by block from the host, the inputs give the outputs they give held on the device."""
    model, components = trained_model
    _, test = digits
    images, labels = test.images[:12], test.labels[:12]
    masks = shard_masks(3, 0, 9, len(components), 0.1)
    held = ComponentMarginEvaluator(model, components, images, labels, batch_size=10, inputs_on_device=True)
    streamed = ComponentMarginEvaluator(model, components, images, labels, batch_size=10, inputs_on_device=False)
    assert held.inputs_on_device and not streamed.inputs_on_device
    np.testing.assert_array_equal(streamed(masks), held(masks))
    monkeypatch.setattr(sampling, "INPUTS_ON_DEVICE_BYTES", images.element_size() * images.numel() - 1)
    assert not ComponentMarginEvaluator(model, components, images, labels).inputs_on_device  # auto: too large
    with pytest.raises(ValueError, match="inputs_on_device"):
        ComponentMarginEvaluator(model, components, images, labels, inputs_on_device="sometimes")


def test_a_non_finite_margin_in_a_store_is_named_where_it_is_read(tmp_path):
    """A NaN written into a finished store stops every reader, naming the store, row and shard to resample."""
    path = tmp_path / "train.zarr"
    create_mask_store(path, n_masks=30, n_units=5, n_inputs=3, shard_size=10, ablation_rate=0.2, seed=0)
    for shard in range(3):
        run_shard(path, shard, _linear_evaluator(5, 3))
    zarr.open_group(str(path), mode="r+")["margins"][23, 1] = np.nan
    with pytest.raises(NonFiniteMarginError, match=r"row 23 \(shard 2\).*train.shards/2.json"):
        read_rows(path)
    with pytest.raises(NonFiniteMarginError, match="shard 2"):
        list(iter_rows(path, 0, 30))
    assert len(list(iter_rows(path, 0, 20))) == 2  # the rows before it read as they are
