"""Datasets, as (train, test) splits of image tensors and integer labels.

- ``digits``: scikit-learn's bundled 8x8 digits (no download).
- ``cifar10``: the CIFAR-10 python batches under ``root`` (downloaded there by
  torchvision, archive md5 checked, when ``download`` is true).
- ``imagenet``: an ImageNet validation folder in ImageFolder layout (one
  sub-folder per class wnid), read lazily: only the images asked for are decoded.
- ``text``: the Python documentation's topics (``pydoc_data``, part of every CPython
  installation, under the Python Software Foundation License), as windows of characters
  whose label is the next character: a language-model corpus that needs no download.
"""

from __future__ import annotations

import pickle
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from compattr.downloads import CIFAR10

__all__ = [
    "DataMissingError",
    "ImageSplit",
    "ImageFolderSplit",
    "load_dataset",
    "select_test_inputs",
    "save_test_inputs",
    "save_inputs",
    "with_noise",
    "load_test_inputs",
    "load_test_ids",
]

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class DataMissingError(FileNotFoundError):
    """A dataset is not where the config says and cannot be downloaded; the message says what to put where."""


@dataclass(frozen=True)
class ImageSplit:
    """Inputs with labels ``(n,)`` (int64): images ``(n, channels, height, width)`` (float32), or token
    sequences ``(n, tokens)`` (int64) whose label is the next token.

    ``classes`` fixes the number of classes (a vocabulary's size); by default it is one more
    than the largest label.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: int | None = None

    def __post_init__(self) -> None:
        if self.images.ndim not in (2, 4):
            raise ValueError(
                "inputs must be images (n, c, h, w) or token sequences (n, tokens), "
                f"got shape {tuple(self.images.shape)}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must have one entry per image")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes: ``classes`` when given, else one more than the largest label."""
        return self.classes if self.classes is not None else int(self.labels.max()) + 1

    def subset(self, index: np.ndarray) -> ImageSplit:
        """The inputs at ``index``."""
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageSplit(self.images[index], self.labels[index], self.classes)

    def batches(self, batch_size: int) -> Iterator[ImageSplit]:
        """Consecutive batches of at most ``batch_size`` images."""
        for start in range(0, len(self), batch_size):
            yield ImageSplit(
                self.images[start : start + batch_size], self.labels[start : start + batch_size], self.classes
            )


