"""Linear datamodeling score (LDS): how well predicted outputs rank the true ones.

For one test input, the LDS is the Spearman rank correlation, over held-out
masks, between the outputs a component model predicts and the outputs the
ablated model really gives (Ilyas et al. 2022; Shah et al. 2024). COAR's own
evaluation code reports the Pearson correlation instead; both are computed.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

__all__ = ["columnwise_pearson", "lds_scores"]


def columnwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of matching columns of ``a`` and ``b`` (n, T) -> (T,).

    A column with no variance on either side carries no ranking information and
    scores 0 (rather than NaN), so averages over inputs stay defined.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two (n, T) arrays of one shape, got {a.shape} and {b.shape}")
    a = a - a.mean(0)
    b = b - b.mean(0)
    denom = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    num = (a * b).sum(0)
    tiny = denom <= 1e-12 * max(float(denom.max(initial=0.0)), 1.0)
    return np.where(tiny, 0.0, num / np.where(tiny, 1.0, denom))


#: Fewest masks :func:`lds_scores` correlates over (with fewer, a correlation is +-1 or 0 whatever the fit).
MIN_MASKS = 3


def lds_scores(
    predicted: np.ndarray, true: np.ndarray, true_ranks: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-input Spearman (the LDS) and Pearson correlations between predicted and true outputs.

    Parameters
    ----------
    predicted, true : ndarray of shape (n_masks, n_inputs)
    true_ranks : ndarray of shape (n_masks, n_inputs), optional
        ``scipy.stats.rankdata(true, axis=0)``, for a caller that scores many predictions
        against the same outputs (ranking them is half the work).

    Returns
    -------
    spearman, pearson : ndarray of shape (n_inputs,)
    """
    predicted = np.asarray(predicted, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    if predicted.shape != true.shape or predicted.ndim != 2:
        raise ValueError(f"predicted {predicted.shape} and true {true.shape} outputs must both be (n_masks, n_inputs)")
    if len(true) < MIN_MASKS:
        raise ValueError(f"{len(true)} masks: a rank correlation over fewer than {MIN_MASKS} is meaningless (+-1 or 0)")
    if true_ranks is None:
        true_ranks = rankdata(true, axis=0)
    elif np.shape(true_ranks) != true.shape:
        raise ValueError(f"true_ranks {np.shape(true_ranks)} must have the true outputs' shape {true.shape}")
    spearman = columnwise_pearson(rankdata(predicted, axis=0), true_ranks)
    return spearman, columnwise_pearson(predicted, true)
