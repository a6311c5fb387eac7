import copy

import numpy as np
import pytest
import torch

from compattr.components import conv_components, zero_filters
from compattr.models import CifarResNet, margins


def test_component_names_and_counts():
    model = CifarResNet([16, 32, 64], [1, 1, 1], num_classes=10, in_channels=1)
    components = conv_components(model)
    # stem 16, stage 1: 2x16, stage 2: 2x32 + 32 shortcut, stage 3: 2x64 + 64 shortcut
    assert len(components) == 16 + 32 + 96 + 192
    assert components.names[0] == "conv1:0"
    assert components.names[-1] == "layers.2.0.downsample.0:63"
    assert len(set(components.names)) == len(components)
    without = conv_components(model, include_shortcuts=False)
    assert len(without) == len(components) - 32 - 64
    assert not any("downsample" in name for name in without.names)


def test_cifar_resnet18_has_4800_filters():
    model = CifarResNet([64, 128, 256, 512], [2, 2, 2, 2], num_classes=10)
    assert len(conv_components(model)) == 4800


def test_all_keep_mask_reproduces_unablated_margins(trained_model, digits):
    model, components = trained_model
    _, test = digits
    x, y = test.images[:32], test.labels[:32]
    with torch.no_grad():
        plain = margins(model(x), y)
        with components.ablate(model, torch.ones(32, len(components))):
            masked = margins(model(x), y)
    torch.testing.assert_close(masked, plain)


def test_masking_a_channel_equals_zeroing_its_weights(trained_model, digits):
    model, components = trained_model
    _, test = digits
    x, y = test.images[:16], test.labels[:16]
    rng = np.random.default_rng(0)
    ablated = torch.from_numpy(rng.random((16, len(components))) < 0.2)
    with torch.no_grad(), components.ablate(model, (~ablated).float()):
        masked = margins(model(x), y)
    for i in range(16):
        reference = copy.deepcopy(model)
        zero_filters(reference, components, ablated[i])
        with torch.no_grad():
            expected = margins(reference(x[i : i + 1]), y[i : i + 1])
        torch.testing.assert_close(masked[i : i + 1], expected, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        assert not torch.allclose(masked, margins(model(x), y))


def test_ablate_rejects_wrong_mask_shape(trained_model):
    model, components = trained_model
    with pytest.raises(ValueError, match="keep must be"), components.ablate(model, torch.ones(4, 3)):
        pass
