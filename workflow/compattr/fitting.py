"""Fit component models on rows of a store (every train size and disjoint draw), save them, load them, score them."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from tqdm import tqdm

from compattr.estimators import make_estimator, predict_network
from compattr.sampling import iter_rows, write_coordinates
from compattr.scores import lds_scores

__all__ = [
    "DIAGNOSTICS",
    "SavedFit",
    "fit_on_store",
    "save_fit",
    "save_linear_fit",
    "load_fit",
    "score_fit",
    "replicate_starts",
    "fit_draws",
    "fit_stores",
    "predicts_constant",
    "load_priors",
    "top_components",
]


#: Per-input diagnostics a fit store keeps when its estimator has them: the chosen penalty, the kept
#: step, the validation scores at the choice, the chosen prior among several, the prior's fitted scale,
#: whether the fit failed (kept its initial state), and the least-squares factor of a calibrated collapse.
DIAGNOSTICS = (
    "alpha",
    "n_iter",
    "validation_mse",
    "validation_spearman",
    "prior_index",
    "scale",
    "failed",
    "calibration",
)


@dataclass
class SavedFit:
    """A component model read back from its Zarr group.

    ``coef`` (input x component) and ``intercept`` (input) always; ``network``
    (the arrays of :func:`compattr.estimators.predict_network`) for estimators
    whose predictor is a network.
    """

    coef: np.ndarray
    intercept: np.ndarray
    attrs: dict[str, Any]
    network: dict[str, np.ndarray] | None = None
    diagnostics: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def failed(self) -> np.ndarray:
        """Per input, whether the fit failed (returned its initial state); all False when not recorded."""
        return self.diagnostics.get("failed", np.zeros(len(self.intercept), dtype=bool)).astype(bool)

    def predict(self, masks: np.ndarray) -> np.ndarray:
        """Predicted outputs (n_masks, n_inputs) for bool or 0/1 masks (n_masks, n_components)."""
        if self.network is not None:
            return predict_network(self.network, masks)
        return np.asarray(masks, dtype=np.float32) @ self.coef.T + self.intercept


def load_priors(paths: str | Path | Sequence[str | Path] | None) -> tuple[np.ndarray | None, int]:
    """The coefficients of one or more prior fits, and their cost in passes together.

    One path gives its ``coef`` (n_inputs, n_components); several give them
    stacked (n_priors, n_inputs, n_components), candidates an estimator chooses
    among. The cost is the sum of the fits' ``passes`` attributes (each prior
    is computed). None or no paths: ``(None, 0)``.
    """
    if paths is None or isinstance(paths, (str, Path)):
        paths = [] if paths is None else [paths]
    fits = [load_fit(path) for path in paths]
    if not fits:
        return None, 0
    passes = sum(int(fit.attrs["passes"]) for fit in fits)
    if len(fits) == 1:
        return fits[0].coef, passes
    return np.stack([fit.coef for fit in fits]), passes


def replicate_starts(n_train: int, n_masks: int, replicates: int) -> list[int]:
    """First rows of the disjoint draws of ``n_train`` training masks: as many of ``replicates`` as fit in ``n_masks``.

    Draw ``r`` is rows ``r * n_train`` to ``(r + 1) * n_train``; masks are i.i.d.,
    so disjoint rows are independent draws. Draw 0 is the first ``n_train`` rows.
    """
    if n_train < 1 or n_train > n_masks:
        raise ValueError(f"cannot draw {n_train} training masks from a store of {n_masks}")
    return [r * n_train for r in range(min(replicates, n_masks // n_train))]


def fit_on_store(
    store: str | Path,
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
    model = make_estimator(estimator, params, device=str(device))
    if model.uses_prior and prior is None:
        raise ValueError(f"estimator {estimator!r} needs a prior attribution (input x component); none was given")
    if not model.uses_prior and prior is not None:
        raise ValueError(f"estimator {estimator!r} takes no prior")
    fit_params = {"prior": prior} if model.uses_prior else {}
    begin = time.perf_counter()
    stop = start + n_train
    split = stop - model.n_validation(n_train)
    model.fit_blocks(iter_rows(store, start, split), iter_rows(store, split, stop), **fit_params)
    return model, time.perf_counter() - begin


def fit_draws(
    store: str | Path,
    sizes: Sequence[int],
    replicates: int,
    estimator: str,
    params: dict[str, Any],
    device: str | torch.device = "cpu",
    prior: np.ndarray | None = None,
) -> Iterator[tuple[int, int, Any, float]]:
    """Fit ``estimator`` at every train size on every disjoint draw of masks (:func:`replicate_starts`).

    Yields ``(n_train, replicate, fitted estimator, seconds)``, with a progress bar
    on stderr. One process serves every fit: most fits take less time than
    starting a process.
    """
    n_masks = zarr.open_group(str(store), mode="r")["masks"].shape[0]
    draws = [(n, r, start) for n in sizes for r, start in enumerate(replicate_starts(n, n_masks, replicates))]
    for n, r, start in tqdm(draws, desc=f"fitting {estimator}", unit="fit"):
        model, seconds = fit_on_store(store, n, estimator, params, device, prior=prior, start=start)
        yield n, r, model, seconds


def fit_stores(path: str | Path) -> list[Path]:
    """The fit stores at ``path``: itself if it is one, else its ``n<N>.r<R>.zarr`` stores by size and draw."""
    path = Path(path)
    if (path / "zarr.json").exists():
        return [path]
    stores = []
    for store in path.glob("n*.r*.zarr"):
        n, r = store.name.removesuffix(".zarr").removeprefix("n").split(".r")
        stores.append((int(n), int(r), store))
    if not stores:
        raise ValueError(f"{path} holds no fit stores (n<N>.r<R>.zarr)")
    return [store for *_, store in sorted(stores)]


def save_linear_fit(
    path: str | Path,
    coef: np.ndarray,
    intercept: np.ndarray,
    attributes: dict[str, Any],
    coords: dict[str, Any] | None = None,
) -> zarr.Group:
    """Write a linear component model: ``coef`` (input x component) and ``intercept`` (input).

    ``coords`` (``components``, ``inputs``, ``labels``, as
    :func:`compattr.sampling.read_coordinates` gives them) label the axes.
    """
    group = zarr.open_group(str(path), mode="w", attributes=attributes)
    coef = np.atleast_2d(coef)
    group.create_array("coef", data=coef.astype(np.float32), dimension_names=("input", "component"))
    group.create_array("intercept", data=np.atleast_1d(intercept).astype(np.float32), dimension_names=("input",))
    if coords is not None:
        if (len(coords["inputs"]), len(coords["components"])) != coef.shape:
            raise ValueError(
                f"coordinates name {len(coords['inputs'])} inputs x {len(coords['components'])} components "
                f"but coef is {coef.shape[0]} x {coef.shape[1]}"
            )
        write_coordinates(group, **coords)
    return group


def save_fit(path: str | Path, model: Any, attributes: dict[str, Any], coords: dict[str, Any] | None = None) -> None:
    """Write a fitted estimator: its linear model, its network if it predicts with one, and diagnostics.

    Per-input diagnostics the estimator exposes (:data:`DIAGNOSTICS`, with a
    trailing underscore) are kept as arrays over inputs; ``coords`` as for
    :func:`save_linear_fit`.
    """
    group = save_linear_fit(path, model.coef_, model.intercept_, attributes, coords)
    for name in (f"{key}_" for key in DIAGNOSTICS):
        if hasattr(model, name):
            group.create_array(name.rstrip("_"), data=np.atleast_1d(getattr(model, name)), dimension_names=("input",))
    if hasattr(model, "network_"):
        net = group.create_group("network")
        for key, value in model.network_.items():
            net.create_array(key, data=np.asarray(value, dtype=np.float32))


def load_fit(path: str | Path) -> SavedFit:
    """Read a fit written by :func:`save_fit` or :func:`save_linear_fit`."""
    group = zarr.open_group(str(path), mode="r")
    names = {name for name, _ in group.arrays()}
    network = None
    if "network" in {name for name, _ in group.groups()}:
        network = {name: array[...] for name, array in group["network"].arrays()}
    diagnostics = {name: group[name][:] for name in DIAGNOSTICS if name in names}
    return SavedFit(group["coef"][:], group["intercept"][:], dict(group.attrs), network, diagnostics)


def score_fit(fit: SavedFit, masks: np.ndarray, margins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-input Spearman (LDS) and Pearson correlations of a fit's predictions on held-out masks.

    Inputs whose fit failed (``fit.failed``) score 0, as a constant prediction does.

    ``masks`` (n_masks, n_components) and ``margins`` (n_masks, n_inputs) as
    :func:`compattr.sampling.read_rows` returns them, read once for every fit scored.
    """
    if masks.shape[1] != fit.coef.shape[1] or margins.shape[1] != fit.coef.shape[0]:
        raise ValueError(
            f"fit has {fit.coef.shape[0]} inputs x {fit.coef.shape[1]} components but the held-out masks "
            f"have {margins.shape[1]} inputs x {masks.shape[1]} components"
        )
    spearman, pearson = lds_scores(fit.predict(masks), margins)
    spearman[fit.failed] = pearson[fit.failed] = 0.0  # a failed fit carries no information: never scored as one
    return spearman, pearson


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
