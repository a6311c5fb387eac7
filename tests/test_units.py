"""One engine for three kinds of units: input patches (features) and training examples (data), next to components."""

import math

import numpy as np
import pytest
import scipy.optimize
import torch
from torch import nn

from compattr import ComponentAttributor, lds
from compattr.baselines import keep_effects, leave_one_out, patch_relu_passes
from compattr.checkpoints import load_checkpoint, save_checkpoint, spec_of
from compattr.datamodels import (
    DataMarginEvaluator,
    Recipe,
    TrainingExamples,
    influence_prior,
    stacked_logits,
    train_alone,
    train_models,
)
from compattr.estimators import make_estimator
from compattr.features import PatchSet, blur
from compattr.masks import bernoulli_masks
from compattr.outputs import margins, target_logit
from compattr.units import example_units, make_evaluator, unit_prior, unit_rows


def _linear_model(seed=0, channels=1, side=4, classes=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * side * side, classes)).eval()


def _true_patch_effects(model, patches, x, y):
    """Target-logit change when each patch alone takes its baseline: exact for a model linear in its input."""
    weight = model[1].weight.detach()[y]  # (n, pixels)
    change = (patches.baseline_of(x) - x).flatten(1) * weight  # per pixel
    rows, cols = patches.grid
    p = patches.patch_size
    c = x.shape[1]
    per_pixel = change.reshape(len(x), c, rows, p, cols, p)
    return per_pixel.sum(dim=(1, 3, 5)).reshape(len(x), -1).double().numpy()


@pytest.mark.parametrize("baseline", ["zero", "mean", "blur"])
@pytest.mark.parametrize("patch_size", [1, 2])
def test_patch_prior_and_occlusion_equal_the_exact_effects_on_a_linear_model(baseline, patch_size):
    torch.manual_seed(1)
    x, y = torch.randn(6, 2, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    model = _linear_model(channels=2)
    mean = torch.randn(2, 4, 4) if baseline == "mean" else None
    patches = PatchSet((2, 4, 4), patch_size, baseline, mean)
    truth = _true_patch_effects(model, patches, x, y)
    attributor = ComponentAttributor(model, patches, x, y, output="logit")
    loo = attributor.attribute("loo")
    atp = attributor.attribute("atp")
    np.testing.assert_allclose(loo.coef, truth, atol=1e-4)
    np.testing.assert_allclose(atp.coef, truth, atol=1e-4)  # gradient times (input - baseline), per patch
    assert atp.passes == 3 and loo.passes == len(patches) == (4 // patch_size) ** 2
    # the estimators recover it from random masks: the outputs are exactly linear in the masks
    attributor.sample(200, ablation_rate=0.3)
    heldout = attributor.sample(100, ablation_rate=0.3, keep=False)
    fit = attributor.attribute("coar")
    np.testing.assert_allclose(fit.coef, truth, atol=1e-3)
    assert lds(fit, heldout) > 0.999


def test_a_prior_with_exact_top_pays_for_and_holds_the_exact_effects_of_its_largest_patches():
    torch.manual_seed(2)
    x, y = torch.randn(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)).eval()
    patches = PatchSet((1, 4, 4), 1, "zero")
    prior, intercept, passes = unit_prior(model, patches, x, y)
    loo, _ = leave_one_out(make_evaluator(model, patches, x, y), len(patches), progress=False)
    coef, top_intercept, top_passes = unit_prior(model, patches, x, y, exact_top=5)
    top = np.argsort(-np.abs(prior).mean(0), kind="stable")[:5]
    np.testing.assert_allclose(coef[:, top], loo[:, top], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.delete(coef, top, axis=1), np.delete(prior, top, axis=1))
    np.testing.assert_array_equal(top_intercept, intercept)
    assert top_passes == passes + 5 + 1  # five ablated passes and one unablated
    every, _, _ = unit_prior(model, patches, x, y, exact_top=len(patches))
    np.testing.assert_allclose(every, loo, rtol=1e-5, atol=1e-5)
    # at the mean, each measured patch's change from the mean to its baseline, per unit of keep factor
    mean, _, mean_passes = unit_prior(model, patches, x, y, point="mean", ablation_rate=0.2, exact_top=3)
    prior, _, prior_passes = unit_prior(model, patches, x, y, point="mean", ablation_rate=0.2)
    top = np.argsort(-np.abs(prior).mean(0), kind="stable")[:3]
    network = patches.ablatable(model)
    expected = keep_effects(network, x, y, torch.full((len(patches),), 0.8), top)
    np.testing.assert_allclose(mean[:, top], expected, rtol=1e-5, atol=1e-5)
    assert mean_passes == prior_passes + 3 + 1
    with pytest.raises(ValueError, match="not at point 'path'"):
        unit_prior(model, patches, x, y, point="path", ablation_rate=0.2, n_points=2, exact_top=3)


def test_patches_exact_through_the_first_relu_pay_for_the_first_convolution_on_every_patch():
    torch.manual_seed(2)
    x, y = torch.randn(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)).eval()
    patches = PatchSet((1, 4, 4), 1, "zero")
    conv, head = 2 * 4 * 9 * 16, 2 * 64 * 3  # multiply-adds of one image, as floating-point operations
    extra = math.ceil(len(patches) * conv / (conv + head))
    assert patch_relu_passes(model, patches) == extra
    coef, _, passes = unit_prior(model, patches, x, y, relu="exact", output=target_logit)
    assert passes == 3 + extra
    # the only nonlinearity before the target's logit is that ReLU: exact, as occlusion
    evaluator = make_evaluator(model, patches, x, y, output=target_logit)
    loo, _ = leave_one_out(evaluator, len(patches), progress=False)
    np.testing.assert_allclose(coef, loo, rtol=1e-4, atol=1e-4)


