"""Fit a component model on the first ``n`` masks of a store, save it, load it, score it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from compattr.estimators import make_estimator
from compattr.lds import lds_scores
from compattr.sampling import read_rows

__all__ = ["fit_on_store", "save_fit", "load_fit", "score_fit"]


def fit_on_store(
    store: str | Path, n_train: int, estimator: str, params: dict[str, Any], device: str | torch.device = "cpu"
) -> tuple[Any, float]:
    """Fit ``estimator`` on the first ``n_train`` masks of ``store``; return it and the fit time (s)."""
    masks, margins = read_rows(store, n_train)
    model = make_estimator(estimator, params, device=str(device))
    start = time.perf_counter()
    model.fit(masks, margins)
    return model, time.perf_counter() - start


def save_fit(path: str | Path, model: Any, attributes: dict[str, Any]) -> None:
    """Write a fitted model's ``coef_`` (input x component) and ``intercept_`` (input) as a Zarr group.

    Per-input diagnostics the estimator exposes (``alpha_``, ``n_iter_``) are kept too.
    """
    coef = np.atleast_2d(model.coef_).astype(np.float32)
    group = zarr.open_group(str(path), mode="w", attributes=attributes)
    group.create_array("coef", data=coef, dimension_names=("input", "component"))
    group.create_array("intercept", data=np.atleast_1d(model.intercept_).astype(np.float32), dimension_names=("input",))
    for name in ("alpha_", "n_iter_"):
        if hasattr(model, name):
            group.create_array(name.rstrip("_"), data=np.atleast_1d(getattr(model, name)), dimension_names=("input",))


def load_fit(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``coef`` (input x component), ``intercept`` (input) and attributes of a saved fit."""
    group = zarr.open_group(str(path), mode="r")
    return group["coef"][:], group["intercept"][:], dict(group.attrs)


def score_fit(
    coef: np.ndarray, intercept: np.ndarray, store: str | Path, chunk: int = 10_000
) -> tuple[np.ndarray, np.ndarray]:
    """Per-input Spearman (LDS) and Pearson correlations of a linear model on a held-out store."""
    group = zarr.open_group(str(store), mode="r")
    masks_arr, margins_arr = group["masks"], group["margins"]
    if masks_arr.shape[1] != coef.shape[1] or margins_arr.shape[1] != coef.shape[0]:
        raise ValueError(
            f"fit has {coef.shape[0]} inputs x {coef.shape[1]} components but the store at {store} "
            f"has {margins_arr.shape[1]} inputs x {masks_arr.shape[1]} components"
        )
    predicted = np.concatenate(
        [masks_arr[i : i + chunk].astype(np.float32) @ coef.T + intercept for i in range(0, masks_arr.shape[0], chunk)]
    )
    return lds_scores(predicted, margins_arr[:])
