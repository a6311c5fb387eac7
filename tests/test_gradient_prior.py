"""The gradient-prior estimators: theta = s * prior + correction, and ReLU-collapse started from a prior."""

import numpy as np
import pytest
import torch
from conftest import planted_problem
from test_baselines import _linear_margin_model

from compattr.baselines import attribution_patching
from compattr.discovery import conv_components
from compattr.estimators import GradientPriorRegressor, Moments, PriorReluCollapseRegressor, RidgeCVRegressor
from compattr.estimators._prior import prior_lasso_path, prior_ridge_path
from compattr.estimators._problem import MomentForm
from compattr.masks import shard_masks
from compattr.sampling import ComponentMarginEvaluator
from compattr.scores import lds_scores


@pytest.mark.parametrize("correction", ["ridge", "lasso"])
def test_an_exact_prior_keeps_lds_one_on_a_model_linear_in_its_components(correction):
    model = _linear_margin_model()
    components = conv_components(model)
    images, labels = torch.randn(9, 1, 5, 5), torch.randint(0, 2, (9,))
    evaluator = ComponentMarginEvaluator(model, components, images, labels)
    prior, intercept = attribution_patching(model, components, images, labels)
    heldout = shard_masks(1, 0, 200, len(components), 0.3)
    truth = evaluator(heldout)
    assert lds_scores(heldout @ prior.T + intercept, truth)[0].min() > 0.999  # the prior alone is exact
    train = shard_masks(0, 0, 30, len(components), 0.3)
    fit = GradientPriorRegressor(correction=correction).fit(train, evaluator(train), prior=prior)
    assert lds_scores(fit.predict(heldout), truth)[0].min() > 0.999
    np.testing.assert_allclose(fit.scale_, 1.0, atol=1e-3)


@pytest.mark.parametrize("correction", ["ridge", "lasso"])
def test_a_wrong_prior_gives_way_to_the_truth_as_masks_grow(correction):
    _, _, theta, _ = planted_problem(10)
    wrong = -theta + np.random.default_rng(7).normal(size=theta.shape)  # anti-correlated with the truth
    errors = []
    for n in (100, 400, 4000):
        X, Y, _, _ = planted_problem(n, noise=0.2)
        fit = GradientPriorRegressor(correction=correction).fit(X, Y, prior=wrong)
        errors.append(np.abs(fit.coef_ - theta).mean())
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.05 * np.abs(theta).mean()
    assert (fit.scale_ <= 0).all()  # the wrong prior is not followed: its weight is zero or negative


def test_ridge_correction_matches_a_direct_solve_at_each_penalty():
    """Closed form vs. the normal equations of [prior direction, masks] with only the correction penalised."""
    X, Y, theta, _ = planted_problem(200, noise=1.0)
    prior = theta + np.random.default_rng(3).normal(size=theta.shape)
    grid = [0.01, 1.0, 100.0, np.inf]
    problem = MomentForm(Moments.of(torch.as_tensor(X), torch.as_tensor(Y)))
    fits = prior_ridge_path(problem, torch.as_tensor(prior.T), grid)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    scale = np.linalg.eigvalsh(Xc.T @ Xc).clip(0).mean()
    C = X.shape[1]
    for lam, (coef, s) in zip(grid, fits, strict=True):
        for t in range(Y.shape[1]):
            if np.isinf(lam):
                u = Xc @ prior[t]
                expected_s = u @ Yc[:, t] / (u @ u)
                np.testing.assert_allclose(s[t], expected_s, rtol=1e-6)
                np.testing.assert_allclose(coef[:, t], expected_s * prior[t], rtol=1e-6)
                continue
            design = np.c_[Xc @ prior[t], Xc]
            penalty = np.diag(np.r_[0.0, np.full(C, lam * scale)])
            solution = np.linalg.solve(design.T @ design + penalty, design.T @ Yc[:, t])
            np.testing.assert_allclose(s[t], solution[0], rtol=1e-5, atol=1e-8)
            np.testing.assert_allclose(coef[:, t], solution[0] * prior[t] + solution[1:], rtol=1e-5, atol=1e-6)