def test_patch_masks_replace_exactly_their_pixels():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    patches = PatchSet((1, 4, 4), 2, "zero")
    network = patches.ablatable(nn.Identity())
    keep = torch.ones(2, 4)
    keep[0, 1] = 0  # top-right patch of the first input
    keep[1, 2] = 0  # bottom-left patch of the second
    out = network(x, keep)
    expected = x.clone()
    expected[0, 0, :2, 2:] = 0
    expected[1, 0, 2:, :2] = 0
    torch.testing.assert_close(out, expected)
    assert patches.names[:3] == ["patch:r0c0", "patch:r0c1", "patch:r1c0"]
    assert [row[2:] for row in unit_rows(patches)][:2] == [("patch", "r0c0", "patches"), ("patch", "r0c1", "patches")]
    blurred = PatchSet((1, 4, 4), 2, "blur").ablatable(nn.Identity())(x, torch.zeros(1, 4))
    torch.testing.assert_close(blurred, blur(x))


def test_patch_set_refuses_what_it_cannot_split():
    with pytest.raises(ValueError, match="patch_size 3 does not divide"):
        PatchSet((1, 8, 8), 3)
    with pytest.raises(ValueError, match="baseline must be one of"):
        PatchSet((1, 8, 8), 2, "noise")
    with pytest.raises(ValueError, match="needs mean_image"):
        PatchSet((1, 8, 8), 2, "mean")
    network = PatchSet((1, 8, 8), 2).ablatable(nn.Identity())
    with pytest.raises(ValueError, match=r"inputs must be \(batch, \*\(1, 8, 8\)\)"):
        network(torch.zeros(2, 3, 8, 8), torch.ones(2, 16))


def _examples(digits, n=120, hidden=8, steps=60, seed=0):
    train, _ = digits
    recipe = Recipe(hidden=hidden, steps=steps, lr=0.01, weight_decay=1e-3, seed=seed)
    return example_units(train.images, train.labels, n, seed, recipe, 10)


@pytest.mark.parametrize("hidden", [8, 0])  # an MLP, and softmax regression
def test_batched_training_equals_training_each_model_alone(digits, hidden):
    _, test = digits
    units = _examples(digits, hidden=hidden)
    images, x = test.images[:40].double(), units.images.double()  # float64: equal up to rounding, not chaos
    keep = torch.from_numpy(np.random.default_rng(0).random((5, len(units))) > 0.5)
    params = train_models(x, units.labels, keep, units.recipe, 10)
    assert all(p.dtype == torch.float64 and len(p) == 5 for p in params)
    for r in range(len(keep)):
        alone = train_alone(x[keep[r]], units.labels[keep[r]], units.recipe, 10)
        batched = stacked_logits([p[r : r + 1] for p in params], images)[0]
        torch.testing.assert_close(batched, alone(images).detach(), atol=1e-10, rtol=1e-10)
    # different subsets give different models (the masks are used)
    assert not torch.allclose(params[0][0], params[0][1])


