import numpy as np
import pytest
from conftest import planted_problem

from compattr.estimators import make_estimator
from compattr.fitting import fit_on_store, load_fit, save_fit, score_fit
from compattr.sampling import create_store, run_shard


@pytest.mark.parametrize("name", ["ridge", "relu_net"])
def test_saved_fit_predicts_and_scores_like_the_estimator(name, tmp_path):
    X, Y, _, _ = planted_problem(300)
    model = make_estimator(name, {"max_epochs": 5} if name == "relu_net" else None).fit(X, Y)
    save_fit(tmp_path / "fit.zarr", model, {"estimator": name, "n_train": 300})
    fit = load_fit(tmp_path / "fit.zarr")
    assert fit.attrs == {"estimator": name, "n_train": 300}
    assert (fit.network is not None) == (name == "relu_net")
    Xt, Yt, _, _ = planted_problem(100, seed=1)
    np.testing.assert_allclose(fit.predict(Xt.astype(bool)), model.predict(Xt), rtol=1e-4, atol=1e-4)
    spearman, _ = score_fit(fit, Xt.astype(bool), model.predict(Xt))
    np.testing.assert_allclose(spearman, 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="held-out masks have"):
        score_fit(fit, Xt[:, :-1].astype(bool), Yt)


def test_fit_on_store_passes_the_prior_to_estimators_that_use_one(tmp_path):
    _, _, theta, _ = planted_problem(1, n_units=30, n_outputs=4)
    create_store(tmp_path / "s.zarr", n_masks=200, n_units=30, n_inputs=4, shard_size=100, attributes={})
    run_shard(tmp_path / "s.zarr", 0, lambda m: m @ theta.T, alpha=0.1, seed=1)
    run_shard(tmp_path / "s.zarr", 1, lambda m: m @ theta.T, alpha=0.1, seed=1)
    model, _ = fit_on_store(tmp_path / "s.zarr", 150, "gradient_prior", {}, prior=theta)
    np.testing.assert_allclose(model.scale_, 1.0, atol=1e-6)  # noiseless data, exact prior
    with pytest.raises(ValueError, match="needs a prior"):
        fit_on_store(tmp_path / "s.zarr", 150, "gradient_prior", {})
    with pytest.raises(ValueError, match="takes no prior"):
        fit_on_store(tmp_path / "s.zarr", 150, "ridge", {}, prior=theta)
