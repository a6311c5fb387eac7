"""compattr: component attribution by perturbation and linear surrogates.

Which components (convolution filters, linear neurons) of a network does each
of its outputs depend on? :class:`ComponentAttributor` ablates random sets of
them, fits a linear component model per input, and labels the result;
:func:`lds` scores it on held-out masks. The library also drives the compattr
Snakemake workflow: models, ablation sampling into Zarr stores, multi-output
estimators, linear datamodeling scores (LDS), summaries and figures.
"""

from typing import Any

from compattr._version import __version__

__all__ = ["ComponentAttributor", "Attribution", "Samples", "lds", "__version__"]


def __getattr__(name: str) -> Any:
    """The front door, imported on first use: ``import compattr`` alone does not import torch."""
    if name in ("ComponentAttributor", "Attribution", "Samples", "lds"):
        from compattr import attributor

        return getattr(attributor, name)
    raise AttributeError(f"module 'compattr' has no attribute {name!r}")
