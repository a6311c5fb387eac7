"""Loading of the paper-scale data and weights, on small fake files in the true on-disk formats."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import compattr.data
from compattr.data import DataMissingError, load_dataset, save_test_inputs, select_test_inputs
from compattr.discovery import conv_components
from compattr.downloads import dataset_download, weights_download
from compattr.models import (
    WeightsMissingError,
    build_model,
    load_state_dict_file,
    random_crop_flip,
    sha256sum,
    torchvision_weights,
)


def write_fake_cifar10(root, monkeypatch, n_per_batch=6, seed=0):
    """CIFAR-10's python layout: pickled dicts with b"data" (n, 3072) uint8 rows and b"labels".

    Their digests stand in for the published ones (``compattr.data.CIFAR10``) while the test runs.
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = list(rng.integers(0, 10, size=n_per_batch))
        labels[:2] = [0, 9]  # every batch spans the ten classes' range
        with open(folder / name, "wb") as fh:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels}, fh)
        batches[name] = (data, labels)
    digests = tuple((name, hashlib.md5((folder / name).read_bytes()).hexdigest()) for name in batches)
    monkeypatch.setattr(compattr.data, "CIFAR10", dataclasses.replace(compattr.data.CIFAR10, batches=digests))
    return batches


def test_cifar10_python_batches_are_read_in_order_and_normalised(tmp_path, monkeypatch):
    batches = write_fake_cifar10(tmp_path, monkeypatch)
    train, test = load_dataset("cifar10", root=tmp_path)
    assert train.images.shape == (30, 3, 32, 32) and test.images.shape == (6, 3, 32, 32)
    assert train.labels.tolist() == sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    data, _ = batches["test_batch"]
    pixel = data[3].reshape(3, 32, 32)[:, 5, 7] / 255.0  # row-major channel planes
    expected = (pixel - np.array([0.4914, 0.4822, 0.4465])) / np.array([0.2470, 0.2435, 0.2616])
    np.testing.assert_allclose(test.images[3, :, 5, 7].numpy(), expected, rtol=1e-5)
    assert train.num_classes == 10


def test_a_cifar10_batch_that_is_not_the_published_one_is_refused_before_it_is_unpickled(tmp_path, monkeypatch):
    write_fake_cifar10(tmp_path, monkeypatch)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(b"not a pickle: reading it would fail in pickle, not here")
    with pytest.raises(DataMissingError, match=r"data_batch_3 differs from the published one \(md5 [0-9a-f]{32}\)"):
        load_dataset("cifar10", root=tmp_path)


def test_missing_cifar10_fails_naming_the_folder_and_the_fix(tmp_path):
    with pytest.raises(DataMissingError, match=r"cifar-10-batches-py.*data.download: true"):
        load_dataset("cifar10", root=tmp_path)
    with pytest.raises(DataMissingError, match="data.root"):
        load_dataset("cifar10")


def test_the_cifar10_download_is_planned_until_the_batches_are_there(tmp_path, monkeypatch):
    plan = dataset_download("cifar10", root=tmp_path, download=True)
    assert not plan.present and plan.url.endswith("cifar-10-python.tar.gz") and plan.destination == tmp_path
    assert "162.6 MiB" in plan.describe()
    write_fake_cifar10(tmp_path, monkeypatch)
    assert dataset_download("cifar10", root=tmp_path).present
    assert dataset_download("digits") is None and dataset_download("imagenet", root=tmp_path) is None


def write_image_folder(root, classes=("n01440764", "n01443537", "n01484850"), per_class=2):
    for k, wnid in enumerate(classes):
        (root / wnid).mkdir(parents=True)
        for j in range(per_class):
            pixels = np.full((40 + 7 * j, 50, 3), 40 * k + j, dtype=np.uint8)
            Image.fromarray(pixels).save(root / wnid / f"ILSVRC2012_val_{k}{j}.JPEG")


