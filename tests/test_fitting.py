import warnings

import numpy as np
import pytest
from conftest import planted_problem

from compattr.estimators import make_estimator
from compattr.fitting import (
    fit_draws,
    fit_group_on_store,
    fit_on_store,
    replicate_starts,
    score_fit,
    score_method,
    top_components,
)
from compattr.sampling import run_shard
from compattr.stores import (
    create_mask_store,
    fit_stores,
    load_fit,
    read_coordinates,
    read_rows,
    save_fit,
    save_linear_fit,
)


@pytest.mark.parametrize("name", ["ridge", "relu_net"])
def test_saved_fit_predicts_and_scores_like_the_estimator(name, tmp_path):
    X, Y, _, _ = planted_problem(300)
    model = make_estimator(name, {"max_steps": 10} if name == "relu_net" else None).fit(X, Y)
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
    shape = {"n_masks": 200, "n_units": 30, "n_inputs": 4, "shard_size": 100}
    create_mask_store(tmp_path / "s.zarr", **shape, ablation_rate=0.1, seed=1)
    run_shard(tmp_path / "s.zarr", 0, lambda m: m @ theta.T)
    run_shard(tmp_path / "s.zarr", 1, lambda m: m @ theta.T)
    model, _ = fit_on_store(tmp_path / "s.zarr", 150, "gradient_prior", {}, prior=theta)
    np.testing.assert_allclose(model.scale_, 1.0, atol=1e-6)  # noiseless data, exact prior
    with pytest.raises(ValueError, match="needs a prior"):
        fit_on_store(tmp_path / "s.zarr", 150, "gradient_prior", {})
    with pytest.raises(ValueError, match="takes no prior"):
        fit_on_store(tmp_path / "s.zarr", 150, "ridge", {}, prior=theta)


def test_fit_on_store_refuses_a_fit_too_large_for_the_free_memory_before_reading_a_row(tmp_path, monkeypatch):
    create_mask_store(
        tmp_path / "s.zarr", n_masks=200, n_units=30, n_inputs=4, shard_size=100, ablation_rate=0.1, seed=1
    )
    monkeypatch.setattr("compattr.fitting.iter_rows", lambda *args: pytest.fail("rows were read"))
    monkeypatch.setattr("compattr.estimators._base.available_memory", lambda device: 1000)
    with pytest.raises(MemoryError, match=r"RidgeCVRegressor on 150 masks x 30 components x 4 inputs needs about"):
        fit_on_store(tmp_path / "s.zarr", 150, "ridge", {})


def test_estimators_fitted_together_need_the_memory_of_each_readout(tmp_path, monkeypatch):
    """One training for relu_collapse and relu_net holds a second set of networks: its check counts it."""
    _, _, theta, _ = planted_problem(1, n_units=30, n_outputs=4)
    create_mask_store(
        tmp_path / "s.zarr", n_masks=200, n_units=30, n_inputs=4, shard_size=100, ablation_rate=0.1, seed=1
    )
    for shard in range(2):
        run_shard(tmp_path / "s.zarr", shard, lambda m: m @ theta.T)
    alone = make_estimator("relu_collapse")
    need = alone.memory_bytes(150, 30, 4)
    monkeypatch.setattr("compattr.estimators._base.available_memory", lambda device: need)
    fit_group_on_store(tmp_path / "s.zarr", 150, {"relu_collapse": {"max_steps": 2}})  # fits as it is
    monkeypatch.setattr("compattr.fitting.iter_rows", lambda *args: pytest.fail("rows were read"))
    with pytest.raises(MemoryError, match="ReluCollapseRegressor on 150 masks"):
        fit_group_on_store(tmp_path / "s.zarr", 150, {"relu_collapse": {"max_steps": 2}, "relu_net": {"max_steps": 2}})


