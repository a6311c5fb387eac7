"""compattr: component attribution by perturbation and linear surrogates.

The library behind the compattr Snakemake workflow: models and their ablatable
components, ablation sampling into Zarr stores, multi-output component models
(estimators), linear datamodeling scores (LDS), summaries and figures.
"""

__version__ = "0.3.0"