def test_no_prior_is_ridge():
    X, Y, _, _ = planted_problem(300, noise=1.0)
    plain = RidgeCVRegressor().fit(X, Y)
    with_zero = GradientPriorRegressor().fit(X, Y)
    np.testing.assert_allclose(with_zero.coef_, plain.coef_, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(with_zero.scale_, 0.0)


def test_prior_shape_and_correction_are_checked():
    X, Y, theta, _ = planted_problem(100)
    with pytest.raises(ValueError, match="prior has shape"):
        GradientPriorRegressor().fit(X, Y, prior=theta[:, :-1])
    with pytest.raises(ValueError, match="correction"):
        GradientPriorRegressor(correction="elastic").fit(X, Y, prior=theta)


def test_relu_collapse_starts_from_the_prior():
    """With a negligible random part and no learning, the kept raw collapse is the prior in raw units.

    Calibrated, it is the prior rescaled to the data (here by 1/2: the prior is twice the truth).
    """
    X, Y, theta, _ = planted_problem(400)
    prior = theta * 2.0
    untrained = {"init_scale": 1e-6, "lr": 1e-12, "max_steps": 2}
    model = PriorReluCollapseRegressor(**untrained, calibrate=False).fit(X, Y, prior=prior)
    np.testing.assert_allclose(model.coef_, prior, rtol=1e-3, atol=1e-4)
    assert not model.failed_.any()  # keeping the prior is a choice, not a failure
    calibrated = PriorReluCollapseRegressor(**untrained).fit(X, Y, prior=prior)
    np.testing.assert_allclose(calibrated.coef_, theta, rtol=0.05, atol=0.05 * np.abs(theta).max())
    trained = PriorReluCollapseRegressor(init_scale=0.1, lr=3e-3, max_steps=200, calibrate=False)
    trained.fit(X, Y, prior=prior)
    assert np.abs(trained.coef_ - theta).mean() < np.abs(prior - theta).mean()  # training moves it to the truth


def test_lasso_refit_solves_each_input_at_its_own_ratio():
    """The refit's single warm-started run equals cold fits at each input's chosen ratio, on all rows."""
    X, _, theta, bias = planted_problem(400, n_units=40, n_outputs=8, sparse=True)
    noise = np.random.default_rng(1).normal(size=(400, 8)) * np.geomspace(0.05, 5.0, 8)
    Y = X @ theta.T + bias + noise  # noise levels apart, so that inputs choose different penalties
    prior = theta + np.random.default_rng(2).normal(size=theta.shape)
    model = GradientPriorRegressor(correction="lasso", tol=1e-7).fit(X, Y, prior=prior)
    assert np.unique(model.alpha_).size >= 3
    total = Moments.of(torch.as_tensor(X), torch.as_tensor(Y))
    for ratio in np.unique(model.alpha_):
        cols = np.flatnonzero(model.alpha_ == ratio)
        a = torch.as_tensor(prior[cols].T)
        ((W, s, _),) = prior_lasso_path(
            MomentForm(total.outputs(torch.as_tensor(cols))), a, [ratio], max_iter=1000, tol=1e-7
        )
        theta_cold = (s / a.norm(dim=0)) * a + W  # the rescaled prior plus the correction
        np.testing.assert_allclose(model.coef_[cols], theta_cold.T.numpy(), atol=1e-4 * np.abs(theta).max())


def test_candidate_priors_run_their_lasso_paths_in_one_batch_as_each_alone():
    """Candidates stacked (P, C, T) give each candidate's own path (coefficients below 1: the stopping
    rule's scale is 1 for every column, so each column stops as it would alone)."""
    X, _, theta, bias = planted_problem(300, n_units=30, n_outputs=4, sparse=True)
    Y = X @ (0.1 * theta).T + bias + 0.05 * np.random.default_rng(1).normal(size=(300, 4))
    problem = MomentForm(Moments.of(torch.as_tensor(X), torch.as_tensor(Y)))
    rng = np.random.default_rng(2)
    candidates = torch.as_tensor(np.stack([0.1 * theta + 0.05 * rng.normal(size=theta.shape) for _ in range(3)]))
    candidates = candidates.transpose(1, 2)  # (P, C, T)
    ratios = [1.0, 0.1, 0.01]
    together = list(prior_lasso_path(problem, candidates, ratios, max_iter=5000, tol=1e-9))
    for p, a in enumerate(candidates):
        for (W, s, _), (W_alone, s_alone, _) in zip(
            together, prior_lasso_path(problem, a, ratios, max_iter=5000, tol=1e-9), strict=True
        ):
            assert W.shape == (3, 30, 4) and s.shape == (3, 4) and W.abs().max() < 1
            np.testing.assert_allclose(W[p], W_alone, rtol=0, atol=1e-12)
            np.testing.assert_allclose(s[p], s_alone, rtol=0, atol=1e-12)


@pytest.mark.parametrize("correction", ["ridge", "lasso"])
def test_each_input_chooses_its_prior_on_validation_and_is_refitted_with_it(correction):
    X, Y, theta, _ = planted_problem(40, noise=0.2)  # fewer masks than components: the prior matters
    rng = np.random.default_rng(3)
    good = theta + 0.05 * rng.normal(size=theta.shape)
    bad = rng.normal(size=theta.shape)
    # Inputs 0-1 get the good prior as candidate 0, the rest as candidate 1.
    first, second = bad.copy(), good.copy()
    first[:2], second[:2] = good[:2], bad[:2]
    fit = GradientPriorRegressor(correction=correction).fit(X, Y, prior=np.stack([first, second]))
    np.testing.assert_array_equal(fit.prior_index_, [0, 0] + [1] * (len(theta) - 2))
    # The refit is the fit with each input's chosen prior alone (the lasso's to its solver tolerance:
    # each input stops on a change relative to the largest coefficient of its batch).
    atol = 1e-8 if correction == "ridge" else 1e-2 * np.abs(theta).max()
    alone = GradientPriorRegressor(correction=correction).fit(X, Y, prior=good)
    np.testing.assert_allclose(fit.alpha_, alone.alpha_)
    np.testing.assert_allclose(fit.coef_, alone.coef_, rtol=1e-6, atol=atol)
    # One candidate is the same as the prior itself.
    single = GradientPriorRegressor(correction=correction).fit(X, Y, prior=good[None])
    np.testing.assert_allclose(single.coef_, alone.coef_, rtol=1e-6, atol=1e-8)
    assert (single.prior_index_ == 0).all()
    with pytest.raises(ValueError, match="no candidate priors"):
        GradientPriorRegressor().fit(X, Y, prior=np.zeros((0, *theta.shape)))
