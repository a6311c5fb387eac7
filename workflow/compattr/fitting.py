"""Fit component models on rows of a mask store (every train size and disjoint draw), and score them.

Fit stores are written and read by :mod:`compattr.stores`. Scoring a fit needs no torch: the
estimators (and torch) are imported by the first fit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.stats import rankdata
from tqdm import tqdm

from compattr.scores import lds_scores
from compattr.stores import MaskStore, SavedFit, fit_stores, iter_rows, load_fit

if TYPE_CHECKING:
    import torch

__all__ = [
    "fit_on_store",
    "fit_group_on_store",
    "fit_draws",
    "replicate_starts",
    "score_fit",
    "score_method",
    "predicts_constant",
    "top_components",
]


def replicate_starts(n_train: int, n_masks: int, replicates: int) -> list[int]:
    """First rows of the disjoint draws of ``n_train`` training masks: as many of ``replicates`` as fit in ``n_masks``.

    Draw ``r`` is rows ``r * n_train`` to ``(r + 1) * n_train``; masks are i.i.d.,
    so disjoint rows are independent draws. Draw 0 is the first ``n_train`` rows.
    """
    if n_train < 1 or n_train > n_masks:
        raise ValueError(f"cannot draw {n_train} training masks from a store of {n_masks}")
    return [r * n_train for r in range(min(replicates, n_masks // n_train))]


def fit_on_store(
    store: str | Path | MaskStore,
    n_train: int,
    estimator: str,
    params: dict[str, Any],
    device: str | torch.device = "cpu",
    prior: np.ndarray | None = None,
    start: int = 0,
) -> tuple[Any, float]:
    """Fit ``estimator`` on ``n_train`` masks of ``store`` from row ``start``; return it and the fit time (s).

    Estimators with ``uses_prior`` need ``prior`` (input x component), e.g. the
    ``coef`` of an attribution-patching fit. Every estimator reads the store chunk
    by chunk (``fit_blocks``): those that fit from moments (coar, ridge, lasso,
    gradient_prior) keep only sums of products; the 2-layer ones keep binary
    masks as the coordinates of their rare value, and the margins. The last
    rows of the range are the estimator's validation split, if it has one.
    """
    models, seconds = fit_group_on_store(store, n_train, {estimator: params}, device, prior, start)
    return models[estimator], seconds


def fit_group_on_store(
    store: str | Path | MaskStore,
    n_train: int,
    estimators: dict[str, dict[str, Any]],
    device: str | torch.device = "cpu",
    prior: np.ndarray | None = None,
    start: int = 0,
) -> tuple[dict[str, Any], float]:
    """:func:`fit_on_store` for ``estimators`` ({name: params}) that train together: one of any kind, or
    several 2-layer ones that train the same networks (:func:`compattr.registry.training_groups`),
    fitted with one training (:func:`compattr.estimators.fit_together`). Returns them by name and the time.
    """
    from compattr.estimators import make_estimator

    models = {name: make_estimator(name, params, device=str(device)) for name, params in estimators.items()}
    return models, fit_models_on_store(store, n_train, models, prior, start)


def fit_models_on_store(
    store: str | Path | MaskStore,
    n_train: int,
    models: dict[str, Any],
    prior: np.ndarray | None = None,
    start: int = 0,
) -> float:
    """Fit estimator instances ``models`` ({name: estimator}, as :func:`fit_group_on_store` makes them) on
    ``n_train`` masks of ``store`` from row ``start``, in place; returns the time in seconds."""
    from compattr.estimators import fit_together

    model = next(iter(models.values()))
    for name, each in models.items():
        if each.uses_prior and prior is None:
            raise ValueError(f"estimator {name!r} needs a prior attribution (input x component); none was given")
        if not each.uses_prior and prior is not None:
            raise ValueError(f"estimator {name!r} takes no prior")
    fit_params = {"prior": prior} if model.uses_prior else {}
    store = MaskStore.open(store)
    shape = n_train, store.masks.shape[1], store.margins.shape[1]
    model.check_memory(*shape, extra=sum(other.readout_bytes(*shape) for other in list(models.values())[1:]))
    begin = time.perf_counter()
    stop = start + n_train
    split = stop - model.n_validation(n_train)
    fit_rows, validation_rows = iter_rows(store, start, split), iter_rows(store, split, stop)
    if len(models) == 1:
        model.fit_blocks(fit_rows, validation_rows, **fit_params)
    else:
        fit_together(list(models.values()), fit_rows, validation_rows, **fit_params)
    return time.perf_counter() - begin


def fit_draws(
    store: str | Path | MaskStore,
    sizes: Sequence[int],
    replicates: int,
    estimators: dict[str, dict[str, Any]],
    device: str | torch.device = "cpu",
    prior: np.ndarray | None = None,
) -> Iterator[tuple[int, int, dict[str, Any], float]]:
    """Fit ``estimators`` ({name: params}, trained together: :func:`fit_group_on_store`) at every train
    size on every disjoint draw of masks (:func:`replicate_starts`).

    Yields ``(n_train, replicate, fitted estimators by name, seconds)``, with a
    progress bar on stderr. One process serves every fit: most fits take less time
    than starting a process.
    """
    store = MaskStore.open(store)
    draws = [(n, r, start) for n in sizes for r, start in enumerate(replicate_starts(n, store.n_masks, replicates))]
    for n, r, start in tqdm(draws, desc=f"fitting {', '.join(estimators)}", unit="fit"):
        models, seconds = fit_group_on_store(store, n, estimators, device, prior=prior, start=start)
        yield n, r, models, seconds


def score_fit(
    fit: SavedFit, masks: np.ndarray, margins: np.ndarray, margin_ranks: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-input Spearman (LDS) and Pearson correlations of a fit's predictions on held-out masks.

    Inputs whose fit failed (``fit.failed``) score 0, as a constant prediction does.

    ``masks`` (n_masks, n_components) and ``margins`` (n_masks, n_inputs) as
    :func:`compattr.stores.read_rows` returns them, read once for every fit scored, and
    optionally the margins' ranks per input (see :func:`compattr.scores.lds_scores`).
    """
    if masks.shape[1] != fit.coef.shape[1] or margins.shape[1] != fit.coef.shape[0]:
        raise ValueError(
            f"fit has {fit.coef.shape[0]} inputs x {fit.coef.shape[1]} components but the held-out masks "
            f"have {margins.shape[1]} inputs x {masks.shape[1]} components"
        )
    spearman, pearson = lds_scores(fit.predict(masks), margins, margin_ranks)
    spearman[fit.failed] = pearson[fit.failed] = 0.0  # a failed fit carries no information: never scored as one
    return spearman, pearson


