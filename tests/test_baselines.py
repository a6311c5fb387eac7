import copy

import numpy as np
import pytest
import torch
from torch import nn

from compattr.baselines import (
    attribution_patching,
    exact_top,
    first_order_prior,
    keep_effects,
    leave_one_out,
    prior_passes,
    prior_points,
    relu_patching,
)
from compattr.discovery import conv_components
from compattr.features import PatchSet
from compattr.masks import shard_masks
from compattr.models import build_model
from compattr.outputs import margins
from compattr.sampling import ComponentMarginEvaluator


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


def test_leave_one_out_of_some_units_is_those_columns_of_the_whole(trained_model, digits):
    model, components = trained_model
    _, test = digits
    evaluator = ComponentMarginEvaluator(model, components, test.images[:5], test.labels[:5])
    whole, base = leave_one_out(evaluator, len(components), progress=False)
    units = [9, 0, len(components) - 1]
    some, some_base = leave_one_out(evaluator, len(components), chunk=2, units=units, progress=False)
    np.testing.assert_allclose(some, whole[:, units], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(some_base, base)
    with pytest.raises(ValueError, match=rf"units must be indices in \[0, {len(components)}\)"):
        leave_one_out(evaluator, len(components), units=[len(components)])


def test_exact_top_measures_the_largest_attributions_and_keeps_the_rest(trained_model, digits):
    model, components = trained_model
    _, test = digits
    images, labels = test.images[:5], test.labels[:5]
    evaluator = ComponentMarginEvaluator(model, components, images, labels)
    prior, _ = attribution_patching(model, components, images, labels)
    loo, _ = leave_one_out(evaluator, len(components), progress=False)
    asked = []

    def measure(units):
        asked.append(list(units))
        return leave_one_out(evaluator, len(components), units=units, progress=False)[0]

    coef, top = exact_top(prior, measure, 6)
    largest = np.abs(prior).mean(0)
    assert asked == [list(top)] and len(top) == 6 and largest[top].min() >= np.delete(largest, top).max()
    np.testing.assert_allclose(coef[:, top], loo[:, top], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.delete(coef, top, axis=1), np.delete(prior, top, axis=1))
    # measuring more units brings the prior closer to leave-one-out
    assert np.abs(coef - loo).sum() < np.abs(prior - loo).sum()
    unchanged, none = exact_top(prior, measure, 0)
    np.testing.assert_array_equal(unchanged, prior)
    assert len(none) == 0 and len(asked) == 1  # nothing measured
    with pytest.raises(ValueError, match=rf"exact_top must lie in \[0, {len(components)}\]"):
        exact_top(prior, measure, len(components) + 1)


def test_keep_effects_are_the_exact_changes_per_unit_of_keep_factor(trained_model, digits):
    model, components = trained_model
    _, test = digits
    images, labels = test.images[:4], test.labels[:4]
    network = components.ablatable(model).requires_grad_(False)
    loo, _ = leave_one_out(ComponentMarginEvaluator(model, components, images, labels), len(components), progress=False)
    units = [3, 0, len(components) - 1]
    at_one = keep_effects(network, images, labels, torch.ones(len(components)), units)
    np.testing.assert_allclose(at_one, loo[:, units], rtol=1e-4, atol=1e-4)
    keep = torch.full((len(components),), 0.8)
    ablated = keep.repeat(len(units) + 1, 1)
    ablated[torch.arange(len(units)), units] = 0
    outputs = _keep_margins(network, images, labels, ablated)
    expected = (outputs[:-1] - outputs[-1]).T / 0.8
    np.testing.assert_allclose(keep_effects(network, images, labels, keep, units), expected, rtol=1e-4, atol=1e-4)
    keep[3] = 0
    with pytest.raises(ValueError, match="keep factors must be > 0"):
        keep_effects(network, images, labels, keep, units)


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


def _keep_margins(network, images, labels, keeps):
    """Margins (len(keeps), n_inputs) of ``network`` at each row of float keep factors ``keeps``."""
    with torch.no_grad():
        x = images.repeat(len(keeps), 1, 1, 1)
        out = network(x, keeps)
        return margins(out, labels.repeat(len(keeps))).reshape(len(keeps), -1).double().numpy()


POINTS = [("unablated", 1), ("mean", 1), ("path", 3), ("masks", 2)]


@pytest.mark.parametrize(("point", "n_points"), POINTS)
def test_every_prior_is_exact_when_the_margin_is_affine_in_the_keep_factors(point, n_points):
    model = _linear_margin_model()
    components = conv_components(model)
    images, labels = torch.randn(6, 1, 5, 5), torch.randint(0, 2, (6,))
    coef, intercept = first_order_prior(
        model, components, images, labels, point=point, ablation_rate=0.2, n_points=n_points, batch_size=4
    )
    loo, base = leave_one_out(ComponentMarginEvaluator(model, components, images, labels), len(components))
    np.testing.assert_allclose(intercept, base, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(coef, loo, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("point", "n_points"), POINTS)
def test_every_prior_follows_component_order_in_a_resnet_with_shortcuts(point, n_points):
    """Without ReLUs the margin is linear in each keep factor alone, so at any point the derivative for
    component c is the change from ablating c there: every column is checked against that ablation."""
    model = _first_order_exact_resnet()
    components = conv_components(model)
    images, labels = torch.randn(4, 1, 8, 8), torch.randint(0, 2, (4,))
    coef, _ = first_order_prior(model, components, images, labels, point=point, ablation_rate=0.3, n_points=n_points)
    network = components.ablatable(model)
    expected = np.zeros_like(coef)
    for keep in prior_points(point, len(components), ablation_rate=0.3, n_points=n_points):
        toggled = keep.repeat(2 * len(components), 1)
        C = len(components)
        toggled[torch.arange(C), torch.arange(C)] = 0.0  # component c ablated ...
        toggled[C + torch.arange(C), torch.arange(C)] = 1.0  # ... and kept, the rest at the point
        f = _keep_margins(network, images, labels, toggled)
        expected += (f[:C] - f[C:]).T / n_points
    scale = np.abs(expected).max()
    for c, name in enumerate(components.names):
        np.testing.assert_allclose(coef[:, c], expected[:, c], atol=1e-4 * scale, err_msg=name)


def test_unablated_prior_is_attribution_patching(trained_model, digits):
    model, components = trained_model
    _, test = digits
    images, labels = test.images[:6], test.labels[:6]
    coef, intercept = first_order_prior(model, components, images, labels)
    atp, atp_intercept = attribution_patching(model, components, images, labels)
    np.testing.assert_allclose(coef, atp, rtol=1e-4, atol=1e-5 * np.abs(atp).max())
    np.testing.assert_allclose(intercept, atp_intercept, rtol=1e-5, atol=1e-5)


def test_a_prior_at_one_mask_is_the_gradient_at_that_mask(trained_model, digits):
    """On a network with ReLUs (not linear in the keep factors): central differences at the mask's keep factors."""
    model, components = trained_model
    _, test = digits
    images, labels = test.images[:3], test.labels[:3]
    coef, _ = first_order_prior(model, components, images, labels, point="masks", ablation_rate=0.1, seed=5)
    (keep,) = prior_points("masks", len(components), ablation_rate=0.1, seed=5)
    assert set(keep.unique().tolist()) <= {0.0, 1.0} and (keep == 0).any()
    network = components.ablatable(copy.deepcopy(model).double())
    h = 1e-5
    for c in (0, 7, len(components) - 1):
        step = torch.zeros(len(components), dtype=torch.float64)
        step[c] = h
        f = _keep_margins(network, images.double(), labels, torch.stack([keep + step, keep - step]).double())
        np.testing.assert_allclose(coef[:, c], -(f[0] - f[1]) / (2 * h), rtol=1e-3, atol=1e-4)
    moved, _ = first_order_prior(model, components, images, labels, point="mean", ablation_rate=0.1)
    assert not np.allclose(moved, coef)  # ReLUs: the derivative depends on the point


def test_prior_points_and_their_errors():
    np.testing.assert_allclose(prior_points("mean", 4, ablation_rate=0.25), np.full((1, 4), 0.75))
    path = prior_points("path", 3, ablation_rate=0.1, n_points=4)
    np.testing.assert_allclose(path[:, 0], [0.975, 0.925, 0.875, 0.825], rtol=1e-6)
    masks = prior_points("masks", 2000, ablation_rate=0.1, n_points=3, seed=1)
    assert abs(float((masks == 0).float().mean()) - 0.1) < 0.02
    assert not torch.equal(masks[0], masks[1])
    assert prior_passes("unablated") == 3 and prior_passes("masks", 4) == 13
    with pytest.raises(ValueError, match="point must be one of"):
        prior_points("median", 4)
    with pytest.raises(ValueError, match="needs an ablation_rate"):
        prior_points("mean", 4)
    with pytest.raises(ValueError, match="takes n_points = 1"):
        prior_points("mean", 4, ablation_rate=0.1, n_points=2)


def _conv_bn_relu_logit_model(activation: nn.Module | None = None) -> nn.Sequential:
    """Conv (no bias) -> eval BatchNorm -> ReLU -> linear head with one live logit (the other is 0).

    The ReLU is the only nonlinearity after the convolution, so propagating a
    zeroed channel exactly through it is the exact ablation effect.
    """
    torch.manual_seed(1)
    norm = nn.BatchNorm2d(6)
    with torch.no_grad():
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.normal_()
        norm.bias.normal_()
    head = nn.Linear(6 * 5 * 5, 2)
    with torch.no_grad():
        head.weight[0] = 0.0
        head.bias[0] = 0.0
    activation = nn.ReLU(inplace=True) if activation is None else activation
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1, bias=False), norm, activation, nn.Flatten(), head)


