"""Component models: multi-output linear surrogates fitted on a shared mask matrix.

Every estimator follows scikit-learn's contract: ``__init__`` only stores its
parameters, ``fit(X, Y)`` takes the masks ``X`` (n_masks, n_components) and the
outputs ``Y`` (n_masks,) or (n_masks, n_inputs), sets ``coef_`` (n_inputs,
n_components) and ``intercept_`` (n_inputs,) and returns ``self``. One fit
serves every test input at once: the inputs share the design matrix, so the
work on ``X`` (standardisation, Gram matrix, factorisations, the first layer's
matrix product) is done once for all of them.

One fit protocol: ``fit_blocks(fit_blocks, validation_blocks)`` fits from
iterables of ``(masks, outputs)`` row blocks (a store's chunks, say) without
holding the masks whole, and ``fit`` cuts arrays into such blocks. Estimators
that need only sums of products (``coar``, ``ls_early_stopped``, ``ridge``,
``lasso``, ``gradient_prior``) reduce each block to its :class:`Moments`; the
2-layer ones collect the rows.

Estimators that need a validation split (early stopping, penalty choice) take
it from the *last* ``validation_fraction`` of the rows they are given; the masks
are i.i.d., so this is a random split, and the held-out masks used for scoring
are never seen. Whatever they choose there, they are then refitted on all the
rows they were given; ``coar`` chooses nothing and fits all rows directly.

One family per module: ``_coar`` (least squares), ``_ridge``, ``_lasso``,
``_prior`` (a prior plus a correction), ``_collapse`` (2-layer networks and
their collapse), with ``_base`` (moments, the fit protocol) and ``_rows``
(rows held for the 2-layer fits).
"""

from __future__ import annotations

from typing import Any

from compattr.estimators._base import (
    BLOCK_ROWS,
    ComponentModel,
    InsufficientMemoryError,
    MomentModel,
    Moments,
    sum_moments,
)
from compattr.estimators._coar import CoarRegressor, EarlyStoppedLeastSquaresRegressor
from compattr.estimators._collapse import (
    LinearCollapseRegressor,
    PriorReluCollapseRegressor,
    ReluCollapseRegressor,
    ReluNetRegressor,
    collapse_relu_network,
    fit_together,
    predict_network,
)
from compattr.estimators._lasso import LassoCVRegressor
from compattr.estimators._prior import GradientPriorRegressor
from compattr.estimators._ridge import RidgeCVRegressor

__all__ = [
    "BLOCK_ROWS",
    "ComponentModel",
    "InsufficientMemoryError",
    "MomentModel",
    "Moments",
    "sum_moments",
    "CoarRegressor",
    "EarlyStoppedLeastSquaresRegressor",
    "RidgeCVRegressor",
    "LassoCVRegressor",
    "ReluCollapseRegressor",
    "LinearCollapseRegressor",
    "ReluNetRegressor",
    "GradientPriorRegressor",
    "PriorReluCollapseRegressor",
    "predict_network",
    "collapse_relu_network",
    "fit_together",
    "ESTIMATORS",
    "ESTIMATOR_DEFAULTS",
    "make_estimator",
]

#: Every estimator by its registered name (several names may share a class, with other defaults).
ESTIMATORS: dict[str, type[ComponentModel]] = {
    "coar": CoarRegressor,
    "ls_early_stopped": EarlyStoppedLeastSquaresRegressor,
    "ridge": RidgeCVRegressor,
    "lasso": LassoCVRegressor,
    "relu_collapse": ReluCollapseRegressor,
    "relu_collapse_raw": ReluCollapseRegressor,
    "linear_collapse": LinearCollapseRegressor,
    "relu_net": ReluNetRegressor,
    "gradient_prior": GradientPriorRegressor,
    "gradient_prior_lasso": GradientPriorRegressor,
    "relu_collapse_prior": PriorReluCollapseRegressor,
}
#: Defaults of registered names that share a class with another name.
ESTIMATOR_DEFAULTS: dict[str, dict[str, Any]] = {
    "gradient_prior_lasso": {"correction": "lasso"},
    # The seed's method as written: the raw collapse W2 W1, stopped on the network's own validation loss.
    "relu_collapse_raw": {"calibrate": False, "early_stopping": "network"},
}


def make_estimator(name: str, params: dict[str, Any] | None = None, **overrides: Any) -> ComponentModel:
    """Build the estimator registered as ``name`` with ``params`` (and ``overrides``)."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; known: {sorted(ESTIMATORS)}")
    return ESTIMATORS[name](**{**ESTIMATOR_DEFAULTS.get(name, {}), **(params or {}), **overrides})
