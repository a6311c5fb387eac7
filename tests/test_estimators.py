import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import planted_problem
from scipy.stats import spearmanr
from sklearn.base import clone
from sklearn.linear_model import Ridge

from compattr.estimators import (
    ESTIMATORS,
    CoarRegressor,
    EarlyStoppedLeastSquaresRegressor,
    LassoCVRegressor,
    LinearCollapseRegressor,
    Moments,
    ReluCollapseRegressor,
    ReluNetRegressor,
    RidgeCVRegressor,
    _rows,
    collapse_relu_network,
    fit_together,
    make_estimator,
)
from compattr.estimators._base import RunningBest
from compattr.estimators._lasso import lasso_fista
from compattr.estimators._problem import DENSE_EIGENVALUES, MomentForm, RowForm
from compattr.scores import lds_scores

FAST = {
    name: {"max_steps": 3000, "lr": 3e-3}
    for name in ("relu_collapse", "linear_collapse", "relu_net", "relu_collapse_prior")
}
FAST["gradient_prior_lasso"] = {"tol": 1e-7, "max_iter": 20_000}  # its free scale converges more slowly


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_recovers_planted_linear_truth(name, sparse):
    """Every estimator recovers a planted truth's effects and ranks its outputs (LDS > 0.85).

    The effects must correlate with the truth at r > 0.9, except for ReLU-collapse
    (r > 0.8): it is not an unbiased linear estimator (the ReLUs are dropped after
    training), which the study measures (docs/results.md).
    """
    X, Y, theta, bias = planted_problem(3000, noise=0.2, sparse=sparse)
    model = make_estimator(name, FAST.get(name)).fit(X, Y)
    assert model.coef_.shape == theta.shape and model.intercept_.shape == bias.shape
    for j in range(len(theta)):
        assert np.corrcoef(model.coef_[j], theta[j])[0, 1] > (0.8 if name.startswith("relu_collapse") else 0.9)
    Xt = planted_problem(500, seed=1)[0]
    Xt_true = Xt @ theta.T + bias
    spearman, _ = lds_scores(model.predict(Xt), Xt_true)
    assert spearman.min() > 0.85


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_more_masks_fit_better(name):
    scores = []
    for n in (100, 3000):
        X, Y, theta, _ = planted_problem(n, n_units=200, noise=2.0)
        coef = make_estimator(name, FAST.get(name)).fit(X, Y).coef_
        scores.append(spearmanr(coef.ravel(), theta.ravel()).statistic)
    assert scores[1] > scores[0] + 0.3


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_single_output_and_sklearn_contract(name):
    X, Y, _, _ = planted_problem(400)
    est = make_estimator(name, FAST.get(name))
    assert clone(est).get_params() == est.get_params()
    one = clone(est).fit(X, Y[:, 0])
    assert one.coef_.shape == (X.shape[1],) and np.ndim(one.intercept_) == 0
    assert one.predict(X).shape == (len(X),)
    assert one.n_features_in_ == X.shape[1]
    many = clone(est).fit(X, Y)
    assert many.predict(X[:7]).shape == (7, Y.shape[1])
    convex = ("coar", "ls_early_stopped", "ridge", "lasso", "gradient_prior", "gradient_prior_lasso")
    if name in convex:  # convex fits: each output does not depend on the others
        np.testing.assert_allclose(many.coef_[0], one.coef_, rtol=1e-4, atol=1e-5)


def test_ridge_matches_scikit_learn_at_the_chosen_penalty():
    X, Y, _, _ = planted_problem(300, noise=1.0)
    model = RidgeCVRegressor().fit(X, Y)
    Xc = X - X.mean(0)
    scale = np.linalg.eigvalsh(Xc.T @ Xc).clip(0).mean()
    for j in range(Y.shape[1]):
        ref = Ridge(alpha=model.alpha_[j] * scale).fit(X, Y[:, j])
        np.testing.assert_allclose(model.coef_[j], ref.coef_, rtol=1e-4, atol=1e-5)
        assert model.intercept_[j] == pytest.approx(ref.intercept_, rel=1e-4, abs=1e-5)


def _standardized(X):
    """Masks standardised column by column as the estimators do (a constant column keeps a scale of 1)."""
    mean, std = X.mean(0), X.std(0)
    std = np.where(std > 0, std, 1.0)
    return (X - mean) / std, mean, std


