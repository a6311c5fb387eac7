"""Editing with attributions: top-k ablation, the random reference, fixing mistakes, forgetting a class."""

import numpy as np
import pytest
import torch
from torch import nn

from compattr.baselines import leave_one_out
from compattr.data import ImageSplit, with_noise
from compattr.discovery import conv_components
from compattr.editing import (
    FIX_COLUMNS,
    accuracy_elsewhere,
    choose_mistakes,
    class_accuracy,
    class_forgetting_masks,
    editing_summary,
    fix_ablation,
    fix_rows,
    fixing_order,
    fixing_summary,
    forgetting_summary,
    predicted_order,
    random_fix_rows,
    random_orders,
    scoring_images,
    top_k_ablation,
    top_k_masks,
)
from compattr.masks import shard_masks
from compattr.plots import plot_fixing
from compattr.reports import summary_section
from compattr.sampling import ComponentMarginEvaluator


def _linear_margin_evaluator(n_inputs=6):
    """Conv (no bias) -> linear head over two classes: the margin is linear in the conv's 8 channels."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(8 * 5 * 5, 2)).eval()
    images, labels = torch.randn(n_inputs, 1, 5, 5), torch.randint(0, 2, (n_inputs,))
    return ComponentMarginEvaluator(model, conv_components(model), images, labels, batch_size=4)


def test_paired_evaluation_equals_each_input_under_its_own_mask():
    evaluator = _linear_margin_evaluator()
    masks = shard_masks(0, 0, 10, 8, 0.4)
    inputs = np.array([0, 5, 2, 2, 1, 3, 4, 0, 5, 1])
    every = evaluator(masks)  # (masks, inputs)
    np.testing.assert_allclose(evaluator.paired(masks, inputs), every[np.arange(10), inputs], rtol=1e-5, atol=1e-5)


def test_when_the_margin_is_linear_the_true_drop_is_the_predicted_one_for_every_k():
    evaluator = _linear_margin_evaluator()
    coef, intercept = leave_one_out(evaluator, 8)  # exact for a linear margin
    ks = [0, 1, 2, 5, 8]
    result = top_k_ablation(evaluator.paired, coef, ks, intercept)
    np.testing.assert_allclose(result["true_change"], result["predicted_change"], rtol=1e-4, atol=1e-4)
    for k, predicted in zip(ks, result["predicted_change"], strict=True):  # the k most negative effects
        np.testing.assert_allclose(predicted, np.sort(coef, axis=1)[:, :k].sum(axis=1))
    np.testing.assert_allclose(result["predicted_change"][-1], coef.sum(axis=1))  # k = all: every component
    assert result["flipped"].dtype == bool and not result["flipped"][0].any()


def test_a_random_order_gives_the_random_line_in_expectation():
    evaluator = _linear_margin_evaluator()
    coef, intercept = leave_one_out(evaluator, 8)
    rng = np.random.default_rng(0)
    draws = np.array(
        [
            top_k_ablation(evaluator.paired, coef, [3], intercept, random_orders(6, 8, rng))["true_change"][0]
            for _ in range(400)
        ]
    )
    expected = 3 / 8 * coef.sum(axis=1)  # a random 3 of 8 components: each is in with probability 3/8
    spread = draws.std(axis=0) / np.sqrt(len(draws))
    assert (np.abs(draws.mean(axis=0) - expected) < 4 * spread + 1e-6).all()


def test_order_puts_the_largest_predicted_drop_first_and_failed_inputs_last():
    coef = np.array([[0.5, -2.0, -1.0, np.nan], [1.0, 2.0, 3.0, -0.1]])
    np.testing.assert_array_equal(predicted_order(coef), [[1, 2, 0, 3], [3, 0, 1, 2]])
    np.testing.assert_array_equal(top_k_masks(predicted_order(coef), 2), [[0, 1, 1, 0], [1, 0, 0, 1]])


def test_forgetting_chooses_from_the_class_inputs_alone_and_is_scored_elsewhere():
    rng = np.random.default_rng(1)
    coef, labels = rng.normal(size=(12, 9)), np.repeat([0, 1, 2], 4)
    masks = class_forgetting_masks(coef, labels, 1, [1, 3])
    other = coef.copy()
    other[labels != 1] = rng.normal(size=(8, 9))  # the other classes' attributions do not matter
    np.testing.assert_array_equal(class_forgetting_masks(other, labels, 1, [1, 3]), masks)
    mean = coef[labels == 1].mean(axis=0)
    assert masks[1].sum() == 3 and set(np.flatnonzero(masks[1])) == set(np.argsort(mean)[:3])
    inputs = np.array([3, 7, 40, 41])
    scored = scoring_images(50, inputs, 20, seed=0)
    assert len(scored) == 20 and not set(scored) & set(inputs)
    np.testing.assert_array_equal(scored, scoring_images(50, inputs, 20, seed=0))
    np.testing.assert_array_equal(scoring_images(50, inputs, 100, seed=0), np.setdiff1d(np.arange(50), inputs))


def test_class_accuracy_splits_the_target_class_from_the_others():
    margins = np.array([[1.0, -1.0, 2.0, 3.0], [-1.0, -1.0, 2.0, -3.0]])
    target, others = class_accuracy(margins, np.array([4, 4, 0, 1]), 4)
    np.testing.assert_allclose(target, [0.5, 0.0])
    np.testing.assert_allclose(others, [1.0, 0.5])


def _top_k_table(cells, predicted="-1", flipped="1"):
    """Top-k rows at k = 2 from (estimator, n_train, passes, true_change) cells."""
    return [
        {
            "estimator": m,
            "n_train": n,
            "passes": p,
            "k": "2",
            "predicted_change": predicted,
            "true_change": t,
            "flipped": flipped,
        }
        for m, n, p, t in cells
    ]


def test_the_summary_pairs_each_fit_with_its_lds_by_passes_and_correlates_them():
    rows = _top_k_table([("a", "10", "10", "-1"), ("a", "20", "20", "-3"), ("b", "0", "3", "-2"), ("r", "0", "0", "0")])
    rows.append(
        {
            "estimator": "a",
            "n_train": "10",
            "passes": "10",
            "k": "1",
            "predicted_change": "0",
            "true_change": "9",
            "flipped": "0",
        }
    )
    table, rho, pairs = editing_summary(rows, {("a", 10): 0.1, ("a", 20): 0.9, ("b", 3): 0.5}, k=2)
    assert [(r["method"], r["passes"], r["true_drop"], r["lds"]) for r in table][:3] == [
        ("a", 10, 1.0, 0.1),
        ("a", 20, 3.0, 0.9),
        ("b", 3, 2.0, 0.5),
    ]
    assert np.isnan(table[3]["lds"]) and pairs == 3 and rho == 1.0


def test_the_forgetting_summary_averages_classes_before_and_after():
    rows = [
        {"estimator": "a", "target": t, "k": k, "class_accuracy": c, "other_accuracy": o}
        for t, k, c, o in [
            ("0", "0", "1", "0.9"),
            ("0", "5", "0.2", "0.8"),
            ("1", "0", "0.8", "1"),
            ("1", "5", "0", "0.9"),
        ]
    ]
    (row,) = forgetting_summary(rows, 10)  # k = 5: the largest of the grid up to 10
    assert (row["class_before"], row["class_after"]) == pytest.approx((0.9, 0.1))
    assert (row["others_before"], row["others_after"]) == pytest.approx((0.95, 0.85))


def test_fixing_ablates_the_largest_predicted_rise_and_is_exact_on_a_linear_margin():
    evaluator = _linear_margin_evaluator(n_inputs=12)
    coef, intercept = leave_one_out(evaluator, 8)
    ks = [1, 2, 4, 8]
    result = fix_ablation(evaluator.paired, coef, ks, intercept)
    np.testing.assert_allclose(result["true_change"], result["predicted_change"], rtol=1e-4, atol=1e-4)
    for k, predicted in zip(ks, result["predicted_change"], strict=True):  # the k most positive effects
        np.testing.assert_allclose(predicted, -np.sort(-coef, axis=1)[:, :k].sum(axis=1))
    # fixed: a margin that was not positive is positive after the edit, nothing else
    expected = (intercept <= 0) & (intercept + result["true_change"] > 0)
    np.testing.assert_array_equal(result["fixed"], expected)
    assert "flipped" not in result and not result["fixed"][:, intercept > 0].any()
    np.testing.assert_array_equal(fixing_order(np.array([[0.5, -2.0, 3.0]])), [[2, 0, 1]])
    rows = fix_rows(("m", 0, 10, 10), ks, result, np.full((4, 12), 0.75))
    assert len(rows) == 4 * 12 and len(rows[0]) == len(FIX_COLUMNS) and rows[-1][-1] == 0.75
    assert np.isnan(fix_rows(("m", 0, 10, 10), ks, result)[0][-1])  # no accuracy elsewhere: NaN


def test_the_random_reference_averages_its_draws_and_scores_every_edit_elsewhere():
    evaluator = _linear_margin_evaluator(n_inputs=12)
    coef, intercept = leave_one_out(evaluator, 8)
    scored = _linear_margin_evaluator(n_inputs=5)  # the images the edits are scored on
    ks, draws = [1, 3], 4
    rows = random_fix_rows(evaluator.paired, scored, 8, ks, intercept, draws, seed=7, labels=("random", 0, 0, 0))
    assert len(rows) == 12 * (1 + len(ks)) and {len(row) for row in rows} == {len(FIX_COLUMNS)}
    unedited = (scored(np.zeros((1, 8), dtype=bool)) > 0).mean()
    assert all(row[5] == 0 and row[-1] == unedited for row in rows[:12])  # k = 0: the unedited model
    # the same draws by hand: the mean of the edits along the same seeded random orders
    rng = np.random.default_rng(7)
    orders = [random_orders(12, 8, rng) for _ in range(draws)]
    no_effects = np.zeros_like(coef)
    fixed = np.mean([fix_ablation(evaluator.paired, no_effects, ks, intercept, o)["fixed"] for o in orders], axis=0)
    other = np.mean([accuracy_elsewhere(scored, o, ks) for o in orders], axis=0)
    np.testing.assert_allclose([row[-2] for row in rows[12:]], fixed.ravel())
    np.testing.assert_allclose([row[-1] for row in rows[12:]], other.ravel())
    assert all(np.isnan(row[6]) for row in rows)  # nothing is predicted
    # accuracy elsewhere counts the scored images with a positive margin under each input's edit
    order = np.tile(np.arange(8), (2, 1))
    np.testing.assert_allclose(accuracy_elsewhere(scored, order, [3]), [(scored(top_k_masks(order, 3)) > 0).mean(1)])


def test_mistakes_are_chosen_among_the_misclassified_inputs_only():
    margins = np.array([1.0, -0.5, 2.0, 0.0, -3.0, 0.1, -1.0])
    chosen = choose_mistakes(margins, 2, seed=0)
    assert len(chosen) == 2 and (margins[chosen] <= 0).all() and (np.diff(chosen) > 0).all()
    np.testing.assert_array_equal(chosen, choose_mistakes(margins, 2, seed=0))
    np.testing.assert_array_equal(choose_mistakes(margins, 10, seed=0), [1, 3, 4, 6])  # all of them when few
    with pytest.raises(ValueError, match="classifies all 3"):
        choose_mistakes(np.array([1.0, 2.0, 0.5]), 2, seed=0)


def test_a_harder_split_adds_seeded_noise_and_keeps_the_labels():
    split = ImageSplit(torch.zeros(5, 1, 4, 4), torch.arange(5))
    noisy = with_noise(split, 0.5, seed=3)
    assert torch.equal(noisy.labels, split.labels)
    assert 0.3 < noisy.images.std().item() < 0.7
    assert torch.equal(noisy.images, with_noise(split, 0.5, seed=3).images)
    assert not torch.equal(noisy.images, with_noise(split, 0.5, seed=4).images)
    assert torch.equal(with_noise(split, 0.0, seed=3).images, split.images)
    with pytest.raises(ValueError, match=">= 0"):
        with_noise(split, -1.0, seed=0)


def _fix_table():
    """A fixing table: method a at two sizes, b at one, the random reference with its unedited k = 0 rows."""
    cells = [  # estimator, n_train, passes, input, k, fixed, true_change, other_accuracy
        ("a", 10, 10, 0, 2, 0, 0.5, "nan"),
        ("a", 10, 10, 1, 2, 1, 1.5, "nan"),
        ("a", 20, 20, 0, 2, 1, 2.0, 0.8),
        ("a", 20, 20, 1, 2, 1, 3.0, 0.6),
        ("b", 0, 3, 0, 2, 0, 0.1, 0.9),
        ("b", 0, 3, 1, 2, 1, 1.1, 0.9),
        ("random", 0, 0, 0, 0, 0, 0.0, 0.95),
        ("random", 0, 0, 1, 0, 0, 0.0, 0.95),
        ("random", 0, 0, 0, 2, 0, 0.1, 0.93),
        ("random", 0, 0, 1, 2, 0, 0.2, 0.91),
    ]
    return [
        dict(zip(FIX_COLUMNS, map(str, (m, 0, n, p, i, k, 1.0, t, f, o)), strict=True))
        for m, n, p, i, k, f, t, o in cells
    ]


def test_the_fixing_summary_pairs_each_fit_with_its_lds_and_averages_accuracy_where_measured():
    rows, rho, pairs = fixing_summary(_fix_table(), {("a", 10): 0.2, ("a", 20): 0.7, ("b", 3): 0.4}, k=2)
    by_fit = {(r["method"], r["n_train"]): r for r in rows}
    assert by_fit["a", 10]["fixed"] == 0.5 and np.isnan(by_fit["a", 10]["other_accuracy"])
    assert by_fit["a", 20]["fixed"] == 1.0 and by_fit["a", 20]["other_accuracy"] == pytest.approx(0.7)
    assert by_fit["a", 20]["true_rise"] == 2.5 and by_fit["random", 0]["other_accuracy"] == pytest.approx(0.92)
    # LDS 0.2 < 0.4 < 0.7 against fixed 0.5 = 0.5 < 1.0: ranks (1, 2, 3) and (1.5, 1.5, 3), rho = sqrt(3) / 2
    assert pairs == 3 and rho == pytest.approx(np.sqrt(3) / 2)


def test_the_summary_section_reports_each_method_at_its_largest_size():
    cells = [("a", "10", "10", "-1"), ("a", "20", "20", "-4"), ("b", "0", "3", "-2"), ("c", "0", "5", "-3")]
    top_k = _top_k_table(cells, predicted="-2", flipped="0")
    forget = [
        {"estimator": "a", "target": "0", "k": k, "class_accuracy": c, "other_accuracy": "0.9"}
        for k, c in (("0", "1.0"), ("2", "0.25"))
    ]
    text = summary_section(
        top_k, forget, _fix_table(), {("a", 10): 0.2, ("a", 20): 0.7, ("b", 3): 0.4, ("c", 5): 0.5}, 2
    )
    table = [line for line in text.splitlines() if line.startswith("| a | ") and "(" not in line]
    assert len(table) == 1 and table[0].split(" | ")[1:3] == ["20", "0.70"]  # a at its largest size only
    assert "2 misclassified images" in text and "unedited: 0.950" in text
    assert "true drop at k = 2: +1.000 (4 pairs)" in text and "fraction of mistakes fixed: +0.866 (3 pairs)" in text
    assert "0.25" in table[0]  # the forgotten class's accuracy after the edit
    assert "| 2 | 1.00 | 0.87 |" in text  # the correlations at every k of the tables
    by_k = [line for line in text.splitlines() if line.startswith("| a | 1.00 (0.70)")]
    assert len(by_k) == 1  # fixing against k: a at its largest size, fixed (accuracy elsewhere)


def test_the_fixing_figure_draws_a_line_per_method_and_the_unedited_accuracy():
    fig = plot_fixing(_fix_table(), n_bootstrap=50)
    fixed_ax, other_ax = fig.axes
    assert len(fixed_ax.lines) == 3  # a (largest size), b, random
    assert len(other_ax.lines) == 4  # and the unedited model's accuracy
    assert other_ax.get_lines()[-1].get_ydata()[0] == pytest.approx(0.95)
