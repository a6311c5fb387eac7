import numpy as np
import pytest
import torch

from compattr.data import load_dataset, select_test_inputs
from compattr.models import build_model, train_classifier
from compattr.outputs import margins

ARCH = {"name": "cifar_resnet", "widths": [4, 8], "blocks": [1, 1]}


def _weights(model):
    return torch.cat([p.flatten() for p in model.state_dict().values() if p.is_floating_point()])


def test_seeded_build_and_training_are_reproducible(digits):
    train, _ = digits
    small = type(train)(train.images[:256], train.labels[:256])
    models = [build_model(ARCH, 10, 1, seed=3) for _ in range(3)]
    torch.testing.assert_close(_weights(models[0]), _weights(models[1]))
    assert not torch.equal(_weights(models[0]), _weights(build_model(ARCH, 10, 1, seed=4)))
    for model in models[:2]:
        train_classifier(model, small, epochs=1, batch_size=64, lr=0.05, weight_decay=0.0, seed=0)
    torch.testing.assert_close(_weights(models[0]), _weights(models[1]), rtol=0, atol=0)


def test_margin_is_correct_logit_minus_best_other():
    logits = torch.tensor([[2.0, 5.0, 1.0], [0.0, -1.0, 3.0]])
    torch.testing.assert_close(margins(logits, torch.tensor([1, 0])), torch.tensor([3.0, -3.0]))


def test_invalid_configurations_fail_early(digits):
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model({"name": "vgg"}, 10, 1)
    with pytest.raises(ValueError, match="equal length"):
        build_model({"name": "cifar_resnet", "widths": [4, 8], "blocks": [1]}, 10, 1)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist")
    _, test = digits
    with pytest.raises(ValueError, match="asked for 10000 test inputs"):
        select_test_inputs(test, 10_000, 0)


def test_test_inputs_round_trip(digits, tmp_path):
    from compattr.data import load_test_inputs, save_test_inputs

    _, test = digits
    index = select_test_inputs(test, 7, seed=2)
    save_test_inputs(str(tmp_path / "inputs.npz"), test, index)
    loaded = load_test_inputs(str(tmp_path / "inputs.npz"))
    torch.testing.assert_close(loaded.images, test.images[index])
    torch.testing.assert_close(loaded.labels, test.labels[index])
    np.testing.assert_array_equal(index, select_test_inputs(test, 7, seed=2))


@pytest.mark.parametrize("residual", [True, False])
def test_plain_network_has_no_path_around_a_block(residual):
    """Without residual connections, zeroing a block's second conv cuts the input off from the logits."""
    from compattr.components import zero_filters
    from compattr.discovery import conv_components

    model = build_model({**ARCH, "residual": residual}, 10, 1, seed=0).eval()
    components = conv_components(model)
    assert any("downsample" in name for name in components.names) == residual
    ablated = torch.tensor([name.startswith("layers.0.0.conv2:") for name in components.names])
    zero_filters(model, components, ablated)
    with torch.no_grad():
        logits = model(torch.randn(2, 1, 8, 8))
    assert torch.allclose(logits[0], logits[1]) == (not residual)
