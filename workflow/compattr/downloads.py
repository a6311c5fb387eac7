"""What a study may download, known without importing torch: the workflow plans and announces it before any job.

The facts here (addresses, sizes, file names) are torchvision's; a test checks them against
torchvision's own records, so parsing the workflow (``snakemake -n``) never pays for torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Download",
    "CIFAR10",
    "TORCHVISION_WEIGHTS",
    "WEIGHT_FILES",
    "torch_hub_dir",
    "dataset_download",
    "weights_download",
]


@dataclass(frozen=True)
class Download:
    """A file a study needs from the internet: what, where from, how large, where to, and whether it is there."""

    what: str
    url: str
    size_bytes: int
    destination: Path
    present: bool

    def describe(self) -> str:
        """One line: what, how large, from where, to where."""
        return f"{self.what}: {self.size_bytes / 2**20:.1f} MiB from {self.url} into {self.destination}"


@dataclass(frozen=True)
class _Cifar10:
    """CIFAR-10's python batches as torchvision's ``CIFAR10`` fetches them: archive, folder, batches and digests."""

    url: str = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    filename: str = "cifar-10-python.tar.gz"
    archive_md5: str = "c58f30108f718f92721af3b95e74349a"
    archive_bytes: int = 170_498_071
    base_folder: str = "cifar-10-batches-py"
    batches: tuple[tuple[str, str], ...] = (
        ("data_batch_1", "c99cafc152244af753f735de768cd75f"),
        ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
        ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
        ("data_batch_4", "634d18415352ddfa80567beed471001a"),
        ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
        ("test_batch", "40351d587109b95175f43aff81a1287e"),
    )


#: CIFAR-10's published archive and batches (torchvision ``CIFAR10``'s records).
CIFAR10 = _Cifar10()
#: The torchvision weights enum of each architecture that has pretrained weights.
TORCHVISION_WEIGHTS = {"torchvision_resnet50": "ResNet50_Weights", "torchvision_vit_b_16": "ViT_B_16_Weights"}
#: Address and size (MiB, as torchvision records it) of every pretrained weights file those enums name.
WEIGHT_FILES: dict[str, tuple[str, float]] = {
    "ResNet50_Weights.IMAGENET1K_V1": ("https://download.pytorch.org/models/resnet50-0676ba61.pth", 97.781),
    "ResNet50_Weights.IMAGENET1K_V2": ("https://download.pytorch.org/models/resnet50-11ad3fa6.pth", 97.79),
    "ViT_B_16_Weights.IMAGENET1K_V1": ("https://download.pytorch.org/models/vit_b_16-c867db91.pth", 330.285),
    "ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1": (
        "https://download.pytorch.org/models/vit_b_16_swag-9ac1b537.pth",
        331.398,
    ),
    "ViT_B_16_Weights.IMAGENET1K_SWAG_LINEAR_V1": (
        "https://download.pytorch.org/models/vit_b_16_lc_swag-4e70ced5.pth",
        330.285,
    ),
}


def torch_hub_dir() -> Path:
    """torch.hub's folder as torch finds it from the environment: ``$TORCH_HOME/hub`` (default ``~/.cache/torch``)."""
    default = os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(os.path.expanduser(os.getenv("TORCH_HOME", default))) / "hub"


def dataset_download(name: str, root: str | Path | None = None, **_: object) -> Download | None:
    """What loading dataset ``name`` under ``root`` may download (CIFAR-10), or None (digits, text, ImageNet)."""
    if name != "cifar10" or root is None:
        return None
    folder = Path(root) / CIFAR10.base_folder
    present = all((folder / batch).is_file() for batch, _ in CIFAR10.batches)
    return Download("CIFAR-10 (python batches)", CIFAR10.url, CIFAR10.archive_bytes, Path(root), present)


def weights_download(arch: str, weights: str) -> Download:
    """Torchvision's pretrained ``weights`` of ``arch`` as a download into torch's cache (``$TORCH_HOME``)."""
    if arch not in TORCHVISION_WEIGHTS:
        raise ValueError(f"architecture {arch!r} has no torchvision weights; known: {sorted(TORCHVISION_WEIGHTS)}")
    what = f"{TORCHVISION_WEIGHTS[arch]}.{weights}"
    if what not in WEIGHT_FILES:
        known = sorted(key.split(".", 1)[1] for key in WEIGHT_FILES if key.startswith(TORCHVISION_WEIGHTS[arch]))
        raise ValueError(f"model.weights {weights!r} is not one of {arch}'s weights: {known}")
    url, mebibytes = WEIGHT_FILES[what]
    cached = torch_hub_dir() / "checkpoints" / Path(url).name
    return Download(what, url, round(mebibytes * 2**20), cached, cached.is_file())
