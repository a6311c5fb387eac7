"""Datasets, as (train, test) splits of image tensors and integer labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["ImageSplit", "load_dataset", "select_test_inputs", "save_test_inputs", "load_test_inputs"]


@dataclass(frozen=True)
class ImageSplit:
    """Images ``(n, channels, height, width)`` (float32) with labels ``(n,)`` (int64)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"images must be (n, c, h, w), got shape {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must have one entry per image")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes, taken as one more than the largest label."""
        return int(self.labels.max()) + 1


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


def load_dataset(
    name: str, *, test_fraction: float = 0.3, seed: int = 0, image_size: int = 8
) -> tuple[ImageSplit, ImageSplit]:
    """Load a dataset by name and return its ``(train, test)`` splits.

    Parameters
    ----------
    name : {"digits"}
        ``"digits"``: scikit-learn's bundled 8x8 handwritten digits (no download),
        scaled to [-1, 1] and split at random into train and test.
    test_fraction : float, default=0.3
        Fraction of the images held out as the test split.
    seed : int, default=0
        Seed of the train/test permutation.
    image_size : int, default=8
        Side of the returned images (bilinear resampling when not 8).
    """
    if name == "digits":
        return _load_digits(test_fraction, seed, image_size)
    raise ValueError(f"unknown dataset {name!r}; known: 'digits'")


def select_test_inputs(split: ImageSplit, n_inputs: int, seed: int) -> np.ndarray:
    """Seeded choice of ``n_inputs`` distinct indices into ``split`` (sorted)."""
    if n_inputs > len(split):
        raise ValueError(f"asked for {n_inputs} test inputs but the split holds {len(split)} images")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(len(split), size=n_inputs, replace=False))


def save_test_inputs(path: str, split: ImageSplit, index: np.ndarray) -> None:
    """Write the chosen test inputs (their indices into ``split``, images and labels) as ``.npz``."""
    np.savez(path, index=index, images=split.images[index].numpy(), labels=split.labels[index].numpy())


def load_test_inputs(path: str) -> ImageSplit:
    """Read test inputs written by :func:`save_test_inputs`."""
    with np.load(path) as data:
        return ImageSplit(torch.from_numpy(data["images"]), torch.from_numpy(data["labels"]))
