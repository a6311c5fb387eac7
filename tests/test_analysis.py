import math

import numpy as np
import pytest

from compattr.analysis import (
    ablations_needed,
    bootstrap_curves,
    markdown_table,
    read_lds_csv,
    read_ood_csv,
    summary_rows,
    write_lds_csv,
)


def test_ablations_needed_interpolates_in_log_size():
    sizes = np.array([100, 400, 1600])
    curve = np.array([0.2, 0.4, 0.6])
    assert ablations_needed(sizes, curve, 0.4) == pytest.approx(400)
    assert ablations_needed(sizes, curve, 0.3) == pytest.approx(200)  # halfway in log(size)
    assert ablations_needed(sizes, curve, 0.1) == 100  # reached at the smallest size
    assert math.isnan(ablations_needed(sizes, curve, 0.7))
    # The first crossing counts, even if the curve dips later.
    assert ablations_needed(sizes, np.array([0.5, 0.3, 0.6]), 0.45) == 100


def test_bootstrap_interval_contains_the_mean_and_shrinks_with_inputs():
    rng = np.random.default_rng(0)
    few = rng.normal(0.5, 0.1, size=(3, 20))
    many = rng.normal(0.5, 0.1, size=(3, 2000))
    for scores in (few, many):
        mean, low, high, boot = bootstrap_curves(scores, 500, 0.95, np.random.default_rng(1))
        assert (low <= mean).all() and (mean <= high).all() and boot.shape == (500, 3)
    _, low_few, high_few, _ = bootstrap_curves(few, 500, 0.95, np.random.default_rng(1))
    _, low_many, high_many, _ = bootstrap_curves(many, 500, 0.95, np.random.default_rng(1))
    assert (high_many - low_many).max() < (high_few - low_few).min()


def test_lds_csv_round_trip_and_summary(tmp_path):
    rows = []
    for estimator, shift in [("coar", 0.0), ("fast", 0.2)]:
        for n, base in [(100, 0.2), (200, 0.4), (400, 0.6)]:
            rows += [(estimator, n, i, base + shift + 0.01 * i, base) for i in range(5)]
    write_lds_csv(tmp_path / "lds.csv", rows)
    table = read_lds_csv(tmp_path / "lds.csv")
    assert table.estimators == ["coar", "fast"]
    np.testing.assert_array_equal(table.sizes["fast"], [100, 200, 400])
    assert table.spearman["fast"].shape == (3, 5)
    summary = summary_rows(table, [0.5], n_bootstrap=200, ci=0.9, seed=0)
    by = {r["estimator"]: r for r in summary}
    assert by["coar"]["reduction_vs_coar"] == 0
    assert by["fast"]["ablations_needed"] < by["coar"]["ablations_needed"]
    assert by["fast"]["reduction_vs_coar"] == pytest.approx(
        1 - by["fast"]["ablations_needed"] / by["coar"]["ablations_needed"]
    )
    assert by["fast"]["ablations_low"] <= by["fast"]["ablations_needed"] <= by["fast"]["ablations_high"]
    text = markdown_table(summary, ["estimator", "ablations_needed"])
    assert text.splitlines()[0] == "| estimator | ablations_needed |" and "fast" in text
    assert by["fast"]["reduction_vs_best_linear"] != by["fast"]["reduction_vs_best_linear"]  # no linear: NaN


def test_read_lds_csv_rejects_other_columns(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="expected columns"):
        read_lds_csv(tmp_path / "x.csv")


def test_best_linear_reference_is_the_cheapest_linear_estimator(tmp_path):
    rows = []
    for estimator, base in [("coar", 0.1), ("ridge", 0.3), ("lasso", 0.2), ("new", 0.35)]:
        for n, step in [(100, 0.0), (200, 0.2), (400, 0.4)]:
            rows += [(estimator, n, i, base + step + 0.001 * i, 0.0) for i in range(4)]
    write_lds_csv(tmp_path / "lds.csv", rows)
    summary = summary_rows(read_lds_csv(tmp_path / "lds.csv"), [0.5], n_bootstrap=50, ci=0.9, seed=0)
    by = {r["estimator"]: r for r in summary}
    assert by["ridge"]["reduction_vs_best_linear"] == 0  # ridge needs fewer masks than lasso
    expected = 1 - by["new"]["ablations_needed"] / by["ridge"]["ablations_needed"]
    assert by["new"]["reduction_vs_best_linear"] == pytest.approx(expected)


def test_ood_table_round_trip(tmp_path):
    rows = [("coar", 100, i, 0.1 * i, 0.2, alpha) for alpha in (0.025, 0.1) for i in range(3)]
    write_lds_csv(tmp_path / "ood.csv", rows, alpha=True)
    tables = read_ood_csv(tmp_path / "ood.csv")
    assert list(tables) == [0.025, 0.1]
    np.testing.assert_allclose(tables[0.1].spearman["coar"], [[0.0, 0.1, 0.2]])
