import numpy as np
import pytest
import torch
from torch import nn

from compattr import competitors
from compattr.baselines import attribution_patching, patch_relu_passes, relu_patching
from compattr.competitors import (
    PairwiseMargins,
    margin_changes,
    measured_margin_changes,
    simulated_margin_prior,
)
from compattr.datamodels import Recipe
from compattr.discovery import conv_components
from compattr.features import PatchSet
from compattr.masks import bernoulli_masks
from compattr.outputs import target_logit
from compattr.sampling import ComponentMarginEvaluator
from compattr.units import example_units, make_evaluator, unit_prior


def _linear_logits_model(classes: int):
    """Conv (no bias) -> linear head: every logit is linear in the conv's channels, the margin is not."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(6 * 5 * 5, classes)).eval()


def _problem(classes: int, n: int = 9):
    model = _linear_logits_model(classes)
    components = conv_components(model)
    generator = torch.Generator().manual_seed(1)
    return model, components, torch.randn(n, 1, 5, 5, generator=generator), torch.arange(n) % classes


def test_first_order_pairwise_changes_are_the_exact_ones_when_the_logits_are_linear():
    model, components, images, labels = _problem(4)
    network = components.ablatable(model).requires_grad_(False)
    changes, pairwise, classes = margin_changes(network, images, labels, batch_size=4)
    assert changes.shape == (len(labels), len(components), 3) and pairwise.shape == (len(labels), 3)
    assert not (classes == labels[:, None]).any()  # every class but the input's own
    measured = measured_margin_changes(network, images, labels, [5, 0, 2], pairwise, classes, batch_size=4)
    np.testing.assert_allclose(measured, changes[:, [5, 0, 2]], atol=1e-4)
    # The smallest pairwise margin is the margin; with a unit ablated, the margin of that ablation.
    evaluator = ComponentMarginEvaluator(model, components, images, labels)
    np.testing.assert_allclose(pairwise.min(1), evaluator(np.zeros((1, 6), dtype=bool))[0], rtol=1e-5, atol=1e-5)
    single = np.eye(6, dtype=bool)[[5, 0, 2]]
    np.testing.assert_allclose((pairwise[:, None] + measured).min(-1).T, evaluator(single), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("point", ["unablated", "mean"])
@pytest.mark.parametrize("kind", ["filters", "pixels"])
def test_the_prior_is_the_least_squares_line_through_the_true_margins_when_the_logits_are_linear(kind, point):
    model, components, images, labels = _problem(4)
    if kind == "pixels":  # zeroed pixels: the logits are linear in their keep factors too
        components = PatchSet((1, 5, 5), 1, "zero")
    # from the masks' mean, each pairwise margin is carried back to every unit kept: the same line
    coef, intercept, passes = unit_prior(
        model,
        components,
        images,
        labels,
        margin="simulated",
        point=point,
        ablation_rate=0.3,
        simulated_masks=300,
        seed=3,
    )
    assert passes == 1 + 2 * 3  # a forward pass, and a backward pass per other class
    masks = bernoulli_masks(300, len(components), 0.3, np.random.default_rng(3))
    true = make_evaluator(model, components, images, labels)(masks)
    design = np.c_[masks, np.ones(len(masks))]
    solution = np.linalg.lstsq(design, true, rcond=None)[0]
    np.testing.assert_allclose(coef, solution[:-1].T, atol=1e-3)
    np.testing.assert_allclose(intercept, solution[-1], atol=1e-3)
    # The maximum matters here: attribution patching, the margin's gradient, is another line.
    atp, _, _ = unit_prior(model, components, images, labels)
    assert np.abs(atp - coef).max() > 0.1


def test_with_two_classes_the_prior_is_attribution_patching():
    model, components, images, labels = _problem(2)
    coef, intercept, _ = unit_prior(model, components, images, labels, margin="simulated", ablation_rate=0.2)
    atp, unablated = attribution_patching(model, components, images, labels)
    np.testing.assert_allclose(coef, atp, atol=1e-4)
    np.testing.assert_allclose(intercept, unablated, atol=1e-4)


@pytest.mark.parametrize("point", ["unablated", "mean"])
def test_measured_units_hold_their_exact_changes_and_pay_a_pass_each(trained_model, digits, point):
    model, components = trained_model
    _, test = digits
    images, labels = test.images[:6], test.labels[:6]
    network = components.ablatable(model).requires_grad_(False)
    keep = torch.full((len(components),), 0.95 if point == "mean" else 1.0)
    changes, pairwise, classes = margin_changes(network, images, labels, keep=keep)
    first = simulated_margin_prior(changes, pairwise, 0.05, keep=keep, seed=0)[0]
    top = np.argsort(-np.abs(first).mean(0), kind="stable")[:3]
    changes[:, top] = measured_margin_changes(network, images, labels, top, pairwise, classes, keep=keep)
    expected = simulated_margin_prior(changes, pairwise, 0.05, keep=keep, seed=0)
    coef, intercept, passes = unit_prior(
        model, components, images, labels, margin="simulated", point=point, exact_top=3, ablation_rate=0.05
    )
    assert passes == 1 + 2 * 9 + 3
    np.testing.assert_allclose(coef, expected[0], atol=1e-8)
    np.testing.assert_allclose(intercept, expected[1], atol=1e-8)


def _relu_logits_model(classes: int = 4):
    """Conv, BatchNorm, ReLU, linear head: the ReLU is the only nonlinearity before the logits."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(150, classes)
    )
    model[1].running_mean.normal_()
    model[1].running_var.uniform_(0.5, 2)
    return model.eval()


