import numpy as np
import pytest
from conftest import planted_problem

from compattr.estimators import make_estimator
from compattr.fitting import load_fit, save_fit, score_fit


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
