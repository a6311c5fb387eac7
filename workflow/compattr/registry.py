"""Names the workflow needs before any job runs, without importing torch: the library's single list.

:mod:`compattr.estimators` and :mod:`compattr.bench` build their registries on
these names (tests check they agree), and the Snakefile reads them here, so
parsing the workflow stays fast.
"""

__all__ = ["PRIOR_ESTIMATORS", "DEFAULT_PRIOR", "TWO_LAYER_ESTIMATORS", "BENCHMARKED"]

#: Registered estimators whose fit starts from a first-order prior (their class has ``uses_prior``).
PRIOR_ESTIMATORS = ("gradient_prior", "gradient_prior_lasso", "relu_collapse_prior")
#: The prior those estimators start from when none is named: attribution patching at the unablated model.
DEFAULT_PRIOR = "atp"
#: Registered estimators that train 2-layer networks (their class derives from ``ReluCollapseRegressor``):
#: the longest fits, which the workflow starts first.
TWO_LAYER_ESTIMATORS = ("relu_collapse", "relu_collapse_raw", "linear_collapse", "relu_net", "relu_collapse_prior")
#: Estimators the fit benchmark times against a scikit-learn reference (:data:`compattr.bench.REFERENCES`).
BENCHMARKED = ("coar", "ridge", "lasso", "relu_collapse", "gradient_prior")