@pytest.mark.parametrize("dual", ["auto", True, False])
@pytest.mark.parametrize("n", [40, 61, 200], ids=["n<C", "n=C+1", "n>C"])
def test_coar_is_minimum_norm_least_squares_on_standardised_masks(n, dual):
    """COAR as its code runs: SAGA at lambda 0 from zero converges to lstsq's minimum-norm solution, in either form."""
    X, Y, _, _ = planted_problem(n, n_units=60, noise=0.5, alpha=0.2)
    model = CoarRegressor(dual=dual).fit(X, Y)
    assert model.dual_ == (dual is True or (dual == "auto" and n < X.shape[1]))
    A, mean, std = _standardized(X)
    solution = np.linalg.lstsq(np.c_[A, np.ones(n)], Y, rcond=None)[0]  # the intercept in the least squares too
    coef = (solution[:-1] / std[:, None]).T
    scale = np.abs(coef).max()
    np.testing.assert_allclose(model.coef_, coef, atol=1e-6 * scale)
    np.testing.assert_allclose(model.intercept_, solution[-1] - coef @ mean, atol=1e-6 * scale)
    assert model.rank_ == min(n - 1, X.shape[1])
    assert model.n_validation(n) == 0  # every mask is fitted


@pytest.mark.parametrize("dual", [True, False])
def test_coar_gives_never_ablated_components_zero_effect(dual):
    X, Y, _, _ = planted_problem(50, n_units=60, alpha=0.1)
    X[:, 7] = 0.0
    assert CoarRegressor(dual=dual).fit(X, Y).coef_[:, 7] == pytest.approx(0.0)


@pytest.mark.parametrize("n_blocks", [1, 3])
def test_coar_streamed_as_bool_blocks_switches_form_when_masks_outnumber_components(n_blocks):
    """Bool blocks are held as they come while fewer than the components, then summed: the same fit either way."""
    X, Y, _, _ = planted_problem(30 * n_blocks, n_units=60, noise=0.5, alpha=0.2)
    masks = X.astype(bool)
    blocks = [(masks[i : i + 30], Y[i : i + 30]) for i in range(0, len(X), 30)]
    streamed = CoarRegressor().fit_blocks(blocks)
    assert streamed.dual_ == (n_blocks == 1)
    whole = CoarRegressor(dual=False).fit(X, Y)
    np.testing.assert_allclose(streamed.coef_, whole.coef_, atol=1e-8 * np.abs(whole.coef_).max())


@pytest.mark.parametrize("lr", [1.0, 1.9])
def test_early_stopped_least_squares_refits_its_chosen_steps_on_all_rows(lr):
    """The step count is chosen on validation; the returned model is explicit gradient descent on all rows."""
    X, Y, _, _ = planted_problem(500, noise=1.0)
    steps = 40
    model = EarlyStoppedLeastSquaresRegressor(lr=lr, max_iter=steps, check_every=steps).fit(X, Y)
    assert (model.n_iter_ == steps).all() and not model.failed_.any()
    A, x_mean, x_std = _standardized(X)
    y_mean, y_std = Y.mean(0), Y.std(0)
    B = (Y - y_mean) / y_std
    step = lr / np.linalg.eigvalsh(A.T @ A / len(X)).max()
    theta = np.zeros((X.shape[1], Y.shape[1]))
    for _ in range(steps):
        theta -= step * A.T @ (A @ theta - B) / len(X)
    coef = (theta * y_std / x_std[:, None]).T
    tol = 1e-6 * np.abs(coef).max()  # the estimator holds its data in float32
    np.testing.assert_allclose(model.coef_, coef, rtol=1e-5, atol=tol)
    np.testing.assert_allclose(model.intercept_, y_mean - coef @ x_mean, rtol=1e-5, atol=tol)


def test_early_stopped_least_squares_marks_an_input_that_never_left_zero_as_failed():
    X, Y, _, _ = planted_problem(300, n_outputs=3)
    rng = np.random.default_rng(5)
    Y[:, 1] = rng.normal(size=len(Y))  # pure noise: no step beats the zero model on validation
    model = EarlyStoppedLeastSquaresRegressor().fit(X, Y)
    assert model.failed_.tolist() == [False, True, False]
    assert model.n_iter_[1] == 0 and np.all(model.coef_[1] == 0)


def test_relu_collapse_algebra_on_a_hand_built_network():
    W1 = torch.tensor([[[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]]])  # one network, d=2, C=3
    b1 = torch.tensor([[0.5, -1.0]])
    W2 = torch.tensor([[2.0, -0.5]])
    b2 = torch.tensor([0.25])
    theta, bias = collapse_relu_network(W1, b1, W2, b2)
    torch.testing.assert_close(theta, torch.tensor([[2.0, 4.5, -1.5]]))
    torch.testing.assert_close(bias, torch.tensor([2.0 * 0.5 + 0.5 + 0.25]))
    # Where every hidden unit is active, the network equals its collapse.
    x = torch.tensor([1.0, 1.0, 1.0])
    hidden = W1[0] @ x + b1[0]
    assert (hidden > 0).all()
    assert float(W2[0] @ torch.relu(hidden) + b2) == pytest.approx(float(theta[0] @ x + bias))


