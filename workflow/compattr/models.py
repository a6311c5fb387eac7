"""CIFAR-style residual networks and a small, seeded training loop.

The architecture follows torchvision's ``resnet.py`` (He et al., 2016, "Deep
Residual Learning for Image Recognition") with the CIFAR stem: one 3x3
convolution, no max-pool. Every convolution has no bias and is followed by
BatchNorm, so ablating a filter (zeroing its output channel before BatchNorm)
is the same as zeroing that filter's weights.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from compattr.components import ComponentSet
from compattr.data import ImageFolderSplit, ImageSplit
from compattr.discovery import conv_components, transformer_components
from compattr.downloads import weights_download
from compattr.outputs import class_logits

__all__ = [
    "WeightsMissingError",
    "BasicBlock",
    "mlp",
    "CifarResNet",
    "ARCHITECTURES",
    "TextTransformer",
    "build_model",
    "study_components",
    "sha256sum",
    "load_state_dict_file",
    "torchvision_weights",
    "random_crop_flip",
    "train_classifier",
    "accuracy",
]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution with no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (1x1 shortcut when shapes change).

    With ``residual=False`` the block is plain: the two convolutions alone, no shortcut.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, residual: bool = True) -> None:
        super().__init__()
        self.residual = residual
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if residual and (stride != 1 or in_planes != planes):
            self.downsample = nn.Sequential(conv1x1(in_planes, planes, stride), nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if not self.residual:
            return self.relu(out)
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """ResNet with a 3x3 stem and no max-pool, for small images.

    Parameters
    ----------
    widths : sequence of int
        Channels of each stage; stages after the first halve the resolution.
    blocks : sequence of int
        Number of :class:`BasicBlock` per stage, same length as ``widths``.
    num_classes : int
        Number of output logits.
    in_channels : int, default=3
        Channels of the input images.
    residual : bool, default=True
        False builds the same layout without residual connections (a plain CNN).
    """

    def __init__(
        self,
        widths: Sequence[int],
        blocks: Sequence[int],
        num_classes: int,
        in_channels: int = 3,
        residual: bool = True,
    ) -> None:
        super().__init__()
        if len(widths) != len(blocks) or not widths:
            raise ValueError(f"widths and blocks must be non-empty and of equal length, got {widths}, {blocks}")
        if min(widths) < 1 or min(blocks) < 1:
            raise ValueError("every stage needs at least one channel and one block")
        self.conv1 = conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages = []
        in_planes = widths[0]
        for i, (planes, n_blocks) in enumerate(zip(widths, blocks, strict=True)):
            layers = []
            for j in range(n_blocks):
                stride = 2 if i > 0 and j == 0 else 1
                layers.append(BasicBlock(in_planes, planes, stride, residual))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layers = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def mlp(in_features: int, num_classes: int, hidden: int, seed: int | None = None) -> nn.Sequential:
    """``Flatten, Linear, ReLU, Linear`` (``Flatten, Linear`` for ``hidden=0``), its initial weights from ``seed``.

    The model of data attribution (:mod:`compattr.datamodels`): one is trained per mask.
    """
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        if hidden == 0:
            return nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_classes))
        return nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


class WeightsMissingError(FileNotFoundError):
    """Model weights are missing, cannot be downloaded, or fail their checksum; the message says what to do."""


ARCHITECTURES = (
    "cifar_resnet",
    "vit",
    "text_transformer",
    "hf_gpt2",
    "torchvision_resnet50",
    "torchvision_vit_b_16",
    "mlp",
)


def build_model(arch: dict, num_classes: int, in_channels: int, seed: int | None = None) -> nn.Module:
    """Build a model from its config entry.

    ``{"name": "cifar_resnet", "widths": [...], "blocks": [...]}`` (optionally ``"residual": false``):
    :class:`CifarResNet`;
    ``{"name": "vit", "image_size", "patch_size", "layers", "heads", "hidden", "mlp"}``: a small
    torchvision ``VisionTransformer`` (its patch embedding takes ``in_channels``);
    ``{"name": "text_transformer", "context", "layers", "heads", "hidden", "mlp"}``: a
    :class:`TextTransformer` over ``num_classes`` tokens;
    ``{"name": "hf_gpt2", ...}`` (the same keys): Hugging Face's ``GPT2LMHeadModel`` of that size,
    without dropout (needs the ``hf`` extra), used as it is: its return is a ``ModelOutput``;
    ``{"name": "torchvision_resnet50"}`` or ``{"name": "torchvision_vit_b_16"}``: torchvision's
    ResNet-50 (ImageNet stem) or ViT-B/16, randomly initialised (load weights with
    :func:`torchvision_weights`);
    ``{"name": "mlp", "hidden", "in_features"}``: the MLP of data attribution
    (:func:`mlp`; ``hidden`` 0 is softmax regression).
    With ``seed``, the initial weights depend on it alone (the global RNG is left as it was).
    """
    name = arch["name"]
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {list(ARCHITECTURES)}")
    if name.startswith("torchvision_") and in_channels != 3:
        raise ValueError(f"{name} takes 3-channel images, got {in_channels}")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        if name == "torchvision_resnet50":
            from torchvision.models import resnet50

            return resnet50(weights=None, num_classes=num_classes)
        if name == "torchvision_vit_b_16":
            from torchvision.models import vit_b_16

            return vit_b_16(weights=None, num_classes=num_classes)
        if name == "vit":
            return _small_vit(arch, num_classes, in_channels)
        if name == "mlp":
            if "in_features" not in arch:
                raise ValueError("model.arch mlp needs in_features (the inputs' size), which its checkpoint records")
            return mlp(arch["in_features"], num_classes, arch["hidden"])
        if name == "text_transformer":
            sizes = (arch[key] for key in ("context", "layers", "heads", "hidden", "mlp"))
            return TextTransformer(num_classes, *sizes)
        if name == "hf_gpt2":
            return _hf_gpt2(arch, num_classes)
        return CifarResNet(arch["widths"], arch["blocks"], num_classes, in_channels, arch.get("residual", True))


def _hf_gpt2(arch: dict, vocab: int) -> nn.Module:
    """Hugging Face's ``GPT2LMHeadModel`` over ``vocab`` tokens, of the config's size, without dropout."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as error:
        raise ImportError("model.arch hf_gpt2 needs Hugging Face transformers: pip install -e '.[hf]'") from error
    config = GPT2Config(
        vocab_size=vocab,
        n_positions=arch["context"],
        n_embd=arch["hidden"],
        n_layer=arch["layers"],
        n_head=arch["heads"],
        n_inner=arch["mlp"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,
        eos_token_id=None,
    )
    return GPT2LMHeadModel(config)


def _small_vit(arch: dict, num_classes: int, in_channels: int) -> nn.Module:
    """A torchvision ``VisionTransformer`` of the config's size, its patch embedding over ``in_channels``."""
    from torchvision.models import VisionTransformer

    if arch["image_size"] % arch["patch_size"]:
        raise ValueError(
            f"model.arch.image_size {arch['image_size']} is not a multiple of "
            f"model.arch.patch_size {arch['patch_size']}"
        )
    model = VisionTransformer(
        image_size=arch["image_size"],
        patch_size=arch["patch_size"],
        num_layers=arch["layers"],
        num_heads=arch["heads"],
        hidden_dim=arch["hidden"],
        mlp_dim=arch["mlp"],
        num_classes=num_classes,
    )
    if in_channels != 3:
        patch = arch["patch_size"]
        model.conv_proj = nn.Conv2d(in_channels, arch["hidden"], kernel_size=patch, stride=patch)
    return model


class _TextBlock(nn.Module):
    """A pre-norm decoder block: causal self-attention, then an MLP, each added to the residual stream."""

    def __init__(self, context: int, hidden: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(hidden, mlp), nn.GELU(), nn.Linear(mlp, hidden))
        self.register_buffer("causal", torch.ones(context, context, dtype=torch.bool).triu(1), persistent=False)

    def forward(self, x: Tensor, last_only: bool = False) -> Tensor:
        """The block's output (batch, tokens, hidden), or with ``last_only`` the last position's (batch, 1, hidden).

        The last position's query attends to every key: the causal mask leaves it unmasked.
        """
        h = self.ln_1(x)
        if last_only:
            attended, _ = self.attn(h[:, -1:], h, h, need_weights=False)
            x = x[:, -1:] + attended
        else:
            n = x.shape[1]
            attended, _ = self.attn(h, h, h, attn_mask=self.causal[:n, :n], need_weights=False, is_causal=True)
            x = x + attended
        return x + self.mlp(self.ln_2(x))


class TextTransformer(nn.Module):
    """A small decoder-only transformer language model: logits of the token after each window.

    Token and learned position embeddings, ``layers`` pre-norm blocks of causal multi-head
    attention and a GELU MLP, a final LayerNorm and a linear read-out at the last position. Only
    that position is read, so the last block computes it alone (its query over every key): the
    same logits as every position at a fraction of the cost, and the last block's unit means
    (:func:`compattr.components.component_means`) are those at the read-out position.
    Its components (:func:`compattr.components.transformer_components`) are ``blocks.<b>.attn``'s
    heads and ``blocks.<b>.mlp.0``'s neurons.
    """

    def __init__(self, vocab: int, context: int, layers: int, heads: int, hidden: int, mlp: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.position = nn.Parameter(torch.randn(context, hidden) * 0.02)
        self.blocks = nn.Sequential(*(_TextBlock(context, hidden, heads, mlp) for _ in range(layers)))
        self.ln_f = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens) + self.position[: tokens.shape[1]]
        for block in self.blocks[:-1]:
            x = block(x)
        # only the last position is read out: the last block computes it alone
        return self.head(self.ln_f(self.blocks[-1](x, last_only=True)[:, -1]))


def study_components(model: nn.Module, spec: dict) -> ComponentSet:
    """The components a study's config names (``components``): ``kind`` conv (every filter; shortcut
    convolutions unless ``include_shortcuts`` is false) or transformer (every attention head and MLP neuron).
    """
    kind = spec.get("kind", "conv")
    if kind == "transformer":
        return transformer_components(model)
    if kind != "conv":
        raise ValueError(f"config components.kind must be 'conv' or 'transformer', got {kind!r}")
    return conv_components(model, include_shortcuts=spec.get("include_shortcuts", True))


def sha256sum(path: str | Path) -> str:
    """Hex SHA-256 digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_state_dict_file(path: str | Path, sha256: str | None = None) -> dict[str, Tensor]:
    """Read a state dict (or a :func:`save_checkpoint` file) after checking its SHA-256 when given."""
    path = Path(path)
    if not path.is_file():
        raise WeightsMissingError(f"checkpoint {path} not found: set model.checkpoint.path to the file")
    if sha256 is not None and (actual := sha256sum(path)) != sha256.lower():
        raise WeightsMissingError(f"checkpoint {path} has sha256 {actual}, but model.checkpoint.sha256 says {sha256}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state)


def torchvision_weights(arch: str, weights: str, download: bool = False) -> dict[str, Tensor]:
    """Torchvision's pretrained ``weights`` (e.g. ``IMAGENET1K_V1``) of ``arch``, from torch's cache.

    With ``download``, a missing file is downloaded into the cache (``$TORCH_HOME/hub/checkpoints``);
    the file's SHA-256 must start with the hash in its name, as torch.hub names them.
    """
    plan = weights_download(arch, weights)
    cached, url = plan.destination, plan.url
    prefix = re.search(r"-([a-f0-9]+)\.", cached.name).group(1)
    if not cached.is_file():
        if not download:
            raise WeightsMissingError(
                f"weights {plan.what} are not in torch's cache ({cached}): set model.download: true to fetch "
                f"them ({plan.describe()}), or copy that file there (TORCH_HOME moves the cache)"
            )
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(cached), hash_prefix=prefix)
        except (OSError, RuntimeError) as err:
            raise WeightsMissingError(
                f"weights {plan.what} are not in torch's cache ({cached}) and could not be downloaded from {url} "
                f"({err}): copy that file to {cached} (TORCH_HOME moves the cache), or give model.checkpoint"
            ) from err
    if not sha256sum(cached).startswith(prefix):
        raise WeightsMissingError(f"{cached} fails its checksum (sha256 should start with {prefix}): delete it")
    return torch.load(cached, map_location="cpu", weights_only=True)


def random_crop_flip(images: Tensor, pad: int, generator: torch.Generator) -> Tensor:
    """Per-image random crop after zero padding by ``pad`` pixels, and random horizontal flip."""
    n, c, h, w = images.shape
    padded = nn.functional.pad(images, (pad, pad, pad, pad))
    top = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(images.device)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(images.device)
    rows = (top[:, None] + torch.arange(h, device=images.device))[:, None, :, None]
    cols = (left[:, None] + torch.arange(w, device=images.device))[:, None, None, :]
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channel = torch.arange(c, device=images.device)[None, :, None, None]
    out = padded[batch, channel, rows, cols]
    flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def train_classifier(
    model: nn.Module,
    train: ImageSplit,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    augment: bool = False,
    label_smoothing: float = 0.0,
    device: str | torch.device = "cpu",
) -> list[float]:
    """Train ``model`` with SGD (Nesterov momentum 0.9) and a one-cycle learning rate.

    With ``augment``, every batch gets a random 4-pixel-padded crop and a random
    horizontal flip (the standard CIFAR augmentation). Returns the mean training
    loss of each epoch. Deterministic for a given seed on CPU.
    """
    if epochs < 1:
        raise ValueError("epochs must be at least 1")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    steps_per_epoch = -(-len(train) // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    losses = []
    for _ in tqdm(range(epochs), desc="train", unit="epoch", mininterval=5):
        order = torch.randperm(len(train), generator=generator)
        total = 0.0
        for start in range(0, len(train), batch_size):
            idx = order[start : start + batch_size]
            x, y = train.images[idx].to(device), train.labels[idx].to(device)
            if augment:
                x = random_crop_flip(x, 4, generator)
            loss = nn.functional.cross_entropy(class_logits(model(x)), y, label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(idx)
        losses.append(total / len(train))
    model.eval()
    return losses


@torch.no_grad()
def accuracy(model: nn.Module, split: ImageSplit | ImageFolderSplit, batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on ``split``."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for batch in split.batches(batch_size):
        correct += int((class_logits(model(batch.images.to(device))).argmax(1).cpu() == batch.labels).sum())
    return correct / len(split)
