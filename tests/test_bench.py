import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import planted_problem

from compattr.bench import (
    HiddenLayerLinearCollapse,
    fit_speed,
    forward_throughput,
    peak_rss_bytes,
    planted_masks,
    scale_fits,
    shared_training_speed,
    training_speed,
    two_layer_speed,
    two_layer_summary,
)
from compattr.datamodels import Recipe
from compattr.fitting import fit_on_store
from compattr.reports import scale_markdown, two_layer_markdown
from compattr.sampling import run_shard
from compattr.scores import lds_scores
from compattr.stores import create_mask_store, read_rows


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


def test_a_process_started_from_a_larger_one_measures_its_own_peak_memory():
    """getrusage's ru_maxrss keeps the parent's peak across exec on Linux; the fits' measure does not."""
    held = np.ones(2**27 // 8)  # 128 MiB resident here
    assert peak_rss_bytes() >= held.nbytes
    code = "from compattr.bench import peak_rss_bytes; print(peak_rss_bytes())"
    child = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert child < peak_rss_bytes()  # a bare interpreter with numpy and torch, not this process's peak


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


def _two_layer_stores(path):
    """Small train and held-out stores of a planted, mildly nonlinear problem (30 units, 3 inputs)."""
    _, _, theta, _ = planted_problem(1, n_units=30, n_outputs=3)
    for name, seed in (("train", 1), ("heldout", 2)):
        create_mask_store(
            path / f"{name}.zarr", n_masks=200, n_units=30, n_inputs=3, shard_size=100, ablation_rate=0.1, seed=seed
        )
        for shard in range(2):
            run_shard(path / f"{name}.zarr", shard, lambda m: m @ theta.T + 0.1 * np.sin(7 * m.sum(1))[:, None])


def test_two_layer_speed_fits_both_settings_at_every_size_and_scores_them_on_held_out_masks(tmp_path):
    """Each record is the fit that fit_on_store makes with those settings; the summary totals and compares them."""
    _two_layer_stores(tmp_path)
    params = {"max_steps": 20, "check_every": 2, "patience": 4, "lr": 0.01}
    reference = {"max_steps": 40, "lr": 0.005}
    estimators = {"relu_collapse": params, "relu_net": params}
    records = two_layer_speed(tmp_path / "train.zarr", tmp_path / "heldout.zarr", [60, 150], estimators, reference)
    assert [(r["estimator"], r["settings"], r["n_train"]) for r in records] == [
        (e, label, n) for e in estimators for n in (60, 150) for label in ("reference", "current")
    ]
    X_test, Y_test = read_rows(tmp_path / "heldout.zarr")
    for record in records:
        settings = params if record["settings"] == "current" else {**params, **reference}
        model, _ = fit_on_store(tmp_path / "train.zarr", record["n_train"], record["estimator"], settings)
        assert record["lds"] == pytest.approx(lds_scores(model.predict(X_test.astype(np.float64)), Y_test)[0].mean())
        assert record["median_steps"] == np.median(model.n_iter_)
        assert record["validation_spearman"] == pytest.approx(np.nanmean(model.validation_spearman_))
    summary = two_layer_summary(records)
    assert [row["estimator"] for row in summary] == list(estimators)
    for row in summary:
        mine = [r for r in records if r["estimator"] == row["estimator"]]
        total = {label: sum(r["seconds"] for r in mine if r["settings"] == label) for label in ("reference", "current")}
        assert row["speedup"] == pytest.approx(total["reference"] / total["current"])
        change = {
            n: sum((1 if r["settings"] == "current" else -1) * r["lds"] for r in mine if r["n_train"] == n)
            for n in (60, 150)
        }
        assert row["lowest_lds_change"] == pytest.approx(min(change.values()))
        assert change[row["lowest_lds_change_at"]] == pytest.approx(min(change.values()))
    shared = shared_training_speed(tmp_path / "train.zarr", tmp_path / "heldout.zarr", estimators, records)
    (row,) = shared  # relu_collapse and relu_net train the same networks: one group
    assert row["estimators"] == list(estimators) and row["speedup"] == pytest.approx(row["alone_s"] / row["together_s"])
    assert row["max_lds_difference"] < 1e-4  # each as its own fit would be
    table = two_layer_markdown(summary, records, shared)
    assert table.count("`relu_net`") == 4 and f"{records[0]['lds']:.4f}" in table and "one training" in table


def test_two_layer_speed_times_the_earlier_implementation_of_linear_collapse_as_its_reference(tmp_path, monkeypatch):
    """The reference is linear_collapse as 0.6.0 trained it, through the hidden layer: the same training."""
    _two_layer_stores(tmp_path)
    steps = []
    hidden_layer_forward = HiddenLayerLinearCollapse._forward
    monkeypatch.setattr(
        HiddenLayerLinearCollapse, "_forward", lambda self, *a: steps.append(1) or hidden_layer_forward(self, *a)
    )
    params = {"max_steps": 20, "check_every": 2, "patience": 4, "lr": 0.01}
    stores = tmp_path / "train.zarr", tmp_path / "heldout.zarr"
    records = two_layer_speed(*stores, [150], {"linear_collapse": params}, {})
    assert steps  # the reference ran the hidden layer; this version's linear_collapse does not
    reference, current = records
    assert reference["settings"] == "reference" and reference["median_steps"] == current["median_steps"]
    assert reference["lds"] == pytest.approx(current["lds"], abs=1e-5)