def test_relu_collapse_is_seeded():
    X, Y, _, _ = planted_problem(300)
    a = ReluCollapseRegressor(max_steps=10, random_state=3).fit(X, Y).coef_
    b = ReluCollapseRegressor(max_steps=10, random_state=3).fit(X, Y).coef_
    c = ReluCollapseRegressor(max_steps=10, random_state=4).fit(X, Y).coef_
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_bad_parameters_and_data_are_rejected():
    X, Y, _, _ = planted_problem(100)
    with pytest.raises(ValueError, match="validation_fraction"):
        EarlyStoppedLeastSquaresRegressor(validation_fraction=1.5).fit(X, Y)
    with pytest.raises(ValueError, match="too few masks"):
        RidgeCVRegressor().fit(X[:3], Y[:3])
    with pytest.raises(ValueError, match="unknown estimator"):
        make_estimator("nope")
    with pytest.raises(ValueError):
        RidgeCVRegressor().fit(X, np.full_like(Y, np.nan))


def test_lasso_matches_scikit_learn_at_the_chosen_penalty():
    from sklearn.linear_model import Lasso

    X, Y, _, _ = planted_problem(400, noise=0.5, sparse=True)
    model = LassoCVRegressor(tol=1e-10, max_iter=100_000).fit(X, Y)
    assert (model.coef_ == 0).any()  # sparse solutions
    for j in range(Y.shape[1]):
        ref = Lasso(alpha=model.alpha_[j], tol=1e-12, max_iter=1_000_000).fit(X, Y[:, j])
        np.testing.assert_allclose(model.coef_[j], ref.coef_, atol=1e-4)
        assert model.intercept_[j] == pytest.approx(ref.intercept_, abs=1e-4)


def test_each_column_of_a_batched_lasso_stops_on_its_own():
    """A column leaves the batch at its own first converged check: it ends as it would fitted alone.

    Coefficients below 1 keep the stopping rule's scale at 1 for every column, so that is exact;
    the batch runs as many steps as its slowest column.
    """
    X, _, theta, _ = planted_problem(300, n_units=40, n_outputs=6, sparse=True)
    noise = np.random.default_rng(1).normal(size=(300, 6)) * np.geomspace(0.01, 1.0, 6)
    moments = Moments.of(torch.as_tensor(X), torch.as_tensor(X @ (0.1 * theta).T + noise))
    penalty = torch.full((6,), 1e-3, dtype=torch.float64)
    W, steps = lasso_fista(MomentForm(moments), penalty, tol=1e-9)
    assert W.abs().max() < 1
    alone = [lasso_fista(MomentForm(moments.outputs(torch.tensor([j]))), penalty[[j]], tol=1e-9) for j in range(6)]
    assert len({s for _, s in alone}) > 1 and steps == max(s for _, s in alone)
    for j, (w, _) in enumerate(alone):
        np.testing.assert_allclose(W[:, j], w[:, 0], rtol=0, atol=1e-12)


def test_running_best_keeps_the_lowest_index_of_equal_losses_in_any_order():
    best = RunningBest()
    for loss, index in [([2.0, 1.0], 5), ([2.0, 3.0], 2), ([1.0, 1.0], 7), ([1.0, 1.0], 3)]:
        best.update(torch.tensor(loss), index, torch.tensor([float(index)] * 2))
    assert best.index.tolist() == [3, 3] and best.states[0].tolist() == [3.0, 3.0]
    best.update(torch.tensor([1.0, 0.5]), 9, torch.tensor([9.0, 9.0]))
    assert best.index.tolist() == [3, 9] and best.loss.tolist() == [1.0, 0.5]


def test_lasso_recovers_a_sparse_truth_better_than_ridge_support():
    X, Y, theta, _ = planted_problem(800, n_units=100, noise=0.5, sparse=True)
    coef = LassoCVRegressor().fit(X, Y).coef_
    support = theta != 0
    assert np.abs(coef[~support]).mean() < 0.2 * np.abs(coef[support]).mean()
    assert spearmanr(coef.ravel(), theta.ravel()).statistic > 0.6


@pytest.mark.parametrize("early_stopping", ["collapse", "network"])
def test_two_layer_fit_is_refitted_on_all_rows_for_its_chosen_steps(early_stopping):
    """Each input's step count is chosen on validation; the returned model is that many steps on all rows.

    The validation scores are those of the predictor trained on the fit rows alone
    for the chosen steps (a fit with no validation split on those rows).
    """
    X, Y, _, _ = planted_problem(300, n_outputs=6, noise=1.0)
    settings = {"max_steps": 80, "check_every": 10, "patience": 20, "lr": 0.01}
    model = ReluCollapseRegressor(**settings, early_stopping=early_stopping).fit(X, Y)
    n_fit = len(X) - model.n_validation_
    assert len(set(model.n_iter_)) > 1 and not model.failed_.any()
    for k in set(model.n_iter_):
        same = np.flatnonzero(model.n_iter_ == k)
        alone = {**settings, "max_steps": int(k), "early_stopping": "none"}
        on_all = ReluCollapseRegressor(**alone).fit(X, Y)
        scale = np.abs(on_all.coef_).max()
        np.testing.assert_allclose(model.coef_[same], on_all.coef_[same], rtol=1e-4, atol=1e-5 * scale)
        np.testing.assert_allclose(model.intercept_[same], on_all.intercept_[same], rtol=1e-4, atol=1e-5 * scale)
        on_fit_rows = ReluCollapseRegressor(**alone).fit(X[:n_fit], Y[:n_fit])
        pred = on_fit_rows.predict(X[n_fit:])[:, same]
        mse = ((pred - Y[n_fit:, same]) ** 2).mean(0)
        np.testing.assert_allclose(model.validation_mse_[same], mse, rtol=1e-3)
        np.testing.assert_allclose(model.validation_spearman_[same], lds_scores(pred, Y[n_fit:, same])[0], atol=1e-6)