def test_data_evaluator_outputs_the_margins_of_models_trained_on_the_kept_examples(digits):
    _, test = digits
    units = _examples(digits, n=60, steps=30)
    images, labels = test.images[:7], test.labels[:7]
    evaluator = DataMarginEvaluator(units, images, labels, batch_size=3)  # several training batches
    ablated = bernoulli_masks(5, len(units), 0.5, np.random.default_rng(1))
    out = evaluator(ablated)
    assert out.shape == (5, 7) and out.dtype == np.float32
    for r in (0, 4):
        kept = torch.from_numpy(~ablated[r])
        model = train_alone(units.images[kept], units.labels[kept], units.recipe, 10)
        np.testing.assert_allclose(out[r], margins(model(images), labels).detach().numpy(), atol=1e-3)
    # leave-one-out: the same evaluator on one-unit masks, each effect against the model trained on all
    coef, base = leave_one_out(evaluator, len(units))
    full = units.full_model()
    np.testing.assert_allclose(base, margins(full(images), labels).detach().numpy(), atol=1e-3)
    assert coef.shape == (7, len(units)) and np.abs(coef).max() > 0
    with pytest.raises(ValueError, match=r"masks must be \(n_masks, 60\)"):
        evaluator(np.zeros((2, 59), dtype=bool))


def test_influence_prior_is_the_derivative_of_the_retrained_outputs_in_the_example_weights(digits):
    """Softmax regression (convex; Gauss-Newton is its Hessian), at the exact optimum: first order is exact."""
    train, test = digits
    n, lam = 40, 1e-2
    units = TrainingExamples(train.images[:n], train.labels[:n], np.arange(n), Recipe(hidden=0, weight_decay=lam), 10)
    X, Y = train.images[:n].flatten(1).double().numpy(), train.labels[:n].numpy()
    Xt, Yt = test.images[:4].flatten(1).double().numpy(), test.labels[:4].numpy()
    d = X.shape[1]

    def optimum(w):
        def objective(theta):
            W, b = theta[: 10 * d].reshape(10, d), theta[10 * d :]
            z = X @ W.T + b
            z -= z.max(1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(1, keepdims=True))
            residual = np.exp(logp)
            residual[np.arange(n), Y] -= 1
            g = w[:, None] * residual / w.sum()
            loss = -(w * logp[np.arange(n), Y]).sum() / w.sum() + lam / 2 * theta @ theta
            return loss, np.concatenate([(g.T @ X + lam * W).ravel(), g.sum(0) + lam * b])

        options = {"gtol": 1e-12, "ftol": 1e-16, "maxiter": 10000}
        return scipy.optimize.minimize(objective, np.zeros(10 * d + 10), jac=True, method="L-BFGS-B", options=options).x

    def test_margins(theta):
        z = Xt @ theta[: 10 * d].reshape(10, d).T + theta[10 * d :]
        correct = z[np.arange(len(Yt)), Yt].copy()
        z[np.arange(len(Yt)), Yt] = -np.inf
        return correct - z.max(1)

    theta = optimum(np.ones(n))
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, 10))
    with torch.no_grad():
        model[1].weight.copy_(torch.from_numpy(theta[: 10 * d].reshape(10, d)))
        model[1].bias.copy_(torch.from_numpy(theta[10 * d :]))
    coef, intercept = influence_prior(model, units, test.images[:4], test.labels[:4], damping=0.0)
    np.testing.assert_allclose(intercept, test_margins(theta), atol=1e-4)
    eps = 1e-3
    for j in (0, 7, 31):
        up, down = np.ones(n), np.ones(n)
        up[j], down[j] = 1 + eps, 1 - eps
        derivative = (test_margins(optimum(up)) - test_margins(optimum(down))) / (2 * eps)
        np.testing.assert_allclose(coef[:, j], -derivative, atol=2e-4)  # leaving out: weight 1 -> 0


def test_estimators_recover_a_data_outcome_that_is_a_sum_of_per_example_contributions():
    """A kernel class-sum score: each kept example adds its similarity to the input, signed by agreeing class."""
    rng = np.random.default_rng(0)
    examples, inputs = rng.normal(size=(50, 5)), rng.normal(size=(8, 5))
    agree = np.where(rng.integers(0, 3, 50)[None] == rng.integers(0, 3, 8)[:, None], 1.0, -1.0)
    contribution = np.exp(-((inputs[:, None] - examples[None]) ** 2).sum(-1) / 4) * agree  # (inputs, examples)

    def outcome(ablated):
        return (~ablated) @ contribution.T

    masks = bernoulli_masks(400, 50, 0.5, rng)
    for name in ("coar", "ridge"):
        estimator = make_estimator(name, {}).fit(masks, outcome(masks))
        np.testing.assert_allclose(estimator.coef_, -contribution, atol=1e-2 if name == "ridge" else 1e-6)
    coef, _ = leave_one_out(outcome, 50)
    np.testing.assert_allclose(coef, -contribution, atol=1e-12)


