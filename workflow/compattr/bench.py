"""Benchmarks: ablated against plain forward throughput, batched fits against per-input scikit-learn loops,
batched training of a data study's models against training them one by one, the 2-layer fits' settings
against the reference ones, and linear fits at the seed's scale."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from compattr.components import ComponentSet
from compattr.datamodels import Recipe, stacked_logits, train_alone, train_models
from compattr.estimators import ReluCollapseRegressor, make_estimator
from compattr.estimators._ridge import ridge_alphas
from compattr.fitting import fit_group_on_store, fit_models_on_store, fit_on_store
from compattr.registry import training_groups
from compattr.sampling import BATCHES_PER_CALL, ComponentMarginEvaluator
from compattr.scores import lds_scores
from compattr.stores import read_rows

__all__ = [
    "forward_throughput",
    "fit_speed",
    "training_speed",
    "two_layer_speed",
    "two_layer_summary",
    "shared_training_speed",
    "planted_masks",
    "peak_rss_bytes",
    "scale_fit",
    "scale_fits",
    "REFERENCES",
    "LIBRARY_REFERENCES",
]


def _timed_pair(
    first: Callable[[], Any], second: Callable[[], Any], repeats: int, device: torch.device
) -> tuple[float, float]:
    """Best wall times of ``repeats`` calls of each function, calls alternating, after one warm-up call each.

    Alternating the two keeps slow drifts of a shared machine from favouring either.
    """
    best = [float("inf"), float("inf")]
    for round_ in range(repeats + 1):
        for k, fn in enumerate((first, second)):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if round_:  # round 0 warms up
                best[k] = min(best[k], time.perf_counter() - start)
    return best[0], best[1]


def forward_throughput(
    model: nn.Module,
    components: ComponentSet,
    images: Tensor,
    labels: Tensor,
    *,
    batch: int | str,
    batches: int = BATCHES_PER_CALL,
    repeats: int = 10,
    precision: str = "auto",
    channels_last: bool | str = "auto",
    compile: bool | str = "auto",
) -> dict[str, Any]:
    """Images per second of plain inference and of ablated sampling at the same batch size, device and precision.

    The ablated pass is what sampling runs: one evaluator call of ``batches``
    forward passes of ``batch`` (mask, input) samples (an integer, or "auto" as
    the evaluator takes it) with per-sample channel masks, margins copied to the
    host included. The plain pass runs the same model in the same precision and
    memory format on the same batch ``batches`` times, compiled as the ablated
    one is (same mode).
    """
    device = next(model.parameters()).device
    evaluator = ComponentMarginEvaluator(
        model,
        components,
        images,
        labels,
        batch_size=batch,
        precision=precision,
        channels_last=channels_last,
        compile=compile,
    )
    network = evaluator.compile(evaluator.model)
    n_masks = max(1, evaluator.batch_size // len(labels))
    masks = np.random.default_rng(0).random((n_masks * batches, len(components))) < 0.05
    x = evaluator.images.repeat(n_masks, *(1,) * (images.ndim - 1))

    @torch.no_grad()
    def plain() -> None:
        with evaluator.autocast():
            for _ in range(batches):
                network(x)

    samples = n_masks * len(labels) * batches
    plain_s, ablated_s = _timed_pair(plain, lambda: evaluator(masks), repeats, device)
    return {
        "device": str(device),
        "dtype": str(evaluator.dtype).removeprefix("torch."),
        "channels_last": evaluator.channels_last,
        "compiled": evaluator.compiled,
        "compile_mode": evaluator.compile_mode,
        "batch": n_masks * len(labels),
        "batches": batches,
        "plain_per_s": samples / plain_s,
        "ablated_per_s": samples / ablated_s,
        "ratio": plain_s / ablated_s,
    }


def _ridge_reference(X: np.ndarray, Y: np.ndarray, model: Any) -> np.ndarray:
    """One scikit-learn ``Ridge`` per input and penalty, the same grid, split and refit as ours."""
    from sklearn.linear_model import Ridge

    n_val = model.n_validation(len(X))
    Xf, Xv = X[:-n_val], X[-n_val:]
    Xc = Xf - Xf.mean(0)
    scale = np.linalg.eigvalsh(Xc.T @ Xc).clip(0).mean()
    Xc_all = X - X.mean(0)
    scale_all = np.linalg.eigvalsh(Xc_all.T @ Xc_all).clip(0).mean()
    alphas = ridge_alphas(model.alphas, "cpu").numpy()
    coef = np.empty((Y.shape[1], X.shape[1]))
    intercept = np.empty(Y.shape[1])
    for t in range(Y.shape[1]):
        losses = [
            ((Ridge(alpha=a * scale).fit(Xf, Y[:-n_val, t]).predict(Xv) - Y[-n_val:, t]) ** 2).mean() for a in alphas
        ]
        fitted = Ridge(alpha=alphas[int(np.argmin(losses))] * scale_all).fit(X, Y[:, t])
        coef[t], intercept[t] = fitted.coef_, fitted.intercept_
    return np.c_[coef, intercept]


def _lasso_reference(X: np.ndarray, Y: np.ndarray, model: Any) -> np.ndarray:
    """One scikit-learn lasso path per input on the same split, penalties and refit as ours."""
    from sklearn.linear_model import Lasso, lasso_path

    n_val = model.n_validation(len(X))
    Xf, Xv, Yf, Yv = X[:-n_val], X[-n_val:], Y[:-n_val], Y[-n_val:]
    ratios = np.logspace(0, np.log10(model.min_ratio), model.n_alphas)
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
        fitted = Lasso(alpha=alpha, max_iter=model.max_iter).fit(X, Y[:, t])
        coef[t], intercept[t] = fitted.coef_, fitted.intercept_
    return np.c_[coef, intercept]


def _coar_reference(X: np.ndarray, Y: np.ndarray, model: Any) -> np.ndarray:
    """One scikit-learn ``LinearRegression`` per input on all standardised masks: the minimum-norm least squares."""
    from sklearn.linear_model import LinearRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(X)
    A = scaler.transform(X)
    rows = []
    for t in range(Y.shape[1]):
        fitted = LinearRegression().fit(A, Y[:, t])
        coef = fitted.coef_ / scaler.scale_
        rows.append(np.r_[coef, fitted.intercept_ - coef @ scaler.mean_])
    return np.array(rows)


def _relu_collapse_reference(X: np.ndarray, Y: np.ndarray, model: Any) -> np.ndarray:
    """One scikit-learn ``MLPRegressor`` (ReLU, our optimizer and settings) per input, then its collapse ``W2 W1``.

    Mirrored from ``model``: width, optimizer (Adam, or SGD with momentum), learning rate, batch size, step limit and
    patience (scikit-learn counts both in epochs: ours in steps are converted
    at the fit rows' steps per epoch; strict improvement, ``tol=0``),
    validation fraction, and L2 penalty ``weight_decay`` (the same as our
    decoupled decay at its default, 0). scikit-learn cannot mirror the
    initialisation scale, the calibration of the collapse, stopping on the
    collapse, or the refit on all rows: it stops on its network's validation
    score, on a random split of the rows, and keeps that network.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPRegressor
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(X)
    A = scaler.transform(X)
    batch_size = min(model.batch_size, len(X) - model.n_validation(len(X)))
    steps_per_epoch = math.ceil((len(X) - model.n_validation(len(X))) / batch_size)
    rows = []
    for t in range(Y.shape[1]):
        y_mean, y_std = Y[:, t].mean(), Y[:, t].std() or 1.0
        net = MLPRegressor(
            hidden_layer_sizes=(model.hidden,),
            solver=model.optimizer,  # "adam" or "sgd", as ours
            momentum=model.momentum,
            nesterovs_momentum=False,  # torch's SGD momentum is the plain heavy ball
            learning_rate_init=model.lr,
            alpha=model.weight_decay,
            batch_size=batch_size,
            max_iter=math.ceil(model.max_steps / steps_per_epoch),
            early_stopping=True,
            validation_fraction=model.validation_fraction,
            n_iter_no_change=math.ceil(model.patience / steps_per_epoch),
            tol=0.0,
            random_state=0,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # stopping at max_iter, as ours may
            net.fit(A, (Y[:, t] - y_mean) / y_std)
        (W1, W2), (b1, b2) = net.coefs_, net.intercepts_
        theta, bias = (W1 @ W2)[:, 0], float(b1 @ W2[:, 0] + b2[0])
        coef = theta * y_std / scaler.scale_
        rows.append(np.r_[coef, y_mean + y_std * bias - coef @ scaler.mean_])
    return np.array(rows)


def _prior_ridge(design: np.ndarray, y: np.ndarray, alpha: float) -> Any:
    """scikit-learn fit on ``[c * X a, X]``: Ridge, or least squares on the prior's column alone (``alpha`` inf)."""
    from sklearn.linear_model import LinearRegression, Ridge

    if np.isinf(alpha):
        return LinearRegression().fit(design[:, :1], y)
    return Ridge(alpha=alpha).fit(design, y)


def _gradient_prior_reference(X: np.ndarray, Y: np.ndarray, model: Any, prior: np.ndarray) -> np.ndarray:
    """Per input, scikit-learn ``Ridge`` on ``[c * X a, X]``: with ``c`` huge the prior's scale is unpenalised.

    The same penalty grid (plus the prior alone), split and refit as ours; with
    several candidate priors (n_priors, n_inputs, n_components), each input
    chooses its (prior, penalty) pair on validation, as ours does.
    """
    n_fit = len(X) - model.n_validation(len(X))
    grid = [*ridge_alphas(model.alphas, "cpu").tolist(), np.inf]
    candidates = prior if prior.ndim == 3 else prior[None]

    def scale_of(rows: np.ndarray) -> float:
        centred = rows - rows.mean(0)
        return float(np.linalg.eigvalsh(centred.T @ centred).clip(0).mean())

    scale, scale_all = scale_of(X[:n_fit]), scale_of(X)
    out = []
    for t in range(Y.shape[1]):
        losses, designs = [], []
        for a_t in candidates[:, t]:
            u = X @ a_t
            big = 1e4 * np.sqrt(scale) / max(np.abs(u - u.mean()).max(), 1e-12)
            design = np.c_[big * u, X]
            designs.append((big, design))
            for a in grid:
                fitted = _prior_ridge(design[:n_fit], Y[:n_fit, t], a * scale)
                pred = fitted.predict(design[n_fit:, : fitted.coef_.shape[0]])
                losses.append(((pred - Y[n_fit:, t]) ** 2).mean())
        which, choice = divmod(int(np.argmin(losses)), len(grid))
        big, design = designs[which]
        fitted = _prior_ridge(design, Y[:, t], grid[choice] * scale_all)
        delta = fitted.coef_[1:] if fitted.coef_.shape[0] > 1 else np.zeros(X.shape[1])
        out.append(np.r_[big * fitted.coef_[0] * candidates[which, t] + delta, fitted.intercept_])
    return np.array(out)


def _ridge_cv_reference(X: np.ndarray, Y: np.ndarray, model: Any) -> np.ndarray:
    """scikit-learn ``RidgeCV(alpha_per_target=True)``: every input at once, penalty by leave-one-out, our grid.

    The strongest library equivalent of our ridge: one fit for all inputs, each
    choosing its penalty from the same relative grid (scaled by the mean
    eigenvalue of all rows' centred Gram matrix) by its efficient leave-one-out
    error on all rows, where ours chooses on the last 20% and refits.
    """
    from sklearn.linear_model import RidgeCV

    centred = X - X.mean(0)
    scale = float(np.linalg.eigvalsh(centred.T @ centred).clip(0).mean())
    fitted = RidgeCV(alphas=ridge_alphas(model.alphas, "cpu").numpy() * scale, alpha_per_target=True).fit(X, Y)
    return np.c_[fitted.coef_, fitted.intercept_]


REFERENCES: dict[str, Callable[..., np.ndarray]] = {
    "coar": _coar_reference,
    "ridge": _ridge_reference,
    "lasso": _lasso_reference,
    "relu_collapse": _relu_collapse_reference,
    "gradient_prior": _gradient_prior_reference,
}
#: Multi-output library fits of the same model, timed on every input at once (besides the per-input loop).
LIBRARY_REFERENCES: dict[str, Callable[..., np.ndarray]] = {"ridge": _ridge_cv_reference}


def fit_speed(
    estimator: str,
    X: np.ndarray,
    Y: np.ndarray,
    X_test: np.ndarray,
    Y_test: np.ndarray,
    device: str = "cpu",
    params: dict[str, Any] | None = None,
    prior: np.ndarray | None = None,
    reference_inputs: int | None = None,
    repeats: int = 3,
) -> dict[str, Any]:
    """Time our batched fit and the per-input scikit-learn loop of ``estimator``; score both on held-out masks.

    ``params`` are our estimator's settings; ``prior`` (input x component) is
    passed to both sides for estimators that take one. Ours fits every input at
    once, ``repeats`` times, and its best time counts: a fit that starts right
    after the previous estimator's reference loop shares the cores with that
    loop's BLAS threads, which keep spinning for a moment (measured: 0.19 s
    instead of 0.08 s for lasso). The reference loop runs once, on the first
    ``reference_inputs`` inputs (all by default); its time is scaled to every
    input (a loop is linear in them), and both LDS are means over those inputs.
    Estimators with a multi-output library equivalent (:data:`LIBRARY_REFERENCES`:
    ridge, against ``RidgeCV(alpha_per_target=True)``) also time that, once on
    every input, scored on the same inputs (``library_s``, ``library_speedup``,
    ``lds_library``).
    """
    X, X_test = X.astype(np.float64), X_test.astype(np.float64)
    ours = make_estimator(estimator, params, device=device)
    extra = {"prior": prior} if ours.uses_prior else {}
    ours_s = float("inf")
    for _ in range(repeats):  # the fit is deterministic; the best time discounts a busy start
        start = time.perf_counter()
        ours.fit(X, Y, **extra)
        ours_s = min(ours_s, time.perf_counter() - start)
    k = Y.shape[1] if reference_inputs is None else min(reference_inputs, Y.shape[1])
    subset = {"prior": prior[..., :k, :]} if ours.uses_prior else {}  # one prior, or candidates
    start = time.perf_counter()
    reference = REFERENCES[estimator](X, Y[:, :k], ours, **subset)
    measured_s = time.perf_counter() - start
    reference_s = measured_s * Y.shape[1] / k
    lds_ours = lds_scores(ours.predict(X_test)[:, :k], Y_test[:, :k])[0].mean()
    lds_reference = lds_scores(X_test @ reference[:, :-1].T + reference[:, -1], Y_test[:, :k])[0].mean()
    library = {}
    if estimator in LIBRARY_REFERENCES:  # one multi-output call on every input, scored on the same k inputs
        start = time.perf_counter()
        fitted = LIBRARY_REFERENCES[estimator](X, Y, ours)
        library_s = time.perf_counter() - start
        lds_library = lds_scores(X_test @ fitted[:, :-1].T + fitted[:, -1], Y_test)[0][:k].mean()
        library = {
            "library": LIBRARY_REFERENCES[estimator].__doc__.splitlines()[0],
            "library_s": library_s,
            "library_speedup": library_s / ours_s,
            "lds_library": float(lds_library),
        }
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
        "reference": REFERENCES[estimator].__doc__.splitlines()[0],
        "reference_inputs": k,
        "reference_measured_s": measured_s,
        **library,
    }


def training_speed(
    images: Tensor, labels: Tensor, recipe: Recipe, num_classes: int, *, n_models: int, n_loop: int, seed: int = 0
) -> dict[str, Any]:
    """Models trained per second: ``n_models`` at once (:func:`compattr.datamodels.train_models`) against
    ``n_loop`` of them one by one (:func:`compattr.datamodels.train_alone`, the same recipe and subsets).

    Each subset keeps every example with probability 0.5, as a data study's masks do. The
    batched models are checked against the looped ones (largest logit difference on the
    examples), in float32 as timed, where Adam amplifies rounding differences, and for the
    first ``n_loop`` subsets again in float64, where both must agree to rounding. One
    untimed step of each comes first.
    """
    keep = torch.from_numpy(np.random.default_rng(seed).random((n_models, len(labels))) < 0.5).to(images.device)
    warm_up = dataclasses.replace(recipe, steps=1)  # first calls pay for thread pools and memory: not timed
    train_models(images, labels, keep, warm_up, num_classes)
    train_alone(images[keep[0]], labels[keep[0]], warm_up, num_classes)
    start = time.perf_counter()
    params = train_models(images, labels, keep, recipe, num_classes)
    batched = time.perf_counter() - start
    start = time.perf_counter()
    alone = [train_alone(images[keep[r]], labels[keep[r]], recipe, num_classes) for r in range(n_loop)]
    loop = time.perf_counter() - start
    exact = images.double()
    exact_params = train_models(exact, labels, keep[:n_loop], recipe, num_classes)
    exact_alone = [train_alone(exact[keep[r]], labels[keep[r]], recipe, num_classes) for r in range(n_loop)]

    def difference(models: list[torch.nn.Module], stacked: list[Tensor], x: Tensor) -> float:
        with torch.no_grad():
            return max(
                float((model(x) - stacked_logits([p[r : r + 1] for p in stacked], x)[0]).abs().max())
                for r, model in enumerate(models)
            )

    return {
        "units": len(labels),
        "recipe": {key: getattr(recipe, key) for key in ("hidden", "steps", "lr", "weight_decay", "seed")},
        "batched_models": n_models,
        "batched_seconds": batched,
        "batched_models_per_second": n_models / batched,
        "loop_models": n_loop,
        "loop_seconds": loop,
        "loop_models_per_second": n_loop / loop,
        "speedup": (n_models / batched) / (n_loop / loop),
        "max_logit_difference": difference(alone, params, images),
        "max_logit_difference_float64": difference(exact_alone, exact_params, exact),
    }


class HiddenLayerLinearCollapse(ReluCollapseRegressor):
    """``linear_collapse`` as version 0.6.0 trained it: every step through the hidden layer, with an identity
    activation (this version steps through the collapse, forming no hidden activations; the same training)."""

    _activation = "identity"


#: Reference implementations of 2-layer estimators that this version trains another way (the same training),
#: timed with the reference settings by :func:`two_layer_speed`.
REFERENCE_IMPLEMENTATIONS: dict[str, type[ReluCollapseRegressor]] = {"linear_collapse": HiddenLayerLinearCollapse}


def two_layer_speed(
    train: str | Path,
    heldout: str | Path,
    sizes: Sequence[int],
    estimators: dict[str, dict[str, Any]],
    reference: dict[str, Any],
    device: str = "cpu",
    prior: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Each 2-layer estimator at every train size with its settings and with ``reference``'s overrides of them
    (and, for those in :data:`REFERENCE_IMPLEMENTATIONS`, the earlier implementation).

    Both fit the first ``n`` masks of the ``train`` store (:func:`compattr.fitting.fit_on_store`),
    one after the other at each size, so that both meet the same state of the machine; each is
    scored by its mean Spearman over inputs on every mask of the ``heldout`` store. One untimed
    fit at the smallest size first pays for the process's first calls. Estimators that take a
    prior get ``prior``. Returns one record per estimator, settings (``"current"`` or
    ``"reference"``) and size: ``seconds``, ``lds``, ``median_steps`` (the steps each input kept).
    """
    X_test, Y_test = read_rows(heldout)
    X_test = X_test.astype(np.float64)
    records = []
    for estimator, params in estimators.items():
        given = prior if make_estimator(estimator).uses_prior else None
        fit_on_store(train, min(sizes), estimator, params, device, prior=given)
        for n in sizes:
            for label, settings in (("reference", {**params, **reference}), ("current", params)):
                if label == "reference" and estimator in REFERENCE_IMPLEMENTATIONS:
                    model = REFERENCE_IMPLEMENTATIONS[estimator](**settings, device=device)
                    seconds = fit_models_on_store(train, n, {estimator: model}, prior=given)
                else:
                    model, seconds = fit_on_store(train, n, estimator, settings, device, prior=given)
                lds = float(lds_scores(model.predict(X_test), Y_test)[0].mean())
                records.append(
                    {
                        "estimator": estimator,
                        "settings": label,
                        "n_train": n,
                        "seconds": seconds,
                        "lds": lds,
                        "validation_spearman": float(np.nanmean(model.validation_spearman_)),
                        "median_steps": float(np.median(model.n_iter_)),
                    }
                )
    return records


def shared_training_speed(
    train: str | Path,
    heldout: str | Path,
    estimators: dict[str, dict[str, Any]],
    records: Sequence[dict[str, Any]],
    device: str = "cpu",
    prior: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Each group of ``estimators`` that trains the same networks (:func:`compattr.registry.training_groups`),
    fitted with one training on the first ``n`` masks of ``train`` at every size of ``records``, against
    the same estimators fitted one by one: :func:`two_layer_speed`'s ``records`` with their settings.

    One record per group: the seconds of both ways (summed over the sizes), their ratio, and the
    largest difference of any member's held-out LDS (mean Spearman on ``heldout``) between them.
    """
    X_test, Y_test = read_rows(heldout)
    X_test = X_test.astype(np.float64)
    alone = {(r["estimator"], r["n_train"]): r for r in records if r["settings"] == "current"}
    sizes = sorted({n for _, n in alone})
    shared = []
    for group in (g for g in training_groups(estimators) if len(g) > 1):
        settings = {name: estimators[name] for name in group}
        given = prior if make_estimator(group[0]).uses_prior else None
        together = difference = 0.0
        for n in sizes:
            models, seconds = fit_group_on_store(train, n, settings, device, prior=given)
            together += seconds
            for name, model in models.items():
                lds = lds_scores(model.predict(X_test), Y_test)[0].mean()
                difference = max(difference, abs(lds - alone[name, n]["lds"]))
        seconds_alone = sum(alone[name, n]["seconds"] for name in group for n in sizes)
        shared.append(
            {
                "estimators": group,
                "alone_s": seconds_alone,
                "together_s": together,
                "speedup": seconds_alone / together,
                "max_lds_difference": float(difference),
            }
        )
    return shared


def two_layer_summary(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per estimator of :func:`two_layer_speed`'s records: total seconds of each settings, the speedup,
    and the held-out LDS of the current settings less the reference's, at its lowest over the sizes."""
    summary = []
    for estimator in dict.fromkeys(r["estimator"] for r in records):
        mine = [r for r in records if r["estimator"] == estimator]
        by = {(r["settings"], r["n_train"]): r for r in mine}
        sizes = sorted({r["n_train"] for r in mine})
        change = {n: by["current", n]["lds"] - by["reference", n]["lds"] for n in sizes}
        worst = min(sizes, key=change.__getitem__)
        total = {label: sum(by[label, n]["seconds"] for n in sizes) for label in ("reference", "current")}
        summary.append(
            {
                "estimator": estimator,
                "reference_s": total["reference"],
                "current_s": total["current"],
                "speedup": total["reference"] / total["current"],
                "lowest_lds_change": change[worst],
                "lowest_lds_change_at": worst,
            }
        )
    return summary


def planted_masks(
    n_masks: int, n_components: int, n_inputs: int, rate: float, seed: int, *, block: int = 256
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A planted sparse problem: bool masks (n_masks, n_components) at ``rate``, outputs (n_masks, n_inputs).

    Each input depends on 1% of the components (at least one), with normal effects; the outputs
    carry normal noise of a tenth of the signal's scale. Rows are drawn ``block`` at a time, so
    the temporary floats stay small next to the masks. Returns masks, outputs and the effects.
    """
    rng = np.random.default_rng(seed)
    theta = np.zeros((n_inputs, n_components), dtype=np.float32)
    k = max(1, n_components // 100)
    for t in range(n_inputs):
        theta[t, rng.choice(n_components, k, replace=False)] = rng.standard_normal(k)
    X = np.empty((n_masks, n_components), dtype=bool)
    Y = np.empty((n_masks, n_inputs), dtype=np.float32)
    noise = 0.1 * math.sqrt(rate * k)
    for lo in range(0, n_masks, block):
        x = rng.random((min(block, n_masks - lo), n_components), dtype=np.float32) < rate
        X[lo : lo + len(x)] = x
        Y[lo : lo + len(x)] = x @ theta.T + noise * rng.standard_normal((len(x), n_inputs), dtype=np.float32)
    return X, Y, theta


def peak_rss_bytes() -> int:
    """This process's peak resident memory (bytes) since it started: Linux's ``VmHWM``.

    ``getrusage``'s ``ru_maxrss`` is no such measure for a process started from a larger
    one: on Linux it keeps the parent's peak across the exec. Where ``/proc`` is absent,
    ``ru_maxrss`` nonetheless (kilobytes, bytes on macOS).
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def scale_fit(
    estimator: str, n_masks: int, n_components: int, n_inputs: int, rate: float, seed: int, heldout: int = 1000
) -> dict[str, Any]:
    """Fit ``estimator`` on a :func:`planted_masks` problem from bool blocks, as from a store; time and memory.

    Run it in a fresh process (:func:`scale_fits` does): ``peak_bytes`` is the process's peak
    resident memory over the fit above what it held before (the problem's masks and outputs),
    :func:`peak_rss_bytes`. Prior-corrected estimators get the planted effects plus noise of
    their own scale as the prior. ``lds``: mean Spearman on ``heldout`` fresh masks.
    """
    import psutil

    from compattr.estimators import BLOCK_ROWS, make_estimator

    X, Y, theta = planted_masks(n_masks + heldout, n_components, n_inputs, rate, seed)
    model = make_estimator(estimator)
    fit_params = {}
    if model.uses_prior:
        fit_params["prior"] = theta + np.random.default_rng(seed + 1).standard_normal(theta.shape) * theta.std()
    split = n_masks - model.n_validation(n_masks)

    def blocks(lo: int, hi: int) -> Any:
        return ((X[i : min(i + BLOCK_ROWS, hi)], Y[i : min(i + BLOCK_ROWS, hi)]) for i in range(lo, hi, BLOCK_ROWS))

    model.check_memory(n_masks, n_components, n_inputs)  # as a study's fit checks it, before any work
    before = psutil.Process().memory_info().rss
    start = time.perf_counter()
    model.fit_blocks(blocks(0, split), blocks(split, n_masks), **fit_params)
    seconds = time.perf_counter() - start
    peak = peak_rss_bytes()
    coef = np.atleast_2d(model.coef_).astype(np.float32)
    pred = np.concatenate([X[i : i + BLOCK_ROWS] @ coef.T for i in range(n_masks, len(X), BLOCK_ROWS)])
    return {
        "estimator": estimator,
        "n_components": n_components,
        "n_masks": n_masks,
        "n_inputs": n_inputs,
        "ablation_rate": rate,
        "seconds": seconds,
        "peak_bytes": max(peak - before, 0),
        "process_peak_bytes": peak,
        "dual": bool(getattr(model, "dual_", False)),
        "lds": float(lds_scores(pred, Y[n_masks:])[0].mean()),
    }


def scale_fits(
    estimators: list[str],
    sizes: list[tuple[int, int]],
    n_inputs: int,
    rate: float,
    seed: int,
    limit_s: float,
    threads: int,
) -> list[dict[str, Any]]:
    """:func:`scale_fit` of every estimator at every (components, masks) size, each in a fresh process.

    Each fit runs as ``python -m compattr.bench`` on ``threads`` threads. One past ``limit_s``
    seconds is stopped; ``"status"`` is ``"ok"``, ``"timed out after ..."`` or ``"failed: "`` with
    the error's last line (e.g. an :class:`~compattr.estimators.InsufficientMemoryError`). Smaller
    sizes run first; after a fit that did not finish, the estimator's larger sizes are skipped.
    """
    records = []
    for estimator in estimators:
        stopped = None
        for n_components, n_masks in sorted(sizes, key=lambda size: size[0] * size[1]):
            record = {"estimator": estimator, "n_components": n_components, "n_masks": n_masks, "n_inputs": n_inputs}
            if stopped is not None:
                records.append({**record, "status": f"skipped: {stopped}"})
                continue
            args = {"estimator": estimator, "n_masks": n_masks, "n_components": n_components, "n_inputs": n_inputs}
            args |= {"rate": rate, "seed": seed, "threads": threads}
            command = [sys.executable, "-m", "compattr.bench", json.dumps(args)]
            status = "ok"
            with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
                try:
                    out, err = child.communicate(timeout=limit_s)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.communicate()
                    status = f"timed out after {limit_s:g} s"
            if status == "ok" and child.returncode == 0:
                record |= json.loads(out.splitlines()[-1])
            elif status == "ok":  # the error's last line (an InsufficientMemoryError says what it needs), or the signal
                status = f"failed: {err.strip().splitlines()[-1] if err.strip() else f'exit {child.returncode}'}"
            if status != "ok":
                stopped = f"{status} at {n_components:,} x {n_masks:,}"
            record["status"] = status
            records.append(record)
    return records


def _scale_child(argv: list[str]) -> None:
    """``python -m compattr.bench '<json>'``: one :func:`scale_fit`, its record as JSON on the last line of stdout."""
    args = json.loads(argv[0])
    torch.set_num_threads(args.pop("threads"))
    print(json.dumps(scale_fit(**args)))


if __name__ == "__main__":
    _scale_child(sys.argv[1:])