@pytest.mark.parametrize(
    "activation", [nn.ReLU(inplace=True), nn.GELU(), nn.SiLU(), nn.Hardswish(inplace=True), nn.Tanh()], ids=repr
)
def test_relu_patching_is_the_exact_ablation_effect_when_the_relu_is_the_only_nonlinearity(activation):
    """The same for every elementwise nonlinearity: the effect goes through it exactly, and linearly after."""
    model = _conv_bn_relu_logit_model(activation).eval()
    components = conv_components(model)
    images, labels = torch.randn(7, 1, 5, 5), torch.randint(0, 2, (7,))
    coef, intercept = relu_patching(model, components, images, labels, batch_size=3)
    loo, base = leave_one_out(ComponentMarginEvaluator(model, components, images, labels), len(components))
    np.testing.assert_allclose(intercept, base, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(coef, loo, rtol=1e-4, atol=1e-4)
    via_prior, _ = first_order_prior(model, components, images, labels, relu="exact")
    # the same computation in batches of another size: equal up to float32 rounding
    np.testing.assert_allclose(via_prior, coef, rtol=1e-6, atol=1e-8)
    # Attribution patching linearises that ReLU, and misses the exact effect here.
    atp, _ = relu_patching(model, components, images, labels, linearise=True)
    assert np.abs(atp - loo).max() > 0.1 * np.abs(loo).max()


@pytest.mark.parametrize("activation", [nn.ReLU(inplace=True), nn.GELU()], ids=repr)
def test_relu_patching_of_patches_is_the_exact_occlusion_effect_when_the_relu_is_the_only_nonlinearity(activation):
    """Input patches through the first convolution and its nonlinearity: exact here, at any keep point."""
    model = _conv_bn_relu_logit_model(activation).eval()
    torch.manual_seed(3)
    patches = PatchSet((1, 5, 5), 1, "mean", torch.randn(1, 5, 5))
    images, labels = torch.randn(7, 1, 5, 5), torch.randint(0, 2, (7,))
    coef, intercept = relu_patching(model, patches, images, labels, batch_size=60)
    loo, base = leave_one_out(ComponentMarginEvaluator(model, patches, images, labels), len(patches), progress=False)
    np.testing.assert_allclose(intercept, base, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(coef, loo, rtol=1e-4, atol=1e-4)
    # linearised, it is the gradient prior: gradient times (input - baseline) per patch
    linear, _ = relu_patching(model, patches, images, labels, linearise=True)
    np.testing.assert_allclose(linear, first_order_prior(model, patches, images, labels)[0], rtol=1e-4, atol=1e-5)
    assert np.abs(linear - loo).max() > 0.1 * np.abs(loo).max()
    # at a point with patches at their baseline, partly kept and kept: the exact change per unit of keep factor
    keep = torch.rand(len(patches))
    keep[:5] = 0
    keep[5:10] = 1
    coef, _ = relu_patching(model, patches, images, labels, keep=keep)
    network = patches.ablatable(model)
    with torch.no_grad():
        at = margins(network(images, keep[None]), labels).double().numpy()
        for unit in (0, 3, 7, 12, 24):
            moved = keep.clone()
            moved[unit] = 1.0 if keep[unit] == 0 else 0.0
            change = margins(network(images, moved[None]), labels).double().numpy() - at
            per_unit = -change if keep[unit] == 0 else change / keep[unit].item()
            np.testing.assert_allclose(coef[:, unit], per_unit, rtol=1e-4, atol=1e-4)


def test_relu_patching_of_patches_names_what_the_input_feeds():
    model = nn.Sequential(nn.Flatten(), nn.Linear(25, 2))
    with pytest.raises(ValueError, match="must feed one zero-padded nn.Conv2d, and it feeds module '0' \\(Flatten\\)"):
        relu_patching(model, PatchSet((1, 5, 5), 1, "zero"), torch.randn(2, 1, 5, 5), torch.tensor([0, 1]))


def _outputs(
    model: nn.Module, components, images: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor
) -> np.ndarray:
    """Margins (n_inputs,) of the model with its components scaled by ``keep``."""
    with torch.no_grad():
        return margins(components.ablatable(model)(images, keep[None]), labels).double().numpy()


@pytest.mark.parametrize("activation", [nn.ReLU(inplace=True), nn.GELU()], ids=repr)
def test_relu_patching_at_a_keep_point_is_the_exact_change_per_unit_of_keep_factor(activation):
    """At a point with partly kept and ablated channels: the exact change to ablated (or back to kept), per unit."""
    model = _conv_bn_relu_logit_model(activation).eval()
    components = conv_components(model)
    images, labels = torch.randn(7, 1, 5, 5), torch.randint(0, 2, (7,))
    keep = torch.tensor([0.95, 0.0, 0.5, 1.0, 0.0, 0.8])
    coef, at_point = relu_patching(model, components, images, labels, keep=keep, batch_size=3)
    np.testing.assert_allclose(at_point, _outputs(model, components, images, labels, keep), rtol=1e-5, atol=1e-5)
    for c, k in enumerate(keep.tolist()):
        moved = keep.clone()
        moved[c] = 0.0 if k > 0 else 1.0
        change = _outputs(model, components, images, labels, moved) - at_point
        expected = change / k if k > 0 else -change
        np.testing.assert_allclose(coef[:, c], expected, rtol=1e-4, atol=1e-4)


def test_exact_priors_at_the_mean_and_at_masks_linearise_to_the_gradient_priors(trained_model, digits):
    """Linearised at any point, the exact propagation is minus the keep-factor derivative: first_order_prior's."""
    model, components = trained_model
    _, test = digits
    images, labels = test.images[:6], test.labels[:6]
    for point, n_points in (("mean", 1), ("masks", 2)):
        exact, intercept = first_order_prior(
            model, components, images, labels, point=point, n_points=n_points, ablation_rate=0.2, relu="exact"
        )
        linear, linear_intercept = first_order_prior(
            model, components, images, labels, point=point, n_points=n_points, ablation_rate=0.2
        )
        np.testing.assert_array_equal(intercept, linear_intercept)  # the unablated outputs
        keeps = prior_points(point, len(components), ablation_rate=0.2, n_points=n_points)
        linearised = np.mean(
            [relu_patching(model, components, images, labels, keep=k, linearise=True)[0] for k in keeps], axis=0
        )
        np.testing.assert_allclose(linearised, linear, rtol=1e-4, atol=1e-4 * np.abs(linear).max())
        assert not np.allclose(exact, linear)  # the ReLUs switch under some ablations


def test_relu_patching_names_a_bad_keep_point():
    model = _conv_bn_relu_logit_model().eval()
    images, labels = torch.randn(2, 1, 5, 5), torch.randint(0, 2, (2,))
    with pytest.raises(ValueError, match="keep must hold 6 keep factors"):
        relu_patching(model, conv_components(model), images, labels, keep=torch.ones(5))
    with pytest.raises(ValueError, match="keep must hold 6 keep factors"):
        relu_patching(model, conv_components(model), images, labels, keep=torch.full((6,), 1.5))


def test_relu_patching_with_a_linearised_relu_is_attribution_patching(trained_model, digits):
    model, components = trained_model
    _, test = digits
    images, labels = test.images[:6], test.labels[:6]
    linear, intercept = relu_patching(model, components, images, labels, linearise=True)
    atp, atp_intercept = first_order_prior(model, components, images, labels)
    np.testing.assert_allclose(linear, atp, rtol=1e-4, atol=1e-5 * np.abs(atp).max())
    np.testing.assert_allclose(intercept, atp_intercept, rtol=1e-5, atol=1e-5)
    exact, _ = relu_patching(model, components, images, labels)
    assert not np.allclose(exact, atp)  # the trained model's ReLUs switch under some ablations


def test_relu_patching_follows_component_order_in_a_resnet_with_shortcuts():
    """ReLUs kept, but every pre-activation far above zero: the margin is affine in every keep factor,
    so each column must equal that component's own ablation effect."""
    model = _first_order_exact_resnet()
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Identity):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, nn.ReLU(inplace=True))
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data.fill_(0.1)
            module.bias.data.fill_(50.0)
    model = model.double().eval()
    components = conv_components(model)
    images, labels = torch.randn(5, 1, 8, 8, dtype=torch.float64), torch.randint(0, 2, (5,))
    coef, _ = relu_patching(model, components, images, labels)
    loo, _ = leave_one_out(ComponentMarginEvaluator(model, components, images, labels), len(components))
    scale = np.abs(loo).max()
    for c, name in enumerate(components.names):
        np.testing.assert_allclose(coef[:, c], loo[:, c], atol=1e-4 * scale, err_msg=name)


def test_relu_patching_names_the_component_without_a_relu_path():
    pooled = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(2, 2))
    images, labels = torch.randn(2, 1, 4, 4), torch.tensor([0, 1])
    with pytest.raises(
        ValueError, match=r"no elementwise nonlinearity .* follows component module '0'.*module '1' \(MaxPool2d\)"
    ):
        relu_patching(pooled.eval(), conv_components(pooled), images, labels)
    forked = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="nonlinearity .* follows component module '0'"):
        relu_patching(forked.eval(), conv_components(forked), images, labels)

    class Branching(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 1, bias=False)
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: not traceable
                x = -x
            return self.fc(torch.relu(self.conv(x)).mean((2, 3)))

    with pytest.raises(ValueError, match="traces the model with torch.fx"):
        relu_patching(Branching().eval(), conv_components(Branching()), images, labels)
