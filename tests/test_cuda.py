"""The same results on a GPU as on the CPU: estimators, ablated sampling and baselines.

These run only where torch sees a CUDA device (CI has none; docs/benchmarks.md, "On a GPU", says how
to run them on a lent GPU machine). Each compares the CUDA path with the CPU path on the same data.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import planted_problem

from compattr.baselines import attribution_patching
from compattr.estimators import ESTIMATORS, make_estimator
from compattr.masks import shard_masks
from compattr.sampling import ComponentMarginEvaluator
from compattr.scores import lds_scores

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# The closed-form and gradient-descent fits from moments run in float64 on both devices, the FISTA
# ones step in float32; the 2-layer ensembles train in float32 (dense first layer on CUDA, sparse on
# the CPU), so their SGD paths drift apart by rounding.
TWO_LAYER = {"relu_collapse", "linear_collapse", "relu_net", "relu_collapse_prior"}
FISTA = {"lasso", "gradient_prior_lasso"}


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_estimator_on_cuda_matches_cpu(name):
    X, Y, theta, _ = planted_problem(700, n_units=60, n_outputs=6, noise=0.3, alpha=0.1, seed=3)
    X_test, Y_test, _, _ = planted_problem(300, n_units=60, n_outputs=6, noise=0.3, alpha=0.1, seed=4)
    params = {"max_steps": 120} if name in TWO_LAYER else {}
    fits = {}
    for device in ("cpu", "cuda"):
        model = make_estimator(name, params, device=device)
        extra = {"prior": theta + 0.5} if model.uses_prior else {}
        fits[device] = model.fit(X, Y, **extra)
    pred_cpu, pred_cuda = fits["cpu"].predict(X_test), fits["cuda"].predict(X_test)
    assert np.isfinite(pred_cuda).all()
    lds_cpu, lds_cuda = lds_scores(pred_cpu, Y_test)[0].mean(), lds_scores(pred_cuda, Y_test)[0].mean()
    if name in TWO_LAYER:
        assert abs(lds_cuda - lds_cpu) < 0.02
        assert np.abs(pred_cuda - pred_cpu).max() < 0.1 * Y_test.std()
    elif name in FISTA:  # float32 steps stopped at a relative change of 1e-4: GPU reductions round differently
        scale = np.abs(fits["cpu"].coef_).max()
        np.testing.assert_allclose(fits["cuda"].coef_, fits["cpu"].coef_, rtol=0, atol=1e-4 * scale)
        np.testing.assert_allclose(fits["cuda"].intercept_, fits["cpu"].intercept_, rtol=0, atol=1e-4 * scale)
    else:
        np.testing.assert_allclose(fits["cuda"].coef_, fits["cpu"].coef_, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(fits["cuda"].intercept_, fits["cpu"].intercept_, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("compile", ["auto", True])
def test_compiled_bf16_sampling_on_cuda_matches_float32_cpu(trained_model, digits, compile):
    """Compiled with CUDA graphs (the default on CUDA) and without; 24 masks in batches of 5: a partial last one."""
    model, components = trained_model
    _, test = digits
    images, labels = test.images[:40], test.labels[:40]
    masks = shard_masks(0, 0, 24, len(components), 0.05)
    cpu = ComponentMarginEvaluator(model, components, images, labels, batch_size=200)(masks)
    gpu_model = copy.deepcopy(model).cuda()
    evaluator = ComponentMarginEvaluator(gpu_model, components, images, labels, batch_size=200, compile=compile)
    assert evaluator.dtype == torch.bfloat16 and evaluator.channels_last
    assert evaluator.compile_mode == ("reduce-overhead" if compile == "auto" else "default")
    cuda = evaluator(masks)
    np.testing.assert_array_equal(evaluator(masks), cuda)  # replays give the same margins
    assert cuda.dtype == np.float32 and np.isfinite(cuda).all()
    # bf16 carries ~3 significant digits: margins agree to a few percent of their spread
    assert np.abs(cuda - cpu).max() < 0.05 * cpu.std()
    assert np.corrcoef(cuda.ravel(), cpu.ravel())[0, 1] > 0.999


def test_attribution_patching_on_cuda_matches_cpu(trained_model, digits):
    model, components = trained_model
    _, test = digits
    images, labels = test.images[:16], test.labels[:16]
    cpu = attribution_patching(model, components, images, labels)
    cuda = attribution_patching(copy.deepcopy(model).cuda(), components, images.cuda(), labels.cuda())
    # cuDNN's convolutions run in TF32 by default (~1e-3 relative): compare on the attributions' scale
    np.testing.assert_allclose(cuda[0], cpu[0], rtol=0, atol=3e-3 * np.abs(cpu[0]).max())
    np.testing.assert_allclose(cuda[1], cpu[1], rtol=0, atol=3e-3 * np.abs(cpu[1]).max())


def test_two_layer_estimate_bounds_a_fits_peak_gpu_memory():
    """On a GPU the masks are float32 (and standardised once more): the estimate counts them, and every network."""
    n, C, T = 2000, 6000, 100
    rng = np.random.default_rng(0)
    X = rng.random((n, C)) < 0.05
    Y = X @ rng.normal(size=(C, T)) + rng.normal(size=(n, T))
    model = make_estimator("relu_collapse", {"max_steps": 20, "batch_size": 512}, device="cuda")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    model.fit(X, Y)
    measured = torch.cuda.max_memory_allocated() - before
    assert 4 * n * C < measured <= model.memory_bytes(n, C, T)