def score_method(
    name: str,
    model: int,
    entries: Sequence[str | Path],
    heldout: tuple[np.ndarray, np.ndarray],
    ood: Mapping[float, tuple[np.ndarray, np.ndarray]],
    log: logging.Logger | None = None,
) -> tuple[list[tuple], list[tuple], list[tuple]]:
    """Score every fit of one method (its fit stores, or directories of them: ``entries``) on one model.

    ``heldout``: the held-out ``(masks, margins)``; ``ood``: the same per ablation rate. Returns
    the rows of :func:`compattr.analysis.write_lds_csv` (held-out, then out of distribution) and
    of :func:`compattr.analysis.write_fit_csv`, labelled ``(name, model, draw)``. A prior's fit is
    labelled by ``name`` too: its estimator's point at zero masks. Each fit's scores go to ``log``
    (default: this module's logger).
    """
    log = log or logging.getLogger(__name__)
    scored, scored_ood, diagnostics = [], [], []
    # every fit is scored against the same margins: rank them once
    heldout = (*heldout, rankdata(heldout[1], axis=0))
    ood = {rate: (*rows, rankdata(rows[1], axis=0)) for rate, rows in ood.items()}
    for path in (store for entry in entries for store in fit_stores(entry)):
        fit = load_fit(path)
        n, replicate = fit.attrs["n_train"], fit.attrs.get("replicate", 0)
        passes = fit.attrs.get("passes", n)  # masks, plus a prior's gradient passes
        labels = (name, model, replicate)
        spearman, pearson = score_fit(fit, *heldout)
        constant = predicts_constant(fit, heldout[0])
        calibration = fit.diagnostics.get("calibration", np.full(len(spearman), np.nan))
        # the priors a regression started from (their fits' paths), or a prior's own fit (it records its settings)
        started = fit.attrs.get("prior")
        if isinstance(started, list):
            priors = [Path(p).stem for p in started]
        else:
            priors = [fit.attrs["estimator"]] if started else []
        chosen = fit.diagnostics.get("prior_index", np.zeros(len(spearman), dtype=int))
        prior = [priors[int(k)] if priors else "" for k in chosen]
        log.info(
            "%s n=%d draw %d: mean LDS %.3f, mean Pearson %.3f; %d failed, %d constant",
            name,
            n,
            replicate,
            spearman.mean(),
            pearson.mean(),
            fit.failed.sum(),
            constant.sum(),
        )
        scored += [(*labels, n, passes, i, s, p) for i, (s, p) in enumerate(zip(spearman, pearson, strict=True))]
        per_input = zip(fit.failed, constant, calibration, prior, strict=True)
        diagnostics += [(*labels, n, i, *row) for i, row in enumerate(per_input)]
        for rate, rows in ood.items():
            spearman, pearson = score_fit(fit, *rows)
            log.info("%s n=%d at ablation rate %s: mean LDS %.3f", name, n, rate, spearman.mean())
            pairs = enumerate(zip(spearman, pearson, strict=True))
            scored_ood += [(*labels, n, passes, i, s, p, rate) for i, (s, p) in pairs]
    return scored, scored_ood, diagnostics


def predicts_constant(fit: SavedFit, masks: np.ndarray) -> np.ndarray:
    """Per input, whether the fit's prediction is the same on every one of ``masks`` (up to rounding)."""
    pred = fit.predict(masks)
    return np.ptp(pred, axis=0) <= 1e-9 * np.maximum(np.abs(pred).max(0), 1e-30)


def top_components(
    coef: np.ndarray, components: Sequence[str], inputs: Sequence[Any], k: int = 5
) -> dict[Any, list[tuple[str, float]]]:
    """Each input's ``k`` components with the largest effect in absolute value, as (name, effect) pairs.

    ``coef`` is (n_inputs, n_components); ties keep component order.
    """
    coef = np.atleast_2d(coef)
    if coef.shape != (len(inputs), len(components)):
        raise ValueError(f"coef is {coef.shape} but {len(inputs)} inputs x {len(components)} components are named")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    order = np.argsort(-np.abs(coef), axis=1, kind="stable")[:, :k]
    return {input_id: [(str(components[c]), float(coef[i, c])) for c in order[i]] for i, input_id in enumerate(inputs)}
