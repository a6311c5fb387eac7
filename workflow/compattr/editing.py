"""Attributions judged by what they do: edit the model by ablating the components they rank first.

A component model predicts, for input ``t``, the output under ablation mask ``m``
as ``coef[t] @ m + intercept[t]``: ablating a set ``S`` changes it by
``coef[t, S].sum()``. Two edits (COAR, section 5):

- **top-k ablation** (:func:`top_k_ablation`): per input, ablate the ``k`` components
  whose predicted change is most negative (the largest predicted margin drop), run the
  model, and compare the true change with the predicted one; the prediction flips when
  the margin (correct class minus the best other) falls below zero. :func:`random_orders`
  gives the reference of ``k`` components drawn at random.
- **fixing a mistake** (:func:`fix_ablation`): for a misclassified input (chosen by
  :func:`choose_mistakes`), ablate the ``k`` components whose predicted change is most
  positive (the largest predicted rise of the margin); the edit fixes it when the margin
  becomes positive. It must be local: score the edited model on other images too.
- **forgetting a class** (:func:`class_forgetting_masks`): average the attributions of a
  class's inputs and ablate the ``k`` components that lower them most, one mask for the
  whole model; :func:`class_accuracy` then scores it on other images of every class.

Every edit is one mask row, evaluated in batches by the same ablatable network as
sampling (:meth:`compattr.sampling.ComponentMarginEvaluator.paired` for per-input edits).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats
from tqdm import tqdm

__all__ = [
    "predicted_order",
    "top_k_masks",
    "top_k_ablation",
    "random_orders",
    "fixing_order",
    "fix_ablation",
    "accuracy_elsewhere",
    "random_fix_rows",
    "choose_mistakes",
    "class_forgetting_masks",
    "class_accuracy",
    "scoring_images",
    "TOP_K_COLUMNS",
    "FORGET_COLUMNS",
    "FIX_COLUMNS",
    "top_k_rows",
    "fix_rows",
    "editing_summary",
    "forgetting_summary",
    "fixing_summary",
]

#: Columns of the top-k table: one row per method, model, fit, input and k.
TOP_K_COLUMNS = (
    "estimator",
    "model",
    "replicate",
    "n_train",
    "passes",
    "input",
    "k",
    "predicted_change",
    "true_change",
    "flipped",
)
#: Columns of the forgetting table: one row per method, model, class and k (k = 0: the unedited model).
FORGET_COLUMNS = ("estimator", "model", "n_train", "passes", "target", "k", "class_accuracy", "other_accuracy")

#: Columns of the fixing table: one row per method, model, fit, misclassified input and k. ``other_accuracy``
#: (the edited model's accuracy on other images) is measured at each method's largest train size (NaN
#: elsewhere); method ``random`` at k = 0 holds the unedited model's.
FIX_COLUMNS = (
    "estimator",
    "model",
    "n_train",
    "passes",
    "input",
    "k",
    "predicted_change",
    "true_change",
    "fixed",
    "other_accuracy",
)

#: ``evaluate(masks, inputs)``: the output of input ``inputs[r]`` under mask ``masks[r]``, per row.
PairedEvaluator = Callable[[np.ndarray, np.ndarray], np.ndarray]


def predicted_order(coef: np.ndarray) -> np.ndarray:
    """Per input (row), the components by predicted change when ablated, most negative first.

    Components with a non-finite coefficient (an input whose fit failed) come last.
    """
    key = np.asarray(coef, dtype=np.float64)
    return np.argsort(np.where(np.isfinite(key), key, np.inf), axis=1, kind="stable")


def top_k_masks(order: np.ndarray, k: int) -> np.ndarray:
    """Bool masks ``(n_inputs, n_components)``: row ``t`` ablates the first ``k`` components of ``order[t]``."""
    n_inputs, n_components = order.shape
    if not 0 <= k <= n_components:
        raise ValueError(f"k = {k} components to ablate, but there are {n_components}")
    masks = np.zeros((n_inputs, n_components), dtype=bool)
    np.put_along_axis(masks, order[:, :k], True, axis=1)
    return masks


def top_k_ablation(
    evaluate: PairedEvaluator,
    coef: np.ndarray,
    ks: Sequence[int],
    unablated: np.ndarray,
    order: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Ablate, per input, the top ``k`` components of ``order`` (default: by ``coef``) for every ``k``.

    Parameters
    ----------
    evaluate : callable
        ``evaluate(masks, inputs)``: true outputs, one per (mask row, input) pair.
    coef : ndarray of shape (n_inputs, n_components)
        The component model's effects (the change of each input's output when a component is ablated).
    ks : sequence of int
        Numbers of components to ablate.
    unablated : ndarray of shape (n_inputs,)
        Each input's output with nothing ablated.
    order : ndarray of shape (n_inputs, n_components), optional
        The components per input in the order they are ablated (e.g. :func:`random_orders`).

    Returns
    -------
    dict of ndarrays of shape (len(ks), n_inputs)
        ``predicted_change`` (the sum of ``coef`` over the ablated components),
        ``true_change`` (edited output minus ``unablated``) and ``flipped``
        (the output was positive and is negative after the edit).
    """
    coef = np.asarray(coef, dtype=np.float64)
    unablated = np.asarray(unablated, dtype=np.float64)
    if unablated.shape != coef.shape[:1]:
        raise ValueError(f"{coef.shape[0]} inputs in coef but {unablated.shape} unablated outputs")
    order = predicted_order(coef) if order is None else order
    inputs = np.arange(coef.shape[0])
    predicted, true = [], []
    for k in ks:
        predicted.append(np.take_along_axis(coef, order[:, :k], axis=1).sum(axis=1))
        true.append(np.asarray(evaluate(top_k_masks(order, k), inputs), dtype=np.float64) - unablated)
    true = np.array(true)
    return {
        "predicted_change": np.array(predicted),
        "true_change": true,
        "flipped": (unablated > 0) & (unablated + true < 0),
    }