class ImageFolderSplit:
    """An image folder (one sub-folder per class) read lazily, with ImageNet's evaluation transform.

    Images are resized (shorter side ``resize``), centre-cropped to ``crop`` and
    normalised with the ImageNet mean and std, as torchvision's pretrained
    weights expect. Classes are the sub-folders in sorted order, so for the
    ImageNet validation set (1,000 wnid folders) the labels are torchvision's
    class indices; ``num_classes`` is checked against the folders found.
    """

    def __init__(self, root: str | Path, num_classes: int = 1000, resize: int = 256, crop: int = 224) -> None:
        from torchvision import datasets, transforms

        root = Path(root)
        if not root.is_dir():
            raise DataMissingError(
                f"image folder {root} not found: set data.root to a folder with one sub-folder per class "
                f"({num_classes} for the ImageNet validation set, named by wnid, e.g. n01440764/)"
            )
        transform = transforms.Compose(
            [
                transforms.Resize(resize),
                transforms.CenterCrop(crop),
                transforms.ToTensor(),
                transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )
        try:
            self.folder = datasets.ImageFolder(str(root), transform=transform)
        except FileNotFoundError as err:
            raise DataMissingError(f"image folder {root} holds no images in class sub-folders: {err}") from err
        if len(self.folder.classes) != num_classes:
            raise DataMissingError(
                f"image folder {root} has {len(self.folder.classes)} class sub-folders, expected {num_classes}: "
                "labels would not match the model's classes"
            )
        self.labels = torch.as_tensor(self.folder.targets, dtype=torch.long)
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> ImageSplit:
        """Decode the images at ``index``."""
        images = [self.folder[int(i)][0] for i in index]
        return ImageSplit(torch.stack(images), self.labels[torch.as_tensor(index, dtype=torch.long)])

    def batches(self, batch_size: int) -> Iterator[ImageSplit]:
        """Consecutive decoded batches of at most ``batch_size`` images."""
        for start in range(0, len(self), batch_size):
            yield self.subset(np.arange(start, min(start + batch_size, len(self))))


def _load_cifar10(root: str | Path, download: bool) -> tuple[ImageSplit, ImageSplit]:
    from torchvision.datasets.utils import check_md5, download_and_extract_archive

    folder = Path(root) / CIFAR10.base_folder
    names = [name for name, _ in CIFAR10.batches]
    if download and not all((folder / name).is_file() for name in names):
        try:
            download_and_extract_archive(CIFAR10.url, str(root), filename=CIFAR10.filename, md5=CIFAR10.archive_md5)
        except (OSError, RuntimeError) as err:
            raise DataMissingError(
                f"CIFAR-10 is not in {folder} and could not be downloaded from {CIFAR10.url} ({err}): download "
                f"that archive (md5 {CIFAR10.archive_md5}) and extract it into {root}"
            ) from err
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise DataMissingError(
            f"CIFAR-10 python batches {missing} missing in {folder}: set data.download: true, or download "
            f"{CIFAR10.url} (md5 {CIFAR10.archive_md5}) and extract it into {root}"
        )

    # unpickling runs code a crafted file holds: each batch is checked against its published digest first
    digests = dict(CIFAR10.batches)
    for name in names:
        if not check_md5(str(folder / name), digests[name]):
            raise DataMissingError(
                f"CIFAR-10 batch {folder / name} differs from the published one (md5 {digests[name]}): it is damaged "
                f"or not CIFAR-10's; delete {folder} and set data.download: true, or extract {CIFAR10.url} again"
            )

    def read(batch_names: list[str]) -> ImageSplit:
        images, labels = [], []
        for name in batch_names:
            with open(folder / name, "rb") as fh:
                batch = pickle.load(fh, encoding="bytes")
            images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
        x = torch.from_numpy(np.concatenate(images)).float() / 255.0
        mean, std = torch.tensor(CIFAR10_MEAN)[:, None, None], torch.tensor(CIFAR10_STD)[:, None, None]
        return ImageSplit((x - mean) / std, torch.from_numpy(np.concatenate(labels)))

    return read(names[:-1]), read(names[-1:])  # five training batches, then the test batch


def _load_digits(test_fraction: float, seed: int, image_size: int) -> tuple[ImageSplit, ImageSplit]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]
    images = (images - 0.5) / 0.5
    if image_size != images.shape[-1]:
        images = torch.nn.functional.interpolate(
            images, size=(image_size, image_size), mode="bilinear", align_corners=False
        )
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = int(round(test_fraction * len(labels)))
    test, train = order[:n_test], order[n_test:]
    return ImageSplit(images[train], labels[train]), ImageSplit(images[test], labels[test])


def _load_text(test_fraction: float, context: int, stride: int, num_classes: int) -> tuple[ImageSplit, ImageSplit]:
    """The Python documentation's topics as next-character windows: train from the start, test from the end."""
    from pydoc_data.topics import topics

    text = "\n".join(topics[key] for key in sorted(topics))
    common = [char for char, _ in Counter(text).most_common(num_classes - 1)]
    code = {char: i + 1 for i, char in enumerate(common)}  # 0: every rarer character
    ids = torch.tensor([code.get(char, 0) for char in text], dtype=torch.int64)
    cut = int(round(len(ids) * (1 - test_fraction)))

    def windows(tokens: torch.Tensor, step: int) -> ImageSplit:
        starts = torch.arange(0, len(tokens) - context, step)
        positions = starts[:, None] + torch.arange(context)
        return ImageSplit(tokens[positions], tokens[starts + context], num_classes)

    # test windows do not overlap: each held-out position is a separate input
    return windows(ids[:cut], stride), windows(ids[cut:], context)