def test_only_a_collapse_predictor_records_its_calibration():
    X, Y, _, _ = planted_problem(200)
    assert ReluCollapseRegressor(max_steps=10).fit(X, Y).calibration_.shape == (Y.shape[1],)
    assert not hasattr(ReluNetRegressor(max_steps=10).fit(X, Y), "calibration_")


def test_no_early_stopping_trains_on_every_row_for_max_steps():
    X, Y, _, _ = planted_problem(200)
    model = ReluCollapseRegressor(max_steps=15, early_stopping="none")
    assert model.n_validation(200) == 0
    model.fit(X, Y)
    assert model.n_validation_ == 0 and (model.n_iter_ == 15).all()


def test_tol_stops_each_input_sooner_on_the_same_path():
    """A fall of the validation MSE smaller than ``tol`` still moves the best step but does not keep an input
    training: each input follows its path without ``tol`` and keeps the best step of a prefix of it."""
    X, Y, _, _ = planted_problem(300, n_outputs=6, noise=1.0)
    settings = {"lr": 0.01, "check_every": 2, "patience": 6, "max_steps": 300}
    plain = ReluCollapseRegressor(**settings).fit(X, Y)
    assert (plain.n_iter_ > settings["patience"]).any()
    # No fall counts: every input stops at `patience` steps, its best step among them as with no more steps.
    never = ReluCollapseRegressor(**settings, tol=1e9).fit(X, Y)
    short = ReluCollapseRegressor(**{**settings, "max_steps": settings["patience"]}).fit(X, Y)
    np.testing.assert_array_equal(never.n_iter_, short.n_iter_)
    np.testing.assert_allclose(never.coef_, short.coef_, rtol=1e-5, atol=1e-6 * np.abs(short.coef_).max())
    some = ReluCollapseRegressor(**settings, tol=1e-3).fit(X, Y)
    assert (some.n_iter_ <= plain.n_iter_).all() and (some.n_iter_ < plain.n_iter_).any()
    assert (some.validation_mse_ >= plain.validation_mse_ * (1 - 1e-6)).all()
    same = some.n_iter_ == plain.n_iter_
    np.testing.assert_allclose(some.coef_[same], plain.coef_[same], rtol=1e-5, atol=1e-6 * np.abs(plain.coef_).max())


def test_a_network_that_never_leaves_its_initialisation_is_marked_failed():
    X, Y, _, _ = planted_problem(200)
    model = ReluCollapseRegressor(lr=0.0, max_steps=40, patience=20).fit(X, Y)  # no step can improve
    assert model.failed_.all() and (model.n_iter_ == 0).all()
    learned = ReluCollapseRegressor(lr=0.01, max_steps=40, patience=20).fit(X, Y)
    assert not learned.failed_.any()


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_trains_the_networks(momentum):
    X, Y, theta, _ = planted_problem(1500, noise=0.2)
    model = ReluCollapseRegressor(optimizer="sgd", momentum=momentum, lr=0.05, max_steps=1500).fit(X, Y)
    for j in range(len(theta)):
        assert np.corrcoef(model.coef_[j], theta[j])[0, 1] > 0.8
    with pytest.raises(ValueError, match="optimizer"):
        ReluCollapseRegressor(optimizer="lbfgs").fit(X, Y)


@pytest.mark.parametrize("calibrate", [True, False])
def test_calibrated_collapse_is_least_squares_scaled_on_the_training_rows(calibrate):
    """With ``calibrate`` the collapse's residuals on all rows (the refit's) are orthogonal to its predictions."""
    X, Y, _, _ = planted_problem(400)
    model = ReluCollapseRegressor(max_steps=40, calibrate=calibrate).fit(X, Y)
    pred = model.predict(X)
    residual = Y - pred
    centred = pred - pred.mean(0)
    # Relative size of the scale error: 0 when the scale is the least-squares one.
    scale_error = np.abs((centred * residual).sum(0)) / (centred**2).sum(0)
    if calibrate:
        np.testing.assert_allclose(residual.mean(0), 0, atol=1e-3 * Y.std())
        assert scale_error.max() < 1e-3
    else:
        assert scale_error.max() > 0.05
        assert (model.calibration_ == 1).all()