def test_data_units_front_door_and_checkpoint(tmp_path, digits):
    _, test = digits
    units = _examples(digits, n=30, steps=20)
    model = units.full_model()
    attributor = ComponentAttributor(model, units, test.images[:5], test.labels[:5], batch_size=64)
    prior = attributor.attribute("atp")  # the unablated point: the influence function for data
    assert prior.passes == 0 and prior.components[:2] == tuple(units.names[:2])
    np.testing.assert_allclose(prior.coef, unit_prior(model, units, test.images[:5], test.labels[:5])[0])
    samples = attributor.sample(40, ablation_rate=0.5)
    assert samples.outputs.shape == (40, 5)
    assert attributor.attribute("ridge").passes == 40
    with pytest.raises(ValueError, match="point unablated"):
        unit_prior(model, units, test.images[:5], test.labels[:5], point="mean")
    spec, tensors = spec_of(units)
    arch = {"name": "mlp", "hidden": units.recipe.hidden, "in_features": 64}
    save_checkpoint(str(tmp_path / "m.pt"), model, arch, num_classes=10, in_channels=1, components=spec, units=tensors)
    loaded, back = load_checkpoint(str(tmp_path / "m.pt"))
    assert isinstance(back, TrainingExamples) and back.recipe == units.recipe and back.names == units.names
    torch.testing.assert_close(loaded(test.images[:5]), model(test.images[:5]))


def _patch_checkpoint(path, model, patches):
    """``model`` (an 8x8 linear model of 3 classes) saved at ``path`` with ``patches`` as its units."""
    spec, tensors = spec_of(patches)
    arch = {"name": "mlp", "hidden": 0, "in_features": 64}
    save_checkpoint(str(path), model, arch, num_classes=3, in_channels=1, components=spec, units=tensors)
    return path


def test_patch_units_checkpoint_round_trip(tmp_path):
    model = _linear_model(side=8)
    patches = PatchSet((1, 8, 8), 4, "mean", torch.randn(1, 8, 8))
    _, back = load_checkpoint(str(_patch_checkpoint(tmp_path / "m.pt", model, patches)))
    assert back == patches and torch.equal(back.mean_image, patches.mean_image)
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(
        back.ablatable(model)(x, torch.zeros(1, 4)), model(patches.mean_image.expand(3, -1, -1, -1))
    )


def test_a_model_job_starts_with_its_log_threads_device_and_units(tmp_path):
    import logging
    import sys

    from compattr.checkpoints import start_model_job

    patches = PatchSet((1, 8, 8), 4, "zero", torch.zeros(1, 8, 8))
    _patch_checkpoint(tmp_path / "m.pt", _linear_model(side=8), patches)
    threads, stderr = torch.get_num_threads(), sys.stderr
    try:
        log, device, loaded, units = start_model_job(
            tmp_path / "logs/job.log", tmp_path / "m.pt", threads=1, device="cpu"
        )
        log.info("started")
        assert torch.get_num_threads() == 1 and device == torch.device("cpu") and units == patches
        assert not loaded.training and "started" in (tmp_path / "logs/job.log").read_text()
    finally:
        torch.set_num_threads(threads)
        sys.stderr.close()
        sys.stderr = stderr
        for handler in logging.root.handlers[:]:  # the job's log file, not this session's
            logging.root.removeHandler(handler)


def test_both_kinds_of_evaluator_share_one_interface(trained_model, digits):
    from compattr.sampling import BATCHES_PER_CALL, Evaluator

    model, components = trained_model
    _, test = digits
    forward = make_evaluator(model, components, test.images[:10], test.labels[:10], batch_size=100)
    assert isinstance(forward, Evaluator) and forward.masks_per_call == BATCHES_PER_CALL * 10
    assert forward.describe().startswith("forward passes on cpu in torch.float32")
    units = _examples(digits, n=30, steps=20)
    trained = make_evaluator(units.full_model(), units, test.images[:5], test.labels[:5], batch_size=16)
    assert isinstance(trained, Evaluator) and trained.masks_per_call == 16
    assert "a model trained per mask" in trained.describe()
    assert not isinstance(lambda masks: masks, Evaluator)  # a plain function of the masks is not one