def load_dataset(
    name: str,
    *,
    test_fraction: float = 0.3,
    seed: int = 0,
    image_size: int = 8,
    root: str | Path | None = None,
    download: bool = False,
    num_classes: int = 1000,
    context: int = 32,
    stride: int = 8,
) -> tuple[ImageSplit | None, ImageSplit | ImageFolderSplit]:
    """Load a dataset by name and return its ``(train, test)`` splits.

    Parameters
    ----------
    name : {"digits", "cifar10", "imagenet", "text"}
        ``"digits"``: scikit-learn's bundled 8x8 handwritten digits (no download),
        scaled to [-1, 1] and split at random into train and test.
        ``"text"``: windows of ``context`` characters of the Python documentation's
        topics (no download), labelled with the next character; the last
        ``test_fraction`` of the text is the test split (windows side by side),
        the rest the train split (a window every ``stride`` characters).
        ``"cifar10"``: the python batches under ``root`` (train 50,000, test 10,000).
        ``"imagenet"``: the validation folder ``root`` as test split, read lazily;
        there is no train split (``None``): the model comes with pretrained weights.
    test_fraction : float, default=0.3
        Digits: fraction of the images held out as the test split; text: of the characters.
    seed : int, default=0
        Digits: seed of the train/test permutation.
    image_size : int, default=8
        Digits: side of the returned images (bilinear resampling when not 8).
    root : path
        Where CIFAR-10 is (or is downloaded to), or the ImageNet validation folder.
    download : bool, default=False
        CIFAR-10: download into ``root`` when missing (torchvision, md5 checked).
    num_classes : int, default=1000
        ImageNet: number of class folders expected under ``root``; text: the vocabulary
        (the most frequent ``num_classes - 1`` characters, and one for all others).
    context, stride : int
        Text: characters per window, and between train windows.

    Raises
    ------
    DataMissingError
        When the data are not where ``root`` says and cannot be downloaded.
    """
    if name == "digits":
        return _load_digits(test_fraction, seed, image_size)
    if name == "text":
        return _load_text(test_fraction, context, stride, num_classes)
    if name in ("cifar10", "imagenet") and root is None:
        raise DataMissingError(f"dataset {name!r} needs data.root in the config")
    if name == "cifar10":
        return _load_cifar10(root, download)
    if name == "imagenet":
        return None, ImageFolderSplit(root, num_classes=num_classes)
    raise ValueError(f"unknown dataset {name!r}; known: 'digits', 'cifar10', 'imagenet', 'text'")


def select_test_inputs(split: ImageSplit | ImageFolderSplit, n_inputs: int, seed: int) -> np.ndarray:
    """Seeded choice of ``n_inputs`` distinct indices into ``split`` (sorted)."""
    if n_inputs > len(split):
        raise ValueError(f"asked for {n_inputs} test inputs but the split holds {len(split)} images")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(len(split), size=n_inputs, replace=False))


def save_test_inputs(path: str, split: ImageSplit | ImageFolderSplit, index: np.ndarray) -> None:
    """Write the chosen test inputs (their indices into ``split``, images and labels) as ``.npz``."""
    save_inputs(path, index, split.subset(index))


def save_inputs(path: str, ids: np.ndarray, inputs: ImageSplit) -> None:
    """Write inputs with their ids (indices into the test split they come from) as ``.npz``."""
    if len(ids) != len(inputs):
        raise ValueError(f"{len(ids)} ids for {len(inputs)} inputs")
    np.savez(path, index=np.asarray(ids), images=inputs.images.numpy(), labels=inputs.labels.numpy())


def with_noise(split: ImageSplit, std: float, seed: int) -> ImageSplit:
    """The images with seeded Gaussian noise of standard deviation ``std`` added (in the model's input units).

    A harder version of a split, for models that make too few mistakes on the clean one.
    """
    if std < 0:
        raise ValueError(f"noise standard deviation must be >= 0, got {std}")
    if std == 0:
        return split
    if not split.images.is_floating_point():
        raise ValueError("noise is added to images; these inputs are tokens (set editing.mistakes.noise: 0)")
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(split.images.shape, generator=generator, dtype=split.images.dtype)
    return ImageSplit(split.images + std * noise, split.labels)


def load_test_ids(path: str) -> np.ndarray:
    """The ids of the test inputs written by :func:`save_test_inputs`: their indices into the test split."""
    with np.load(path) as data:
        return data["index"]


def load_test_inputs(path: str) -> ImageSplit:
    """Read test inputs written by :func:`save_test_inputs`."""
    with np.load(path) as data:
        return ImageSplit(torch.from_numpy(data["images"]), torch.from_numpy(data["labels"]))