@pytest.mark.parametrize("point", ["unablated", "mean"])
@pytest.mark.parametrize("kind", ["filters", "pixels"])
def test_exact_through_the_relu_every_pairwise_change_is_the_measured_one(kind, point):
    model = _relu_logits_model()
    units = conv_components(model) if kind == "filters" else PatchSet((1, 5, 5), 1, "zero")
    generator = torch.Generator().manual_seed(1)
    images, labels = torch.randn(9, 1, 5, 5, generator=generator), torch.arange(9) % 4
    keep = torch.full((len(units),), 0.8 if point == "mean" else 1.0)
    pairs = PairwiseMargins()
    changes, pairwise = relu_patching(model, units, images, labels, keep=keep, output=pairs)
    assert changes.shape == (9, len(units), 3) and pairwise.shape == (9, 3)
    network = units.ablatable(model).requires_grad_(False)
    every = np.arange(len(units))
    measured = measured_margin_changes(network, images, labels, every, pairwise, pairs.chosen(), keep=keep)
    np.testing.assert_allclose(changes, measured, atol=1e-4)
    # the margin's gradient misses here: the prior's pairwise changes are exact, the linear ones are not
    linear, linear_margins, _ = margin_changes(network, images, labels, keep=keep)
    np.testing.assert_allclose(linear_margins, pairwise, atol=1e-5)  # the same point
    assert np.abs(linear - changes).max() > 1e-2
    _, _, passes = unit_prior(
        model, units, images, labels, margin="simulated", point=point, relu="exact", ablation_rate=0.2
    )
    assert passes == 1 + 2 * 3 + (patch_relu_passes(model, units) if kind == "pixels" else 0)


@pytest.mark.parametrize("relu", ["linear", "exact"])
def test_the_closest_competitors_are_the_columns_of_every_pairwise_margin_with_the_largest_logits(relu):
    model = _relu_logits_model(classes=5)
    units = conv_components(model)
    generator = torch.Generator().manual_seed(2)
    images, labels = torch.randn(8, 1, 5, 5, generator=generator), torch.arange(8) % 5
    network = units.ablatable(model).requires_grad_(False)
    full, margins, classes = margin_changes(network, images, labels)
    near, near_margins, near_classes = margin_changes(network, images, labels, closest=2)
    with torch.no_grad():
        logits = model(images)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    assert (near_classes == others.topk(2, dim=1).indices).all()  # the two largest other logits, largest first
    column = (classes[:, :, None] == near_classes[:, None, :]).float().argmax(1)  # where each sits among all
    np.testing.assert_allclose(near, np.take_along_axis(full, column[:, None, :].numpy(), 2), atol=1e-6)
    np.testing.assert_allclose(near_margins, np.take_along_axis(margins, column.numpy(), 1), atol=1e-6)
    np.testing.assert_allclose(near_margins.min(1), margins.min(1), atol=1e-6)  # the runner-up is among them
    coef, _, passes = unit_prior(
        model, units, images, labels, margin="simulated", relu=relu, competitors=2, exact_top=3, ablation_rate=0.2
    )
    assert passes == 1 + 2 * 2 + 3 and coef.shape == (8, len(units))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"margin": "exactly"}, "margin must be 'linear' or 'simulated'"),
        ({"point": "path", "n_points": 2}, "point unablated or mean"),
        ({"relu": "exactly"}, "relu linear or exact"),
        ({"relu": "exact"}, "no elementwise nonlinearity"),
        ({"output": target_logit}, "the margin output"),
        ({"ablation_rate": None}, "an ablation_rate"),
        ({"simulated_masks": 10}, "n_masks must be at least twice the units and intercept (14)"),
        ({"exact_top": 7}, "exact_top must lie in [0, 6]"),
        ({"competitors": 0}, "competitors must be at least 1"),
        ({"margin": "linear", "competitors": 2}, "are the classes a margin simulated prior tracks"),
    ],
)
def test_a_simulated_margin_names_what_it_needs(settings, message):
    model, components, images, labels = _problem(3)
    settings = {"margin": "simulated", "ablation_rate": 0.1, **settings}
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        unit_prior(model, components, images, labels, **settings)


def test_a_simulated_margin_refuses_training_examples_and_more_units_than_it_can_fit(monkeypatch, digits):
    model, components, images, labels = _problem(3)
    train, _ = digits
    examples = example_units(train.images, train.labels, 10, 0, Recipe(hidden=4, steps=2), 10)
    with pytest.raises(ValueError, match="components or input patches \\(not TrainingExamples\\)"):
        unit_prior(model, examples, images, labels, margin="simulated", ablation_rate=0.1)
    monkeypatch.setattr(competitors, "MAX_UNITS", 5)
    with pytest.raises(ValueError, match="at most 5 units"):
        simulated_margin_prior(np.zeros((2, 6, 2)), np.ones((2, 2)), 0.1)
