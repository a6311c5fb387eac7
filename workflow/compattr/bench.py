"""Benchmarks: ablated against plain forward throughput, batched fits against per-input scikit-learn loops."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from compattr.components import ComponentSet
from compattr.estimators import RidgeCVRegressor, make_estimator
from compattr.lds import lds_scores
from compattr.sampling import ComponentMarginEvaluator

__all__ = ["forward_throughput", "fit_speed", "REFERENCES"]


def _timed(fn: Callable[[], Any], repeats: int, device: torch.device) -> float:
    """Best wall time of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def forward_throughput(
    model: nn.Module, components: ComponentSet, images: Tensor, labels: Tensor, *, batch: int, repeats: int = 5
) -> dict[str, Any]:
    """Images per second of plain inference and of ablated sampling at the same batch size and device.

    The ablated pass is what sampling runs: ``batch`` (mask, input) samples per
    forward pass with per-sample channel masks, margins included.
    """
    device = next(model.parameters()).device
    evaluator = ComponentMarginEvaluator(model, components, images, labels, batch_size=batch)
    n_masks = max(1, batch // len(labels))
    masks = np.random.default_rng(0).random((n_masks, len(components))) < 0.05
    x = images.to(device).repeat(n_masks, 1, 1, 1)

    @torch.no_grad()
    def plain() -> None:
        model(x)

    samples = n_masks * len(labels)
    plain_s = _timed(plain, repeats, device)
    ablated_s = _timed(lambda: evaluator(masks), repeats, device)
    return {
        "device": str(device),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "batch": samples,
        "plain_per_s": samples / plain_s,
        "ablated_per_s": samples / ablated_s,
        "ratio": plain_s / ablated_s,
    }


def _ridge_reference(X: np.ndarray, Y: np.ndarray, validation_fraction: float) -> np.ndarray:
    """One scikit-learn ``Ridge`` per input and penalty, the same grid, split and refit as ours."""
    from sklearn.linear_model import Ridge

    n_val = int(np.ceil(validation_fraction * len(X)))
    Xf, Xv = X[:-n_val], X[-n_val:]
    Xc = Xf - Xf.mean(0)
    scale = np.linalg.eigvalsh(Xc.T @ Xc).clip(0).mean()
    Xc_all = X - X.mean(0)
    scale_all = np.linalg.eigvalsh(Xc_all.T @ Xc_all).clip(0).mean()
    alphas = np.logspace(-3, 3, 25)
    coef = np.empty((Y.shape[1], X.shape[1]))
    intercept = np.empty(Y.shape[1])
    for t in range(Y.shape[1]):
        losses = [
            ((Ridge(alpha=a * scale).fit(Xf, Y[:-n_val, t]).predict(Xv) - Y[-n_val:, t]) ** 2).mean() for a in alphas
        ]
        model = Ridge(alpha=alphas[int(np.argmin(losses))] * scale_all).fit(X, Y[:, t])
        coef[t], intercept[t] = model.coef_, model.intercept_
    return np.c_[coef, intercept]


def _lasso_reference(X: np.ndarray, Y: np.ndarray, validation_fraction: float) -> np.ndarray:
    """One scikit-learn lasso path per input on the same split, penalties and refit as ours."""
    from sklearn.linear_model import Lasso, lasso_path

    n_val = int(np.ceil(validation_fraction * len(X)))
    Xf, Xv, Yf, Yv = X[:-n_val], X[-n_val:], Y[:-n_val], Y[-n_val:]
    ratios = np.logspace(0, -3, 20)
    coef = np.empty((Y.shape[1], X.shape[1]))
    intercept = np.empty(Y.shape[1])
    Xc, mean = Xf - Xf.mean(0), Xf.mean(0)
    for t in range(Y.shape[1]):
        yc = Yf[:, t] - Yf[:, t].mean()
        alpha_max = np.abs(Xc.T @ yc).max() / len(Xf)
        alphas, path, _ = lasso_path(Xc, yc, alphas=ratios * alpha_max)
        pred = (Xv - mean) @ path + Yf[:, t].mean()
        best = ratios[int(np.argmin(((pred - Yv[:, [t]]) ** 2).mean(0)))]
        yc_all = Y[:, t] - Y[:, t].mean()
        alpha = best * np.abs((X - X.mean(0)).T @ yc_all).max() / len(X)
        model = Lasso(alpha=alpha).fit(X, Y[:, t])
        coef[t], intercept[t] = model.coef_, model.intercept_
    return np.c_[coef, intercept]


REFERENCES: dict[str, Callable[[np.ndarray, np.ndarray, float], np.ndarray]] = {
    "ridge": _ridge_reference,
    "lasso": _lasso_reference,
}


def fit_speed(
    estimator: str, X: np.ndarray, Y: np.ndarray, X_test: np.ndarray, Y_test: np.ndarray, device: str = "cpu"
) -> dict[str, Any]:
    """Time our batched fit and the per-input scikit-learn loop of ``estimator``; score both on held-out masks."""
    X, X_test = X.astype(np.float64), X_test.astype(np.float64)
    ours = make_estimator(estimator, device=device)
    start = time.perf_counter()
    ours.fit(X, Y)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    reference = REFERENCES[estimator](X, Y, RidgeCVRegressor().validation_fraction)
    reference_s = time.perf_counter() - start
    lds_ours = lds_scores(ours.predict(X_test), Y_test)[0].mean()
    lds_reference = lds_scores(X_test @ reference[:, :-1].T + reference[:, -1], Y_test)[0].mean()
    return {
        "estimator": estimator,
        "n_train": len(X),
        "n_components": X.shape[1],
        "n_inputs": Y.shape[1],
        "ours_s": ours_s,
        "reference_s": reference_s,
        "speedup": reference_s / ours_s,
        "lds_ours": float(lds_ours),
        "lds_reference": float(lds_reference),
    }
