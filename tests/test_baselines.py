import numpy as np
import pytest
import torch
from torch import nn

from compattr.baselines import attribution_patching, leave_one_out
from compattr.components import conv_components
from compattr.models import build_model
from compattr.sampling import ComponentMarginEvaluator, shard_masks


def _linear_margin_model():
    """Conv (no bias) -> linear head over two classes: the margin is linear in the conv's channels."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(6 * 5 * 5, 2)).eval()


def test_attribution_patching_is_exact_when_the_margin_is_linear():
    model = _linear_margin_model()
    components = conv_components(model)
    images = torch.randn(7, 1, 5, 5)
    labels = torch.randint(0, 2, (7,))
    evaluator = ComponentMarginEvaluator(model, components, images, labels)
    coef, intercept = attribution_patching(model, components, images, labels, batch_size=3)
    loo_coef, loo_intercept = leave_one_out(evaluator, len(components))
    np.testing.assert_allclose(intercept, loo_intercept, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(coef, loo_coef, rtol=1e-4, atol=1e-4)
    # Linear and additive: any mask's margin is predicted exactly.
    masks = shard_masks(0, 0, 20, len(components), 0.3)
    np.testing.assert_allclose(masks @ coef.T + intercept, evaluator(masks), rtol=1e-4, atol=1e-4)


def test_leave_one_out_matches_direct_single_ablations(trained_model, digits):
    model, components = trained_model
    _, test = digits
    images, labels = test.images[:5], test.labels[:5]
    evaluator = ComponentMarginEvaluator(model, components, images, labels)
    coef, intercept = leave_one_out(evaluator, len(components), chunk=7)
    for c in (0, 9, len(components) - 1):
        mask = np.zeros((1, len(components)), dtype=bool)
        mask[0, c] = True
        np.testing.assert_allclose(coef[:, c], evaluator(mask)[0] - intercept, rtol=1e-5, atol=1e-5)


def test_attribution_patching_tracks_leave_one_out_on_a_trained_resnet(trained_model, digits):
    model, components = trained_model
    _, test = digits
    images, labels = test.images[:8], test.labels[:8]
    coef, _ = attribution_patching(model, components, images, labels)
    loo, _ = leave_one_out(ComponentMarginEvaluator(model, components, images, labels), len(components))
    r = [np.corrcoef(a, b)[0, 1] for a, b in zip(coef, loo, strict=True)]
    # First order through ReLUs: correlated with the exact effects (a sign error would anti-correlate).
    assert np.median(r) > 0.1


def _first_order_exact_resnet():
    """A ResNet with shortcut convolutions and no ReLU, two classes: the margin is affine in every component.

    Its second stage calls the shortcut convolution before ``conv1``, so execution
    order differs from component (module) order. BatchNorm statistics are random,
    so no channel is trivially scaled.
    """
    torch.manual_seed(0)
    model = build_model({"name": "cifar_resnet", "widths": [4, 8, 8], "blocks": [1, 1, 1]}, 2, 1)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.ReLU):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, nn.Identity())
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_attribution_patching_columns_follow_component_order_in_a_resnet_with_shortcuts():
    model = _first_order_exact_resnet()
    components = conv_components(model)
    assert any("downsample" in name for name in components.module_names)
    images, labels = torch.randn(5, 1, 8, 8), torch.randint(0, 2, (5,))
    coef, intercept = attribution_patching(model, components, images, labels, batch_size=2)
    loo, base = leave_one_out(ComponentMarginEvaluator(model, components, images, labels), len(components))
    np.testing.assert_allclose(intercept, base, rtol=1e-4, atol=1e-4)
    scale = np.abs(loo).max()
    for c, name in enumerate(components.names):  # every column, against that component's own ablation
        np.testing.assert_allclose(coef[:, c], loo[:, c], atol=1e-4 * scale, err_msg=name)


def test_attribution_patching_refuses_a_component_module_called_twice():
    conv = nn.Conv2d(1, 1, 1, bias=False)
    model = nn.Sequential(conv, conv, nn.Flatten(), nn.Linear(4, 2)).eval()
    components = conv_components(model)
    with pytest.raises(ValueError, match="called more than once"):
        attribution_patching(model, components, torch.randn(2, 1, 2, 2), torch.tensor([0, 1]))
