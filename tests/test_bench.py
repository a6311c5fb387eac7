import numpy as np
import pytest
import torch
from conftest import planted_problem

from compattr.bench import fit_speed, forward_throughput, planted_masks, scale_fits, training_speed
from compattr.datamodels import Recipe
from compattr.reports import scale_markdown


def test_forward_throughput_reports_both_rates(trained_model, digits):
    model, components = trained_model
    _, test = digits
    result = forward_throughput(model, components, test.images[:10], test.labels[:10], batch=200, repeats=2)
    assert result["batch"] == 200 and result["batches"] == 8 and result["device"] == "cpu"
    assert result["plain_per_s"] > 0 and result["ablated_per_s"] > 0
    assert result["ratio"] == pytest.approx(result["ablated_per_s"] / result["plain_per_s"])


def test_forward_throughput_serves_token_inputs():
    from compattr.discovery import transformer_components
    from compattr.models import build_model

    arch = {"name": "text_transformer", "context": 8, "layers": 2, "heads": 2, "hidden": 8, "mlp": 12}
    model = build_model(arch, num_classes=20, in_channels=8, seed=0).eval()
    tokens = torch.randint(0, 20, (5, 8), generator=torch.Generator().manual_seed(0))
    result = forward_throughput(model, transformer_components(model), tokens, tokens[:, 0], batch=20, repeats=1)
    assert result["batch"] == 20 and result["plain_per_s"] > 0 and result["ablated_per_s"] > 0


def test_training_speed_times_the_same_models_batched_and_looped(digits):
    train, _ = digits
    recipe = Recipe(hidden=4, steps=5)
    result = training_speed(train.images[:50], train.labels[:50], recipe, 10, n_models=6, n_loop=2)
    assert result["units"] == 50 and result["batched_models"] == 6 and result["loop_models"] == 2
    assert result["max_logit_difference"] < 1e-4  # the looped models are the first batched ones
    assert result["max_logit_difference_float64"] < 1e-10
    assert result["speedup"] == pytest.approx(result["batched_models_per_second"] / result["loop_models_per_second"])


@pytest.mark.parametrize("estimator", ["coar", "ridge", "lasso", "gradient_prior", "relu_collapse"])
def test_fit_reference_reaches_the_same_lds(estimator):
    """The per-input scikit-learn loops solve our problems: same LDS (ReLU-collapse: own init and stopping)."""
    X, Y, theta, bias = planted_problem(300, n_units=40, n_outputs=4, noise=1.0)
    X_test = planted_problem(200, n_units=40, n_outputs=4, seed=5)[0]
    prior = theta + np.random.default_rng(1).normal(size=theta.shape)
    result = fit_speed(estimator, X, Y, X_test, X_test @ theta.T + bias, prior=prior, reference_inputs=3)
    assert result["n_train"] == 300 and result["n_inputs"] == 4 and result["reference_inputs"] == 3
    assert result["reference_s"] == pytest.approx(result["reference_measured_s"] * 4 / 3)
    tolerance = 0.1 if estimator == "relu_collapse" else 0.01
    assert abs(result["lds_ours"] - result["lds_reference"]) < tolerance
    assert np.isfinite(result["speedup"])
    if estimator == "ridge":  # RidgeCV chooses by leave-one-out on all rows, ours on a validation split
        assert result["library_s"] > 0 and result["library_speedup"] == pytest.approx(
            result["library_s"] / result["ours_s"]
        )
        assert abs(result["lds_ours"] - result["lds_library"]) < 0.02
    else:
        assert "library_s" not in result


def test_gradient_prior_reference_chooses_among_candidate_priors():
    """With several candidate priors (as the default config gives), the reference chooses per input too."""
    X, Y, theta, bias = planted_problem(300, n_units=40, n_outputs=4, noise=1.0)
    X_test = planted_problem(200, n_units=40, n_outputs=4, seed=5)[0]
    rng = np.random.default_rng(1)
    priors = np.stack([theta + rng.normal(size=theta.shape), rng.normal(size=theta.shape)])
    result = fit_speed("gradient_prior", X, Y, X_test, X_test @ theta.T + bias, prior=priors, reference_inputs=3)
    assert abs(result["lds_ours"] - result["lds_reference"]) < 0.01


def test_fit_reference_mirrors_sgd_with_momentum():
    """With our SGD settings the MLPRegressor reference trains by SGD too, to about the same LDS."""
    X, Y, theta, bias = planted_problem(300, n_units=40, n_outputs=4, noise=1.0)
    X_test = planted_problem(200, n_units=40, n_outputs=4, seed=5)[0]
    params = {"optimizer": "sgd", "momentum": 0.9, "lr": 0.01}
    result = fit_speed("relu_collapse", X, Y, X_test, X_test @ theta.T + bias, params=params, reference_inputs=3)
    assert abs(result["lds_ours"] - result["lds_reference"]) < 0.1


def test_planted_masks_follow_their_effects():
    X, Y, theta = planted_masks(400, 300, 4, 0.05, seed=0)
    assert X.dtype == bool and X.shape == (400, 300) and abs(X.mean() - 0.05) < 0.01
    assert ((theta != 0).sum(1) == 3).all()  # 1% of the components per input
    residual = Y - X @ theta.T
    assert residual.std() < 0.2 * (X @ theta.T).std()


def test_scale_fits_time_each_fit_in_its_own_process_and_stop_one_past_its_limit():
    """A fit is recorded with its form, memory and LDS; past the limit it stops and larger sizes are skipped."""
    records = scale_fits(["ridge"], [(300, 250)], 3, 0.05, seed=0, limit_s=300, threads=1)
    (ridge,) = records
    assert ridge["status"] == "ok" and ridge["dual"] and ridge["n_masks"] == 250
    assert ridge["seconds"] > 0 and ridge["peak_bytes"] >= 0 and ridge["lds"] > 0.1  # chance is 0 +- 0.03
    stopped = scale_fits(["coar"], [(300, 2000), (200, 100)], 3, 0.05, seed=0, limit_s=0.5, threads=1)
    assert [r["n_components"] for r in stopped] == [200, 300]  # smaller sizes first
    assert stopped[0]["status"] == "timed out after 0.5 s"
    assert stopped[1]["status"].startswith("skipped: timed out")
    (refused,) = scale_fits(["ls_early_stopped"], [(100_000, 10)], 1, 0.05, seed=0, limit_s=300, threads=1)
    assert refused["status"].startswith("failed: ") and "InsufficientMemoryError" in refused["status"]
    assert "needs about" in refused["status"]  # the error's own words, before any work
    table = scale_markdown(records + stopped)
    assert "| `ridge` | 300 | 250 | masks x masks |" in table and "skipped: timed out" in table
