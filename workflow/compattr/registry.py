"""Names the workflow needs before any job runs, without importing torch: the library's single list.

:mod:`compattr.estimators` and :mod:`compattr.bench` build their registries on
these names (tests check they agree), and the Snakefile reads them here, so
parsing the workflow stays fast.
"""

from typing import Any

__all__ = [
    "PRIOR_ESTIMATORS",
    "DEFAULT_PRIOR",
    "TWO_LAYER_ESTIMATORS",
    "NETWORKS",
    "BENCHMARKED",
    "training_groups",
]

#: Registered estimators whose fit starts from a first-order prior (their class has ``uses_prior``).
PRIOR_ESTIMATORS = ("gradient_prior", "gradient_prior_lasso", "relu_collapse_prior")
#: The prior those estimators start from when none is named: attribution patching at the unablated model.
DEFAULT_PRIOR = "atp"
#: Registered estimators that train 2-layer networks (their class derives from ``ReluCollapseRegressor``):
#: the longest fits, which the workflow starts first.
TWO_LAYER_ESTIMATORS = ("relu_collapse", "relu_collapse_raw", "linear_collapse", "relu_net", "relu_collapse_prior")
#: Estimators the fit benchmark times against a scikit-learn reference (:data:`compattr.bench.REFERENCES`).
BENCHMARKED = ("coar", "ridge", "lasso", "relu_collapse", "gradient_prior")
#: The networks each 2-layer estimator trains (its class's activation and start): estimators of one
#: kind with the same settings but for ``early_stopping`` and ``calibrate`` train the same networks
#: (their class's ``_training``), and :func:`compattr.estimators.fit_together` fits them with one training.
NETWORKS = {
    "relu_collapse": "relu",
    "relu_collapse_raw": "relu",
    "relu_net": "relu",
    "linear_collapse": "identity",
    "relu_collapse_prior": "relu from a prior",
}
#: Settings that choose and read out the networks, not train them.
_READOUT_SETTINGS = ("early_stopping", "calibrate")


def training_groups(estimators: dict[str, dict[str, Any]]) -> list[list[str]]:
    """The names of ``estimators`` ({name: settings, every one given}) in groups that train together, in order.

    2-layer estimators that train the same networks (:data:`NETWORKS`, and equal settings
    but for ``early_stopping`` and ``calibrate``) form one group, fitted with one training;
    every other estimator is a group of its own. Settings are compared as given (the
    workflow's, with the schema's defaults filled in): one left out is not one set to its default.
    """
    groups: dict[Any, list[str]] = {}
    for name, settings in estimators.items():
        key: Any = name
        if name in NETWORKS and settings.get("early_stopping") != "none":
            trained = {k: v for k, v in settings.items() if k not in _READOUT_SETTINGS}
            key = (NETWORKS[name], repr(sorted(trained.items())))
        groups.setdefault(key, []).append(name)
    return list(groups.values())