@pytest.mark.parametrize("name", ["ridge", "relu_collapse"])
def test_bool_masks_fit_as_float_masks_do(name):
    """Stores hold bool masks; they are fitted without a float64 copy, to the same model."""
    X, Y, _, _ = planted_problem(300)
    params = {"max_steps": 10} if name == "relu_collapse" else {}
    as_bool = make_estimator(name, params).fit(X.astype(bool), Y.astype(np.float32))
    as_float = make_estimator(name, params).fit(X.astype(np.float64), Y.astype(np.float32))
    np.testing.assert_array_equal(as_bool.coef_, as_float.coef_)
    np.testing.assert_array_equal(as_bool.predict(X.astype(bool)), as_float.predict(X))


@pytest.mark.parametrize("rare", [1, 0], ids=["rare_ones", "rare_zeros"])
def test_sparse_masks_train_the_networks_dense_masks_do(rare, monkeypatch):
    """Binary masks with a rare value train through sparse products, to the fit of the dense masks."""
    X, Y, _, _ = planted_problem(300)  # ones are rare (alpha 0.1); 1 - X: zeros are, as in keep-masks
    X = X if rare == 1 else 1 - X
    calls = []
    sparse_product = _rows._bag_product
    monkeypatch.setattr(_rows, "_bag_product", lambda *a: calls.append(1) or sparse_product(*a))
    fits = []
    for limit in (1.0, 0.0):  # largest share of rare entries trained sparsely: always, never
        monkeypatch.setattr(_rows, "_SPARSE_MAX_DENSITY", limit)
        calls.clear()
        fits.append(ReluCollapseRegressor(max_steps=20).fit(X, Y))
        assert bool(calls) == (limit == 1.0)
    np.testing.assert_array_equal(fits[0].n_iter_, fits[1].n_iter_)
    np.testing.assert_allclose(fits[0].coef_, fits[1].coef_, rtol=1e-4, atol=1e-4 * np.abs(fits[1].coef_).max())


@pytest.mark.parametrize("model", [ReluCollapseRegressor, LinearCollapseRegressor])
@pytest.mark.parametrize("limit", [1.0, 0.0], ids=["sparse", "dense"])
def test_hand_gradients_equal_autograd(model, limit, monkeypatch):
    """The step's gradients, by hand, equal autograd's on the textbook network with dense masks."""
    X, Y, _, _ = planted_problem(64)
    monkeypatch.setattr(_rows, "_SPARSE_MAX_DENSITY", limit)
    collector = _rows.RowCollector("cpu")
    collector.add(X, Y)
    xs, ys = collector.standardizers()
    rows, targets = collector.rows(xs, ys)
    assert (rows.dense is None) == (limit == 1.0)
    net = model(init_scale=2.0)  # some units off on some masks: the ReLU's gradient matters
    params = net._initial_weights(targets.shape[1], X.shape[1])
    hidden, out = net._forward(rows, params)
    grads = net._gradients(rows, hidden, out - targets, params)
    leaves = [p.clone().requires_grad_() for p in params]
    W1, b1, W2, b2 = leaves  # W1 is (C, T, d)
    pre = torch.einsum("nc,ctd->ntd", (torch.as_tensor(X, dtype=torch.float32) - xs.mean) / xs.std, W1) + b1
    act = torch.relu(pre) if model is ReluCollapseRegressor else pre
    assert model is LinearCollapseRegressor or 0 < float((pre > 0).float().mean()) < 1
    (((act * W2).sum(-1) + b2 - targets) ** 2).mean(0).sum().backward()
    for grad, leaf in zip(grads, leaves, strict=True):
        torch.testing.assert_close(grad, leaf.grad, rtol=1e-4, atol=1e-5)


def test_linear_collapse_trains_without_hidden_activations_as_with_them():
    """Without a ReLU the networks' steps go through the collapse, never forming the hidden layer: the same
    training as the 2-layer forward and backward pass with an identity activation."""

    class HiddenLayerLinear(ReluCollapseRegressor):
        _activation = "identity"

    X, Y, _, _ = planted_problem(600, noise=0.3)
    settings = {"max_steps": 300, "batch_size": 128, "check_every": 5, "patience": 50, "lr": 0.01}
    fast, reference = LinearCollapseRegressor(**settings).fit(X, Y), HiddenLayerLinear(**settings).fit(X, Y)
    np.testing.assert_array_equal(fast.n_iter_, reference.n_iter_)
    assert fast.n_iter_.min() > 0
    np.testing.assert_allclose(fast.coef_, reference.coef_, rtol=1e-4, atol=1e-5 * np.abs(reference.coef_).max())
    np.testing.assert_allclose(fast.validation_mse_, reference.validation_mse_, rtol=1e-4)