def test_image_folder_is_read_lazily_with_imagenet_preprocessing(tmp_path):
    write_image_folder(tmp_path / "val")
    train, test = load_dataset("imagenet", root=tmp_path / "val", num_classes=3)
    assert train is None and len(test) == 6 and test.num_classes == 3
    index = select_test_inputs(test, 3, seed=0)
    save_test_inputs(str(tmp_path / "inputs.npz"), test, index)
    with np.load(tmp_path / "inputs.npz") as saved:
        assert saved["images"].shape == (3, 3, 224, 224)
        np.testing.assert_array_equal(saved["labels"], index // 2)  # sorted wnid folders give the labels
    with pytest.raises(DataMissingError, match="has 3 class sub-folders, expected 1000"):
        load_dataset("imagenet", root=tmp_path / "val")
    with pytest.raises(DataMissingError, match="not found: set data.root"):
        load_dataset("imagenet", root=tmp_path / "nowhere")


def test_resnet50_has_coars_22720_components_without_shortcuts():
    model = build_model({"name": "torchvision_resnet50"}, 1000, 3)
    assert len(conv_components(model, include_shortcuts=False)) == 22_720
    assert len(conv_components(model, include_shortcuts=True)) == 22_720 + 3_840


def test_checkpoint_is_loaded_only_with_its_sha256(tmp_path):
    arch = {"name": "cifar_resnet", "widths": [4, 8], "blocks": [1, 1]}
    model = build_model(arch, 10, 3, seed=1)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    digest = sha256sum(tmp_path / "model.pt")
    fresh = build_model(arch, 10, 3, seed=2)
    fresh.load_state_dict(load_state_dict_file(tmp_path / "model.pt", digest))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value)
    with pytest.raises(WeightsMissingError, match="has sha256"):
        load_state_dict_file(tmp_path / "model.pt", "0" * 64)
    with pytest.raises(WeightsMissingError, match="not found"):
        load_state_dict_file(tmp_path / "missing.pt", digest)


def test_torchvision_weights_come_from_the_cache_and_are_hash_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, dst, hash_prefix=None, progress=True):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsMissingError, match=r"resnet50-0676ba61.pth.*set model.download: true.*97.8 MiB"):
        torchvision_weights("torchvision_resnet50", "IMAGENET1K_V1")  # no download unless asked
    with pytest.raises(WeightsMissingError, match=r"resnet50-0676ba61.pth.*could not be downloaded"):
        torchvision_weights("torchvision_resnet50", "IMAGENET1K_V1", download=True)
    plan = weights_download("torchvision_resnet50", "IMAGENET1K_V1")
    assert plan.destination == tmp_path / "hub/checkpoints/resnet50-0676ba61.pth" and not plan.present
    cached = tmp_path / "hub/checkpoints/resnet50-0676ba61.pth"
    state = build_model({"name": "torchvision_resnet50"}, 1000, 3, seed=0).state_dict()
    torch.save(state, cached)  # the right keys, but not the published file: its hash differs
    with pytest.raises(WeightsMissingError, match="fails its checksum"):
        torchvision_weights("torchvision_resnet50", "IMAGENET1K_V1")
    # The same file given as model.checkpoint with its sha256 loads into the architecture.
    model = build_model({"name": "torchvision_resnet50"}, 1000, 3, seed=1)
    model.load_state_dict(load_state_dict_file(cached, sha256sum(cached)))
    torch.testing.assert_close(model.state_dict()["fc.weight"], state["fc.weight"])


def test_random_crop_flip_shifts_and_mirrors_within_the_padding():
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6) + 1
    out = random_crop_flip(images, 2, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    for k in range(2):
        values = set(out[k].flatten().tolist()) - {0.0}  # padding is zero
        assert values <= set(images[k].flatten().tolist()) and len(values) >= 16  # at least a 4x4 window


def test_download_facts_known_without_torch_are_torchvisions(tmp_path, monkeypatch):
    """The addresses, sizes and cache folder the workflow announces before any job match torchvision's and torch's."""
    from torchvision.datasets import CIFAR10 as TorchvisionCifar10
    from torchvision.models import get_weight

    from compattr.downloads import CIFAR10, TORCHVISION_WEIGHTS, WEIGHT_FILES, torch_hub_dir

    assert (CIFAR10.url, CIFAR10.filename, CIFAR10.archive_md5, CIFAR10.base_folder) == (
        TorchvisionCifar10.url,
        TorchvisionCifar10.filename,
        TorchvisionCifar10.tgz_md5,
        TorchvisionCifar10.base_folder,
    )
    assert [list(batch) for batch in CIFAR10.batches] == TorchvisionCifar10.train_list + TorchvisionCifar10.test_list
    import torchvision.models as tvm

    listed = {f"{enum}.{w.name}" for enum in TORCHVISION_WEIGHTS.values() for w in getattr(tvm, enum)}
    assert set(WEIGHT_FILES) == listed
    for name, (url, mebibytes) in WEIGHT_FILES.items():
        entry = get_weight(name)
        assert (url, mebibytes) == (entry.url, entry.meta["_file_size"])
    for env in ({"TORCH_HOME": str(tmp_path / "th")}, {"XDG_CACHE_HOME": str(tmp_path / "xdg")}, {}):
        monkeypatch.delenv("TORCH_HOME", raising=False)
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        assert torch_hub_dir() == Path(torch.hub.get_dir())
    with pytest.raises(ValueError, match=r"'IMAGENET9K' is not one of torchvision_resnet50's weights"):
        weights_download("torchvision_resnet50", "IMAGENET9K")
