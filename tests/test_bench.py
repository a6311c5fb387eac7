import numpy as np
import pytest
from conftest import planted_problem

from compattr.bench import fit_speed, forward_throughput


def test_forward_throughput_reports_both_rates(trained_model, digits):
    model, components = trained_model
    _, test = digits
    result = forward_throughput(model, components, test.images[:10], test.labels[:10], batch=200, repeats=2)
    assert result["batch"] == 200 and result["device"] == "cpu"
    assert result["plain_per_s"] > 0 and result["ablated_per_s"] > 0
    assert result["ratio"] == pytest.approx(result["ablated_per_s"] / result["plain_per_s"])


@pytest.mark.parametrize("estimator", ["ridge", "lasso"])
def test_fit_reference_reaches_the_same_lds(estimator):
    X, Y, theta, bias = planted_problem(300, n_units=40, n_outputs=4, noise=1.0)
    X_test = planted_problem(200, n_units=40, n_outputs=4, seed=5)[0]
    result = fit_speed(estimator, X, Y, X_test, X_test @ theta.T + bias)
    assert result["n_train"] == 300 and result["n_inputs"] == 4
    assert abs(result["lds_ours"] - result["lds_reference"]) < 0.01
    assert np.isfinite(result["speedup"])
