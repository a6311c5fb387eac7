"""compattr: component attribution by perturbation and linear surrogates.

Which components (convolution filters, linear neurons) of a network does each
of its outputs depend on? :class:`ComponentAttributor` ablates random sets of
them, fits a linear component model per input, and labels the result;
:func:`lds` scores it on held-out masks. The library also drives the compattr
Snakemake workflow: models, ablation sampling into Zarr stores, multi-output
estimators, linear datamodeling scores (LDS), summaries and figures.
"""

__version__ = "0.4.0"

from compattr.attributor import Attribution, ComponentAttributor, Samples, lds  # noqa: E402

__all__ = ["ComponentAttributor", "Attribution", "Samples", "lds", "__version__"]