def random_orders(n_inputs: int, n_components: int, rng: np.random.Generator) -> np.ndarray:
    """A random order of the components per input: the reference of ``k`` components drawn at random."""
    return rng.permuted(np.tile(np.arange(n_components), (n_inputs, 1)), axis=1)


def fixing_order(coef: np.ndarray) -> np.ndarray:
    """Per input, the components by predicted change when ablated, most positive (largest rise) first."""
    return predicted_order(-np.asarray(coef, dtype=np.float64))


def fix_ablation(
    evaluate: PairedEvaluator,
    coef: np.ndarray,
    ks: Sequence[int],
    unablated: np.ndarray,
    order: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Ablate, per misclassified input, the ``k`` components predicted to raise its margin most.

    As :func:`top_k_ablation` (default order :func:`fixing_order`), but ``fixed`` replaces
    ``flipped``: the margin was not positive and is positive after the edit.
    """
    order = fixing_order(coef) if order is None else order
    result = top_k_ablation(evaluate, coef, ks, unablated, order)
    del result["flipped"]
    before = np.asarray(unablated, dtype=np.float64)
    result["fixed"] = (before <= 0) & (before + result["true_change"] > 0)
    return result


def accuracy_elsewhere(
    evaluate: Callable[[np.ndarray], np.ndarray], order: np.ndarray, ks: Sequence[int]
) -> np.ndarray:
    """Accuracy on other images of each input's edit (its first ``k`` of ``order``): ``(len(ks), n_inputs)``.

    ``evaluate(masks)`` returns the margins ``(n_masks, n_images)`` of the images the edits are scored on.
    """
    return np.array([(np.asarray(evaluate(top_k_masks(order, k))) > 0).mean(axis=1) for k in ks])


def random_fix_rows(
    evaluate: PairedEvaluator,
    elsewhere: Callable[[np.ndarray], np.ndarray],
    n_components: int,
    ks: Sequence[int],
    unablated: np.ndarray,
    draws: int,
    seed: int,
    labels: Sequence,
) -> list[tuple]:
    """The fixing table's reference: per mistake, ``k`` components drawn at random (mean over ``draws``).

    Rows as :func:`fix_rows` gives them under ``labels`` (estimator .. passes), after
    rows for k = 0, the unedited model (``elsewhere``: as in :func:`accuracy_elsewhere`).
    It needs no fit: the workflow computes it alongside the fits.
    """
    unablated = np.asarray(unablated, dtype=np.float64)
    n_inputs = len(unablated)
    rng = np.random.default_rng(seed)
    no_effects = np.zeros((n_inputs, n_components))
    edits = []
    for _ in tqdm(range(draws), desc="random reference", unit="draw"):
        order = random_orders(n_inputs, n_components, rng)
        edit = fix_ablation(evaluate, no_effects, ks, unablated, order)
        edits.append({**edit, "other": accuracy_elsewhere(elsewhere, order, ks)})
    result = {key: np.mean([edit[key] for edit in edits], axis=0) for key in ("true_change", "fixed", "other")}
    result["predicted_change"] = np.full_like(result["true_change"], np.nan)
    unedited = (np.asarray(elsewhere(np.zeros((1, n_components), dtype=bool))) > 0).mean()
    rows = [(*labels, i, 0, np.nan, 0.0, False, unedited) for i in range(n_inputs)]
    return rows + fix_rows(labels, ks, result, result.pop("other"))


def choose_mistakes(margins: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded choice of at most ``n`` positions (sorted) among the inputs whose margin is not positive.

    All of the misclassified ones when there are at most ``n``; an error when there is none.
    """
    wrong = np.flatnonzero(np.asarray(margins) <= 0)
    if not len(wrong):
        raise ValueError(f"the model classifies all {len(margins)} candidate images correctly: no mistake to fix")
    return np.sort(np.random.default_rng(seed).choice(wrong, size=min(n, len(wrong)), replace=False))


def class_forgetting_masks(coef: np.ndarray, labels: np.ndarray, target: int, ks: Sequence[int]) -> np.ndarray:
    """Masks ``(len(ks), n_components)`` that ablate the ``k`` components lowering class ``target`` most.

    The attributions of the inputs labelled ``target`` are averaged (non-finite rows left
    out) and the components with the most negative mean effect are ablated. Only those
    inputs choose the components: score the masks on other images (:func:`class_accuracy`).
    """
    chosen = np.asarray(coef, dtype=np.float64)[np.asarray(labels) == target]
    chosen = chosen[np.isfinite(chosen).all(axis=1)]
    if not len(chosen):
        raise ValueError(f"no input of class {target} with finite attributions to choose components from")
    order = predicted_order(chosen.mean(axis=0, keepdims=True))
    return np.concatenate([top_k_masks(order, k) for k in ks])


def class_accuracy(margins: np.ndarray, labels: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy on class ``target`` and on the other classes, per row of ``margins`` (masks x images).

    An image counts as correct when its margin (correct class minus the best other) is positive.
    """
    correct = np.asarray(margins) > 0
    of_class = np.asarray(labels) == target
    if of_class.all() or not of_class.any():
        raise ValueError(f"class {target} needs images of its own and of other classes to be scored")
    return correct[:, of_class].mean(axis=1), correct[:, ~of_class].mean(axis=1)


def scoring_images(n_images: int, exclude: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded choice of at most ``n`` image indices (sorted) among ``n_images``, none of them in ``exclude``.

    The images an edit is scored on: never those whose attributions chose the components.
    All of the others when fewer than ``n`` are left.
    """
    free = np.setdiff1d(np.arange(n_images), np.asarray(exclude, dtype=np.int64))
    if not len(free):
        raise ValueError(f"all {n_images} images are attributed inputs: none is left to score an edit on")
    return np.sort(np.random.default_rng(seed).choice(free, size=min(n, len(free)), replace=False))


def top_k_rows(labels: Sequence, ks: Sequence[int], result: dict[str, np.ndarray]) -> list[tuple]:
    """Rows of the top-k table from a :func:`top_k_ablation` result: ``labels`` (estimator .. passes) first."""
    rows = []
    for j, k in enumerate(ks):
        for i in range(result["true_change"].shape[1]):
            cells = (result["predicted_change"][j, i], result["true_change"][j, i], result["flipped"][j, i])
            rows.append((*labels, i, k, *cells))
    return rows


def fix_rows(
    labels: Sequence, ks: Sequence[int], result: dict[str, np.ndarray], other_accuracy: np.ndarray | None = None
) -> list[tuple]:
    """Rows of the fixing table from a :func:`fix_ablation` result; ``other_accuracy`` is ``(len(ks), n_inputs)``."""
    n_inputs = result["true_change"].shape[1]
    other = np.full((len(ks), n_inputs), np.nan) if other_accuracy is None else np.asarray(other_accuracy)
    rows = []
    for j, k in enumerate(ks):
        for i in range(n_inputs):
            cells = (result["predicted_change"][j, i], result["true_change"][j, i], result["fixed"][j, i])
            rows.append((*labels, i, k, *cells, other[j, i]))
    return rows


def editing_summary(
    top_k: Sequence[dict[str, str]], lds: dict[tuple[str, int], float], k: int
) -> tuple[list[dict[str, object]], float, int]:
    """Per method and train size: mean true and predicted drop and flip rate at ``k`` (draw 0, every model).

    ``lds`` maps (method, passes) to its mean LDS (the LDS table's sizes are passes). Returns
    the rows, the Spearman correlation across (method, size) between mean LDS and mean true
    drop at ``k`` (NaN with fewer than 3 pairs), and the number of pairs it is computed on.
    """
    values = {
        "true_drop": lambda row: -float(row["true_change"]),
        "predicted_drop": lambda row: -float(row["predicted_change"]),
        "flipped": lambda row: float(row["flipped"]),
    }
    rows = _per_fit_means(top_k, k, values, lds)
    return (rows, *_lds_correlation(rows, "true_drop"))


def _per_fit_means(
    table: Sequence[dict[str, str]],
    k: int,
    values: dict[str, Callable[[dict[str, str]], float]],
    lds: dict[tuple[str, int], float],
) -> list[dict[str, object]]:
    """Per method, train size and passes: the mean of each of ``values`` over the rows at ``k``, and the LDS.

    Means leave NaN out (NaN when a value is NaN in every row).
    """
    cells: dict[tuple[str, int, int], list[list[float]]] = {}
    for row in table:
        if int(row["k"]) == k:
            key = (row["estimator"], int(row["n_train"]), int(row["passes"]))
            cells.setdefault(key, []).append([value(row) for value in values.values()])
    rows = []
    for (method, n, passes), cell in sorted(cells.items()):
        means = [np.nanmean(column) if np.isfinite(column).any() else np.nan for column in np.array(cell).T]
        rows.append(
            {
                "method": method,
                "n_train": n,
                "passes": passes,
                **dict(zip(values, means, strict=True)),
                "lds": lds.get((method, passes), np.nan),
            }
        )
    return rows


def _lds_correlation(rows: Sequence[dict[str, object]], key: str) -> tuple[float, int]:
    """Spearman correlation between ``lds`` and ``key`` over the rows where both are finite, and their number."""
    paired = [(r["lds"], r[key]) for r in rows if np.isfinite(r["lds"]) and np.isfinite(r[key])]
    rho = stats.spearmanr(*zip(*paired, strict=True)).statistic if len(paired) >= 3 else float("nan")
    return float(rho), len(paired)


def forgetting_summary(forget: Sequence[dict[str, str]], k: int) -> list[dict[str, object]]:
    """Per method: mean accuracy on the forgotten class and on the others, unedited (k = 0) and at ``k``.

    Means over classes and models; ``k`` is the grid's largest value up to ``k`` present in the table.
    """
    present = sorted({int(row["k"]) for row in forget if int(row["k"]) > 0})
    k = max([kk for kk in present if kk <= k] or present[:1])
    cells: dict[str, dict[int, list[tuple[float, float]]]] = {}
    for row in forget:
        if int(row["k"]) in (0, k):
            cell = (float(row["class_accuracy"]), float(row["other_accuracy"]))
            cells.setdefault(row["estimator"], {}).setdefault(int(row["k"]), []).append(cell)
    rows = []
    for method, by_k in cells.items():
        (class_before, others_before), (class_after, others_after) = (np.mean(by_k[kk], axis=0) for kk in (0, k))
        rows.append(
            {
                "method": method,
                "class_before": class_before,
                "class_after": class_after,
                "others_before": others_before,
                "others_after": others_after,
            }
        )
    return rows


def fixing_summary(
    fix: Sequence[dict[str, str]], lds: dict[tuple[str, int], float], k: int
) -> tuple[list[dict[str, object]], float, int]:
    """Per method and train size: fraction of mistakes fixed at ``k``, mean true and predicted rise, accuracy elsewhere.

    As :func:`editing_summary`: ``lds`` maps (method, passes) to mean LDS; returns the rows, the
    Spearman correlation across (method, size) between mean LDS and the fraction fixed, and its pairs.
    ``other_accuracy`` is the edited model's mean accuracy on other images (largest sizes only).
    """
    values = {
        name: lambda row, column=column: float(row[column])
        for name, column in (
            ("fixed", "fixed"),
            ("true_rise", "true_change"),
            ("predicted_rise", "predicted_change"),
            ("other_accuracy", "other_accuracy"),
        )
    }
    rows = _per_fit_means(fix, k, values, lds)
    return (rows, *_lds_correlation(rows, "fixed"))