def test_each_input_trains_as_it_would_alone():
    """An input's network, stopping step and collapse do not depend on the other inputs fitted with it.

    Networks are seeded by (random_state, position): the first ``k`` inputs fitted
    on their own get what they get in the whole ensemble.
    """
    X, Y, _, _ = planted_problem(300, noise=1.0)
    settings = {"lr": 0.01, "check_every": 2, "patience": 6}
    together = ReluCollapseRegressor(**settings).fit(X, Y)
    assert len(set(together.n_iter_)) > 1  # the inputs stop at different steps
    for k in (1, 3):
        first = ReluCollapseRegressor(**settings).fit(X, Y[:, :k])
        np.testing.assert_array_equal(first.n_iter_, together.n_iter_[:k])
        np.testing.assert_allclose(first.coef_, together.coef_[:k], rtol=1e-4, atol=1e-4)


def test_estimators_that_train_the_same_networks_fit_together_as_each_alone():
    """relu_collapse, its raw collapse and the network stop on different losses and return different things:
    one training serves them, each ending with its own steps, scores and coefficients."""
    X, Y, _, _ = planted_problem(300, n_outputs=6, noise=1.0)
    settings = {"lr": 0.01, "check_every": 2, "patience": 6, "batch_size": 64}
    names = ("relu_collapse", "relu_collapse_raw", "relu_net")
    alone = [make_estimator(name, settings).fit(X, Y) for name in names]
    together = [make_estimator(name, settings) for name in names]
    n_fit = len(X) - together[0].n_validation(len(X))
    fit_together(together, [(X[:n_fit], Y[:n_fit])], [(X[n_fit:], Y[n_fit:])])
    assert not np.array_equal(alone[0].n_iter_, alone[1].n_iter_)  # the collapse and the network stop apart
    for one, shared in zip(alone, together, strict=True):
        np.testing.assert_array_equal(shared.n_iter_, one.n_iter_)
        np.testing.assert_allclose(shared.coef_, one.coef_, rtol=1e-4, atol=1e-5 * np.abs(one.coef_).max())
        np.testing.assert_allclose(shared.validation_spearman_, one.validation_spearman_, atol=1e-6)
        np.testing.assert_allclose(shared.predict(X), one.predict(X), rtol=1e-4, atol=1e-4)


def test_fit_together_refuses_estimators_that_train_other_networks():
    X, Y, _, _ = planted_problem(100)
    blocks = [(X[:80], Y[:80])], [(X[80:], Y[80:])]
    with pytest.raises(ValueError, match="does not train the same networks"):
        fit_together([ReluCollapseRegressor(), LinearCollapseRegressor()], *blocks)
    with pytest.raises(ValueError, match="does not train the same networks"):
        fit_together([ReluCollapseRegressor(), ReluNetRegressor(hidden=8)], *blocks)
    with pytest.raises(TypeError, match="2-layer"):
        fit_together([ReluCollapseRegressor(), RidgeCVRegressor()], *blocks)


def test_non_binary_masks_are_trained_densely_to_the_same_model():
    """Masks of 0 and 0.5 standardise to the rows of 0/1 masks: the same networks, coefficients doubled.

    Fed in chunks that turn non-binary after the first, the masks held sparsely are made dense on the way.
    """
    X, Y, _, _ = planted_problem(300)
    binary = ReluCollapseRegressor(max_steps=20).fit(X, Y)
    halved = ReluCollapseRegressor(max_steps=20).fit(0.5 * X, Y)
    np.testing.assert_array_equal(halved.n_iter_, binary.n_iter_)
    np.testing.assert_allclose(halved.coef_, 2 * binary.coef_, rtol=1e-4, atol=1e-4 * np.abs(binary.coef_).max())
    mixed = X.copy()
    mixed[150] *= 0.5  # one fit row, in the second chunk
    n_fit = 300 - ReluCollapseRegressor().n_validation(300)
    fit_blocks = [(mixed[:100], Y[:100]), (mixed[100:n_fit], Y[100:n_fit])]
    chunked = ReluCollapseRegressor(max_steps=20).fit_blocks(fit_blocks, [(mixed[n_fit:], Y[n_fit:])])
    whole = ReluCollapseRegressor(max_steps=20).fit(mixed, Y)
    np.testing.assert_allclose(chunked.coef_, whole.coef_, rtol=1e-4, atol=1e-4 * np.abs(whole.coef_).max())


