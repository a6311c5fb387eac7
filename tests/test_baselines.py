import numpy as np
import torch
from torch import nn

from compattr.baselines import attribution_patching, leave_one_out
from compattr.components import conv_components
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
