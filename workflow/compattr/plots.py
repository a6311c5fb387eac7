"""Figures of the study."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from compattr.analysis import LdsTable, bootstrap_curves  # noqa: E402

__all__ = ["plot_lds_vs_ablations"]

LABELS = {"coar": "COAR (least squares)", "ridge": "ridge (CV penalty)", "relu_collapse": "ReLU-collapse"}


def plot_lds_vs_ablations(
    table: LdsTable,
    *,
    targets: Sequence[float] = (),
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    title: str = "",
) -> Figure:
    """Mean LDS (Spearman) and Pearson over inputs against ablated forward passes, one line per estimator.

    Shaded bands are percentile bootstrap intervals over inputs; dotted
    horizontal lines mark the LDS targets of the summary table.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True, layout="constrained")
    for ax, (metric, scores) in zip(
        axes, [("LDS (Spearman)", table.spearman), ("Pearson", table.pearson)], strict=True
    ):
        for k, estimator in enumerate(table.estimators):
            rng = np.random.default_rng(seed)
            mean, low, high, _ = bootstrap_curves(scores[estimator], n_bootstrap, ci, rng)
            sizes = table.sizes[estimator]
            color = f"C{k}"
            ax.plot(sizes, mean, marker="o", ms=4, color=color, label=LABELS.get(estimator, estimator))
            ax.fill_between(sizes, low, high, color=color, alpha=0.2, linewidth=0)
        for target in targets:
            ax.axhline(target, color="0.5", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("ablated forward passes per input (training masks)")
        ax.set_ylabel(f"mean {metric} on held-out masks")
        ax.set_title(metric)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].tick_params(labelleft=True)
    axes[0].legend(loc="lower right", title=f"{ci:.0%} bootstrap CI over inputs", fontsize=8, title_fontsize=8)
    if title:
        fig.suptitle(title)
    return fig