def _noisy_linear_store(path, n_masks, n_units, n_inputs, *, shard_size, seed, noise_seed):
    """A store whose margins are a planted linear function of the masks (ablation rate 0.2) plus noise; its theta."""
    _, _, theta, bias = planted_problem(1, n_units=n_units, n_outputs=n_inputs)
    noise = np.random.default_rng(noise_seed)
    shape = {"n_masks": n_masks, "n_units": n_units, "n_inputs": n_inputs, "shard_size": shard_size}
    create_mask_store(path, **shape, ablation_rate=0.2, seed=seed)
    for shard in range(-(-n_masks // shard_size)):
        run_shard(path, shard, lambda m: m @ theta.T + bias + noise.normal(size=(len(m), n_inputs)))
    return theta


@pytest.mark.parametrize(
    "name", ["coar", "ls_early_stopped", "ridge", "lasso", "gradient_prior", "gradient_prior_lasso", "relu_collapse"]
)
def test_fits_streamed_from_the_store_equal_fits_on_the_rows(tmp_path, name):
    """Moments (or the 2-layer fits' rows) gathered shard by shard give the model a fit on the rows in memory gives."""
    theta = _noisy_linear_store(tmp_path / "s.zarr", 230, 30, 4, shard_size=50, seed=3, noise_seed=2)
    prior = theta + np.random.default_rng(4).normal(size=theta.shape)
    params = {"tol": 1e-10, "max_iter": 50_000} if "lasso" in name else {}
    params = {"max_steps": 20} if name == "relu_collapse" else params
    uses_prior = name.startswith("gradient_prior")
    streamed, _ = fit_on_store(tmp_path / "s.zarr", 217, name, params, prior=prior if uses_prior else None)
    masks, margins = read_rows(tmp_path / "s.zarr", 217)
    in_memory = make_estimator(name, params).fit(masks, margins, **({"prior": prior} if uses_prior else {}))
    np.testing.assert_allclose(streamed.coef_, in_memory.coef_, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(streamed.intercept_, in_memory.intercept_, rtol=1e-6, atol=1e-6)
    choice = {"coar": "rank_", "ls_early_stopped": "n_iter_", "relu_collapse": "n_iter_"}.get(name, "alpha_")
    np.testing.assert_array_equal(getattr(streamed, choice), getattr(in_memory, choice))


def test_mask_draws_are_disjoint_and_each_fit_is_that_of_its_own_rows(tmp_path):
    assert replicate_starts(100, 450, 5) == [0, 100, 200, 300]  # as many disjoint draws as the store holds
    assert replicate_starts(100, 1000, 3) == [0, 100, 200]
    with pytest.raises(ValueError, match="cannot draw"):
        replicate_starts(500, 450, 2)
    _noisy_linear_store(tmp_path / "s.zarr", 160, 20, 3, shard_size=40, seed=7, noise_seed=5)
    masks, margins = read_rows(tmp_path / "s.zarr")
    fits = {(n, r): models["ridge"] for n, r, models, _ in fit_draws(tmp_path / "s.zarr", [50, 80], 3, {"ridge": {}})}
    assert sorted(fits) == [(50, 0), (50, 1), (50, 2), (80, 0), (80, 1)]
    for (n, r), model in fits.items():
        rows = slice(r * n, (r + 1) * n)
        alone = make_estimator("ridge").fit(masks[rows], margins[rows])
        np.testing.assert_allclose(model.coef_, alone.coef_, rtol=1e-5, atol=1e-6)
    assert not np.allclose(fits[(50, 0)].coef_, fits[(50, 1)].coef_)  # other masks, another fit


def test_fit_stores_lists_a_directory_of_draws_by_size_then_draw(tmp_path):
    X, Y, _, _ = planted_problem(100)
    model = make_estimator("ridge").fit(X, Y)
    for name in ("n100.r0.zarr", "n20.r1.zarr", "n20.r0.zarr"):
        save_fit(tmp_path / "fits" / name, model, {})
    assert [p.name for p in fit_stores(tmp_path / "fits")] == ["n20.r0.zarr", "n20.r1.zarr", "n100.r0.zarr"]
    assert fit_stores(tmp_path / "fits" / "n20.r0.zarr") == [tmp_path / "fits" / "n20.r0.zarr"]


def test_a_methods_fits_are_scored_per_input_with_their_labels_costs_and_chosen_priors(tmp_path):
    rng = np.random.default_rng(0)
    coef = rng.normal(size=(3, 6))
    masks = rng.random((50, 6)) < 0.3
    truth = masks @ coef.T
    # a fit that started from two candidate priors (no per-input choice recorded), and an exact fit
    attrs = {"n_train": 20, "replicate": 1, "passes": 26, "prior": ["fits/atp.zarr", "fits/atp_mean.zarr"]}
    save_linear_fit(tmp_path / "fits" / "n20.r1.zarr", -coef, np.zeros(3), attrs)
    save_linear_fit(tmp_path / "fits" / "n40.r0.zarr", coef, np.zeros(3), {"n_train": 40})
    heldout, ood = (masks, truth), {0.1: (masks[:20], truth[:20])}
    scored, scored_ood, diagnostics = score_method("ridge", 2, [tmp_path / "fits"], heldout, ood)
    assert [row[:5] for row in scored[::3]] == [("ridge", 2, 1, 20, 26), ("ridge", 2, 0, 40, 40)]
    assert [row[5] for row in scored] == [0, 1, 2, 0, 1, 2]  # the inputs
    np.testing.assert_allclose([row[6] for row in scored], [-1, -1, -1, 1, 1, 1])  # Spearman
    assert {row[-1] for row in scored_ood} == {0.1} and len(scored_ood) == len(scored)
    assert [row[-1] for row in diagnostics] == ["atp"] * 3 + [""] * 3  # without choices: the first prior


def test_priors_load_as_one_array_or_a_stack_with_their_costs_added(tmp_path):
    from compattr.stores import load_priors, save_linear_fit

    rng = np.random.default_rng(0)
    coefs = [rng.normal(size=(3, 5)) for _ in range(2)]
    paths = []
    for k, (coef, passes) in enumerate(zip(coefs, (3, 7), strict=True)):
        paths.append(str(tmp_path / f"p{k}.zarr"))
        save_linear_fit(paths[-1], coef, np.zeros(3), {"estimator": f"p{k}", "n_train": 0, "passes": passes})
    one, cost = load_priors(paths[0])
    np.testing.assert_allclose(one, coefs[0])
    assert cost == 3
    both, cost = load_priors(paths)
    np.testing.assert_allclose(both, np.stack(coefs))
    assert cost == 10
    assert load_priors([]) == (None, 0)


def test_measured_units_reads_each_priors_exact_top_from_its_store(tmp_path):
    from compattr.stores import measured_units, save_linear_fit

    coef, attrs = np.zeros((2, 4)), {"n_train": 0, "passes": 3, "baseline": True}
    priors = {"atp": {"point": "unablated"}, "atp_top_2": {"point": "unablated", "exact_top": 2}, "loo": None}
    for name, prior in priors.items():
        save_linear_fit(tmp_path / f"{name}.zarr", coef, np.zeros(2), {**attrs, "estimator": name, "prior": prior})
    assert measured_units(tmp_path) == {"atp": 0, "atp_top_2": 2}
    assert measured_units(tmp_path / "missing") == {}


def test_fit_stores_keep_coordinates_and_name_the_top_components(tmp_path):
    coef = np.array([[0.1, -3.0, 2.0], [0.0, 0.5, -0.2]])
    coords = {"components": ["a:0", "a:1", "b:0"], "inputs": np.array([7, 3]), "labels": np.array([1, 0])}
    save_linear_fit(tmp_path / "fit.zarr", coef, np.zeros(2), {"n_train": 5}, coords)
    back = read_coordinates(tmp_path / "fit.zarr")
    assert back["components"].tolist() == coords["components"]
    np.testing.assert_array_equal(back["inputs"], [7, 3])
    np.testing.assert_array_equal(back["labels"], [1, 0])
    save_linear_fit(tmp_path / "bare.zarr", coef, np.zeros(2), {})
    assert read_coordinates(tmp_path / "bare.zarr") is None
    (tmp_path / "fit.zarr" / ".snakemake_timestamp").touch()  # as in a Snakemake directory() output
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_coordinates(tmp_path / "fit.zarr")["components"].tolist() == coords["components"]
    assert top_components(coef, back["components"], back["inputs"].tolist(), 2) == {
        7: [("a:1", -3.0), ("b:0", 2.0)],
        3: [("a:1", 0.5), ("b:0", -0.2)],
    }
    with pytest.raises(ValueError, match="coordinates name 2 inputs x 2 components"):
        save_linear_fit(tmp_path / "bad.zarr", coef, np.zeros(2), {}, {**coords, "components": ["a", "b"]})
    with pytest.raises(ValueError, match="k must be at least 1"):
        top_components(coef, coords["components"], [7, 3], 0)
