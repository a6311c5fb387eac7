import copy
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from compattr.components import zero_filters
from compattr.discovery import conv_components
from compattr.models import CifarResNet
from compattr.outputs import margins


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


def test_squeeze_excitation_gates_are_left_out_of_a_torchvision_models_filters():
    from torchvision.models import mobilenet_v3_small
    from torchvision.ops.misc import SqueezeExcitation

    model = mobilenet_v3_small(weights=None)
    gates = [name for name, module in model.named_modules() if isinstance(module, SqueezeExcitation)]
    assert gates
    components = conv_components(model)
    inside = {name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)}
    outside = {name for name in inside if not any(name.startswith(f"{gate}.") for gate in gates)}
    assert outside < inside
    assert {name.rsplit(":", 1)[0] for name in components.names} == outside
    assert len(components) == sum(model.get_submodule(name).out_channels for name in outside)


def test_finding_a_plain_models_filters_does_not_import_torchvision():
    # a workflow job loads its model once per process: torchvision's import alone costs about a second
    code = (
        "import sys\n"
        "from compattr.discovery import conv_components\n"
        "from compattr.models import CifarResNet\n"
        "assert len(conv_components(CifarResNet([4, 8], [1, 1], num_classes=10))) == 4 + 2 * 4 + 3 * 8\n"
        "assert 'torchvision' not in sys.modules, 'torchvision was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_all_keep_mask_reproduces_unablated_margins(trained_model, digits):
    model, components = trained_model
    _, test = digits
    x, y = test.images[:32], test.labels[:32]
    with torch.no_grad():
        plain = margins(model(x), y)
        masked = margins(components.ablatable(model)(x, torch.ones(32, len(components))), y)
    torch.testing.assert_close(masked, plain)


def test_masking_a_channel_equals_zeroing_its_weights(trained_model, digits):
    model, components = trained_model
    _, test = digits
    x, y = test.images[:16], test.labels[:16]
    rng = np.random.default_rng(0)
    ablated = torch.from_numpy(rng.random((16, len(components))) < 0.2)
    network = components.ablatable(model)
    assert network.n_folded == len(components)  # every conv of the ResNet feeds a BatchNorm
    with torch.no_grad():
        masked = margins(network(x, (~ablated).float()), y)
    for i in range(16):
        reference = copy.deepcopy(model)
        zero_filters(reference, components, ablated[i])
        with torch.no_grad():
            expected = margins(reference(x[i : i + 1]), y[i : i + 1])
        torch.testing.assert_close(masked[i : i + 1], expected, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        assert not torch.allclose(masked, margins(model(x), y))


def test_masks_outside_batchnorm_and_in_it_both_equal_zeroed_weights():
    """A conv feeding a ReLU is masked on its output, one feeding a BatchNorm inside the BatchNorm."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, bias=False),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 3),
    )
    model[3].running_mean.normal_()
    model[3].running_var.uniform_(0.5, 2)
    model[3].weight.data.normal_()
    model.eval()
    components = conv_components(model)
    network = components.ablatable(model)
    assert network.n_folded == 6
    x = torch.randn(8, 2, 8, 8)
    ablated = torch.from_numpy(np.random.default_rng(1).random((8, len(components))) < 0.4)
    with torch.no_grad():
        out = network(x, (~ablated).float())
        for i in range(8):
            reference = copy.deepcopy(model)
            zero_filters(reference, components, ablated[i])
            torch.testing.assert_close(out[i : i + 1], reference(x[i : i + 1]), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(out, model(x))


def test_one_mask_row_per_group_of_samples_equals_the_rows_repeated(trained_model, digits):
    """keep with 3 rows for 12 samples: samples 0-3 take row 0, 4-7 row 1, 8-11 row 2."""
    model, components = trained_model
    _, test = digits
    x = test.images[:12]
    keep = torch.from_numpy(np.random.default_rng(2).random((3, len(components))) > 0.3).float()
    network = components.ablatable(model)
    with torch.no_grad():
        grouped, repeated = network(x, keep), network(x, keep.repeat_interleave(4, dim=0))
        torch.testing.assert_close(grouped, repeated, rtol=0, atol=0)
        assert not torch.allclose(grouped, network(x, keep.repeat(4, 1)))  # the rows' order matters


def test_ablatable_network_rejects_wrong_mask_shape(trained_model):
    model, components = trained_model
    network = components.ablatable(model)
    with pytest.raises(ValueError, match="keep must be"):
        network(torch.zeros(4, 1, 8, 8), torch.ones(4, 3))
    with pytest.raises(ValueError, match="rows dividing the batch of 4"):
        network(torch.zeros(4, 1, 8, 8), torch.ones(3, len(components)))