@pytest.mark.parametrize("model", [ReluCollapseRegressor(max_steps=2), RidgeCVRegressor()], ids=["rows", "moments"])
def test_fit_blocks_rejects_mismatched_or_bad_blocks(model):
    X, Y, _, _ = planted_problem(200)
    with pytest.raises(ValueError, match="does not match"):
        model.fit_blocks([(X[:100], Y[:100]), (X[100:150, :-1], Y[100:150])], [(X[150:], Y[150:])])
    with pytest.raises(ValueError, match="does not match|different numbers"):
        model.fit_blocks([(X[:150], Y[:150])], [(X[150:], Y[150:, :-1])])
    bad = Y.copy()
    bad[5, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.fit_blocks([(X[:150], bad[:150])], [(X[150:], Y[150:])])
    with pytest.raises(ValueError, match="too few"):
        model.fit_blocks([(X[:150], Y[:150])], [(X[150:151], Y[150:151])])
    with pytest.raises(ValueError, match="no validation split"):
        CoarRegressor().fit_blocks([(X[:150], Y[:150])], [(X[150:], Y[150:])])


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_fit_blocks_fits_the_concatenated_rows(name):
    """One fit protocol: blocks of rows (a store's chunks) give the model ``fit`` gives on the whole arrays."""
    X, Y, theta, _ = planted_problem(240)
    params = {"max_steps": 30} if "collapse" in name or name == "relu_net" else {}
    prior = {"prior": theta} if ESTIMATORS[name].uses_prior else {}
    whole = make_estimator(name, params).fit(X, Y, **prior)
    split = len(X) - whole.n_validation(len(X))
    fit_rows = [(X[lo : min(lo + 70, split)], Y[lo : min(lo + 70, split)]) for lo in range(0, split, 70)]
    blocks = make_estimator(name, params).fit_blocks(
        fit_rows, [(X[split:], Y[split:])] if split < len(X) else [], **prior
    )
    assert blocks.n_features_in_ == whole.n_features_in_ == X.shape[1]
    np.testing.assert_allclose(blocks.coef_, whole.coef_, rtol=1e-4, atol=1e-5 * np.abs(whole.coef_).max())
    np.testing.assert_allclose(blocks.predict(X[:5]), whole.predict(X[:5]), rtol=1e-4, atol=1e-4)


def test_no_estimator_keeps_non_finite_coefficients():
    model = CoarRegressor()
    model._single_output = False
    with pytest.raises(FloatingPointError, match=r"CoarRegressor fitted non-finite coefficients for inputs \[1\]"):
        model._set_linear(torch.tensor([[1.0, 2.0], [float("nan"), 0.0]]), torch.zeros(2))


@pytest.mark.parametrize("name", ["relu_collapse", "relu_net", "relu_collapse_prior"])
def test_components_never_ablated_get_no_effect_not_their_initial_weights(name):
    """A component no training mask ablates carries no information: effect 0, as the linear estimators give it."""
    X, Y, theta, _ = planted_problem(300)
    X[:, [0, 7]] = 0  # never ablated
    X[:, 9] = 1  # always ablated
    silent = theta.copy()
    silent[:, [0, 7, 9]] = 0  # a prior that says nothing of them either
    prior = {"prior": silent} if name == "relu_collapse_prior" else {}
    model = make_estimator(name, {"max_steps": 30}).fit(X, Y, **prior)
    assert (model.coef_[:, [0, 7, 9]] == 0).all() and (model.coef_[:, 1] != 0).all()
    if name == "relu_collapse_prior":  # what a prior says of them is kept (rescaled with the network)
        informed = make_estimator(name, {"max_steps": 30}).fit(X, Y, prior=theta).coef_[:, 0]
        assert (np.sign(informed) == np.sign(theta[:, 0])).all()
    ablated = X[:5].copy()
    ablated[:, 0] = 1
    np.testing.assert_allclose(model.predict(ablated), model.predict(X[:5]), rtol=1e-5, atol=1e-6)
    ridge = RidgeCVRegressor().fit(X, Y).coef_
    np.testing.assert_allclose(ridge[:, [0, 7, 9]], 0, atol=1e-9 * np.abs(ridge).max())  # zero up to rounding


@pytest.mark.parametrize("estimator", [CoarRegressor, RidgeCVRegressor])
@pytest.mark.parametrize("n", [40, 150], ids=["n<C", "n>C"])
def test_masks_by_masks_and_components_by_components_forms_give_the_same_fit(estimator, n):
    """The dual form (the masks' kernel) and the primal form (their Gram matrix) solve one problem."""
    X, Y, _, _ = planted_problem(n, n_units=120, noise=0.5, alpha=0.1)
    dual, primal = estimator(dual=True).fit(X, Y), estimator(dual=False).fit(X, Y)
    assert dual.dual_ and not primal.dual_
    assert estimator().fit(X, Y).dual_ == (n < 120)
    np.testing.assert_allclose(dual.coef_, primal.coef_, atol=1e-8 * np.abs(primal.coef_).max())
    np.testing.assert_allclose(dual.intercept_, primal.intercept_, atol=1e-8 * np.abs(primal.coef_).max())
    if estimator is RidgeCVRegressor:
        np.testing.assert_array_equal(dual.alpha_, primal.alpha_)


@pytest.mark.parametrize("name", ["lasso", "gradient_prior", "gradient_prior_lasso"])
@pytest.mark.parametrize("n", [40, 150], ids=["n<C", "n>C"])
def test_lasso_and_prior_fits_through_the_masks_or_the_gram_matrix_agree(name, n):
    """Steps by products with the masks, or the ridge prior's masks x masks eigenbasis, solve the primal's problem.

    With fewer masks than components a lasso's fitted values are unique but its coefficients need
    not be, and FISTA stops on the step size: the fitted values are compared there.
    """
    X, Y, theta, _ = planted_problem(n, n_units=120, noise=0.5, alpha=0.1)
    prior = {"prior": theta + np.random.default_rng(5).normal(size=theta.shape)} if name != "lasso" else {}
    precise = {"tol": 1e-7, "max_iter": 20_000, "n_alphas": 6} if name != "gradient_prior" else {}
    dual = make_estimator(name, {**precise, "dual": True}).fit(X, Y, **prior)
    primal = make_estimator(name, {**precise, "dual": False}).fit(X, Y, **prior)
    assert dual.dual_ and not primal.dual_
    assert make_estimator(name).fit(X, Y, **prior).dual_ == (n < 120)
    np.testing.assert_allclose(dual.alpha_, primal.alpha_, rtol=1e-12)
    if n > 120 or name == "gradient_prior":
        np.testing.assert_allclose(dual.coef_, primal.coef_, atol=1e-6 * np.abs(primal.coef_).max())
    fitted = primal.predict(X)
    np.testing.assert_allclose(dual.predict(X), fitted, atol=1e-4 * np.abs(fitted).max())


def test_the_two_layer_estimate_bounds_a_fits_peak_memory_where_the_networks_dominate():
    """Every input has its own network (hidden x components weights): measured in a fresh process (whose peak
    does not start at this one's), a fit holds several copies of them (parameters, gradients, momentum, the
    refit's), and its estimate bounds its peak."""
    n, C, T = 1000, 6000, 100
    code = textwrap.dedent(f"""
        import numpy as np, torch
        from compattr.bench import peak_rss_bytes
        from compattr.estimators import ReluCollapseRegressor
        torch.set_num_threads(1)
        rng = np.random.default_rng(0)
        X = rng.random(({n}, {C})) < 0.05
        Y = X @ rng.normal(size=({C}, {T})) + rng.normal(size=({n}, {T}))
        model = ReluCollapseRegressor(optimizer="sgd", momentum=0.9, max_steps=20, batch_size=512, patience=4)
        before = peak_rss_bytes()
        model.fit(X, Y)
        print(peak_rss_bytes() - before, model.memory_bytes({n}, {C}, {T}))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    measured, estimate = map(int, result.stdout.split())
    networks = 4 * 32 * (C + 2) * T
    assert 3 * networks < measured <= estimate
    # on a GPU the masks are float32, where the CPU holds them in at most a byte a cell (tests/test_cuda.py
    # measures the GPU's peak)
    on_gpu = make_estimator("relu_collapse", device="cuda").memory_bytes(n, C, T)
    assert on_gpu - make_estimator("relu_collapse").memory_bytes(n, C, T) >= 3 * n * C


def test_the_largest_eigenvalue_by_lanczos_is_the_dense_one():
    """Past DENSE_EIGENVALUES masks the row form's step size comes from Lanczos on the masks x masks matrix."""
    X = np.random.default_rng(0).random((DENSE_EIGENVALUES + 100, 300)) < 0.05
    problem = RowForm(torch.as_tensor(X), torch.zeros(len(X), 1), "cpu")
    Xc = X - X.mean(0)
    exact = np.linalg.eigvalsh(Xc.T @ Xc / len(X)).max()
    assert exact <= problem.lipschitz(torch.float64) <= exact * (1 + 1e-5)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_a_fit_too_large_for_the_memory_at_hand_is_refused_before_any_work(name, monkeypatch):
    """The error says how much it needs and which setting lowers it; the estimate follows the form taken."""
    X, Y, theta, _ = planted_problem(60, n_units=40)
    model = make_estimator(name)
    need = model.memory_bytes(60, 40, Y.shape[1])
    assert need > 60 * 40  # at least the masks themselves
    monkeypatch.setattr("compattr.estimators._base.available_memory", lambda device: need - 1)
    prior = {"prior": theta} if model.uses_prior else {}
    with pytest.raises(MemoryError, match=r"needs about .* GiB on cpu, where .* GiB is free: .*fewer") as error:
        model.fit(X, Y, **prior)
    assert not hasattr(model, "coef_") and "60 masks x 40 components" in str(error.value)
    if hasattr(model, "dual"):  # 100,000 components: the masks x masks form needs far less than the Gram matrix
        few, square = model.memory_bytes(1_000, 100_000, 100), clone(model).set_params(dual=False)
        assert few < square.memory_bytes(1_000, 100_000, 100) / 10
        assert "fewer masks than components" in square.memory_advice(1_000, 100_000)
