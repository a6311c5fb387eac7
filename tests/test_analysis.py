import math

import numpy as np
import pytest

from compattr.analysis import (
    ablations_needed,
    bootstrap_curves,
    ceiling_targets,
    curve_dips,
    fit_quality_rows,
    needed_per_model,
    prior_choice_rows,
    read_lds_csv,
    read_ood_csv,
    resampled_sources,
    select_by_validation,
    summary_rows,
    write_fit_csv,
    write_lds_csv,
)
from compattr.reports import (
    fit_quality_markdown,
    grouped_gain_markdown,
    markdown_table,
    mean_lds_markdown,
    per_model_markdown,
    prior_choice_markdown,
    summary_markdown,
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


def test_ablations_needed_from_a_prior_at_zero_masks():
    sizes = np.array([0, 100, 400])
    curve = np.array([0.2, 0.4, 0.6])
    assert ablations_needed(sizes, curve, 0.1) == 0  # the prior alone reaches it
    assert ablations_needed(sizes, curve, 0.3) == pytest.approx(50)  # linear between 0 and 100
    assert ablations_needed(sizes, curve, 0.5) == pytest.approx(200)  # log above


def test_bootstrap_interval_contains_the_mean_and_shrinks_with_inputs():
    rng = np.random.default_rng(0)
    few = rng.normal(0.5, 0.1, size=(3, 1, 1, 20))  # (sizes, models, replicates, inputs)
    many = rng.normal(0.5, 0.1, size=(3, 1, 1, 2000))
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
            rows += [(estimator, 0, 0, n, n, i, base + shift + 0.01 * i, base) for i in range(5)]
    write_lds_csv(tmp_path / "lds.csv", rows)
    table = read_lds_csv(tmp_path / "lds.csv")
    assert table.estimators == ["coar", "fast"]
    np.testing.assert_array_equal(table.sizes["fast"], [100, 200, 400])
    assert table.spearman["fast"].shape == (3, 1, 1, 5)
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
            rows += [(estimator, 0, 0, n, n, i, base + step + 0.001 * i, 0.0) for i in range(4)]
    write_lds_csv(tmp_path / "lds.csv", rows)
    table = read_lds_csv(tmp_path / "lds.csv")
    summary = summary_rows(table, [0.5], n_bootstrap=50, ci=0.9, seed=0, references=["coar", "lasso", "absent"])
    by = {r["estimator"]: r for r in summary}
    assert by["ridge"]["reduction_vs_best_linear"] == 0  # ridge needs fewer masks than lasso
    expected = 1 - by["new"]["ablations_needed"] / by["ridge"]["ablations_needed"]
    assert by["new"]["reduction_vs_best_linear"] == pytest.approx(expected)
    expected = 1 - by["new"]["ablations_needed"] / by["lasso"]["ablations_needed"]
    assert by["new"]["reduction_vs_lasso"] == pytest.approx(expected)
    assert math.isnan(by["new"]["reduction_vs_absent"])
    text = summary_markdown(summary, "s", 100, 400, references=["coar", "lasso"])
    assert "| method | passes needed | vs coar | vs lasso | vs best tuned linear |" in text
    assert "brackets are 95% percentile bootstrap intervals" in text
    # the intervals' coverage is the config's (analysis.ci), not a fixed 95%
    assert "brackets are 90% percentile bootstrap intervals" in summary_markdown(summary, "s", 100, 400, ci=0.9)


def test_ood_table_round_trip(tmp_path):
    rows = [("coar", 0, 0, 100, 100, i, 0.1 * i, 0.2, rate) for rate in (0.025, 0.1) for i in range(3)]
    write_lds_csv(tmp_path / "ood.csv", rows, ood=True)
    tables = read_ood_csv(tmp_path / "ood.csv")
    assert list(tables) == [0.025, 0.1]
    np.testing.assert_allclose(tables[0.1].spearman["coar"], [[[[0.0, 0.1, 0.2]]]])


def test_grouped_gain_splits_inputs_by_the_covariate():
    rows = []
    for i in range(6):
        rows += [("ridge", 0, 0, n, n, i, 0.2, 0.0) for n in (100, 200)]
        rows += [("prior", 0, 0, n, n, i, 0.2 + 0.1 * (i >= 3) * (n == 100), 0.0) for n in (0, 100, 200)]
    table = _table_from(rows)
    text = grouped_gain_markdown(table, "prior", "ridge", np.arange(6.0), "covariate", n_groups=2)
    lines = text.splitlines()
    assert lines[0] == "| covariate | inputs | n=100 | n=200 |"
    assert lines[2] == "| 0.00 to 2.00 | 3 | +0.000 | +0.000 |"
    assert lines[3] == "| 3.00 to 5.00 | 3 | +0.100 | +0.000 |"


def _table_from(rows):
    from compattr.analysis import _table

    keys = ("estimator", "model", "replicate", "n_train", "passes", "input", "spearman", "pearson")
    return _table({k: str(v) for k, v in zip(keys, row, strict=True)} for row in rows)


def test_settings_are_selected_by_lowest_mse_or_highest_spearman():
    mse = {("a", 100): 0.5, ("b", 100): 0.4, ("a", 200): 0.2, ("b", 200): 0.3}
    spearman = {("a", 100): 0.6, ("b", 100): 0.5, ("a", 200): 0.7, ("b", 200): 0.8}
    assert select_by_validation(mse) == {100: "b", 200: "a"}
    assert select_by_validation(spearman, maximize=True) == {100: "a", 200: "b"}


def test_fit_quality_counts_failed_constant_and_sign_flipped_inputs(tmp_path):
    nan = float("nan")
    rows = [("net", 0, 0, 100, i, i == 0, False, -0.5 if i < 2 else 1.0, "") for i in range(4)]
    rows += [("ls", 0, 0, 100, i, False, i == 3, nan, "") for i in range(4)]
    write_fit_csv(tmp_path / "fits.csv", rows)
    quality = {r["estimator"]: r for r in fit_quality_rows([tmp_path / "fits.csv"])}
    assert quality["net"]["failed"] == 0.25 and quality["net"]["sign_flipped"] == 0.5
    assert quality["ls"]["constant"] == 0.25 and math.isnan(quality["ls"]["sign_flipped"])
    text = fit_quality_markdown(list(quality.values()))
    assert "net n=100: 25%" in text and "ls n=100: 25%" in text and "net n=100: 50%" in text


def test_prior_choices_are_shares_of_inputs_per_estimator_and_size(tmp_path):
    nan = float("nan")
    rows = [("gp", m, 0, 100, i, False, False, nan, "atp" if i < 3 else "atp_top_8") for m in (0, 1) for i in range(4)]
    rows += [("gp", 0, 0, 200, i, False, False, nan, "atp_top_8") for i in range(4)]
    rows += [("one", 0, 0, 100, i, False, False, nan, "atp") for i in range(4)]  # a single prior: no choice
    rows += [("ls", 0, 0, 100, i, False, False, nan, "") for i in range(4)]
    write_fit_csv(tmp_path / "fits.csv", rows)
    choices = prior_choice_rows([tmp_path / "fits.csv"])
    assert choices == [
        {"estimator": "gp", "n_train": 100, "fits": 8, "atp": 0.75, "atp_top_8": 0.25},
        {"estimator": "gp", "n_train": 200, "fits": 4, "atp": 0.0, "atp_top_8": 1.0},
    ]
    text = prior_choice_markdown(choices)
    assert "| masks | inputs | atp | atp_top_8 |" in text and "| 100 | 8 | 75% | 25% |" in text
    assert "| 200 | 4 | 0% | 100% |" in text and "`one`" not in text


def test_curve_dips_name_the_sizes_where_the_mean_lds_falls(tmp_path):
    rows = [("coar", 0, 0, n, n, i, s, s) for n, s in ((50, 0.4), (100, 0.3), (200, 0.6)) for i in range(2)]
    rows += [("ridge", 0, 0, n, n, i, s, s) for n, s in ((50, 0.4), (100, 0.5), (200, 0.6)) for i in range(2)]
    write_lds_csv(tmp_path / "lds.csv", rows)
    dips = curve_dips(read_lds_csv(tmp_path / "lds.csv"), n_components=100)
    assert dips == ["- coar: 50 -> 100 masks (0.50 -> 1.00 of the components; LDS 0.400 -> 0.300)"]


def test_ceiling_targets_are_fractions_of_the_best_fitted_estimator_at_its_largest_size(tmp_path):
    rows = [("coar", 0, 0, n, n, i, s, s) for n, s in ((50, 0.2), (100, 0.6)) for i in range(2)]
    rows += [("ridge", 0, 0, n, n, i, s, s) for n, s in ((50, 0.4), (100, 0.5)) for i in range(2)]
    rows += [("loo", 0, 0, 336, 336, i, 0.9, 0.9) for i in range(2)]  # a baseline's single point is not the ceiling
    write_lds_csv(tmp_path / "lds.csv", rows)
    ceiling, headings = ceiling_targets(read_lds_csv(tmp_path / "lds.csv"), [0.5, 0.9])
    assert ceiling == pytest.approx(0.6)
    assert headings == {0.3: "LDS 0.300 (50% of the ceiling 0.600)", 0.54: "LDS 0.540 (90% of the ceiling 0.600)"}


def test_tables_hold_models_and_mask_draws_with_missing_draws_as_nan(tmp_path):
    rows = [("coar", m, r, 100, 100, i, 0.1 * m + 0.01 * r, 0.0) for m in range(2) for r in range(3) for i in range(4)]
    rows += [("coar", m, 0, 400, 400, i, 0.5, 0.0) for m in range(2) for i in range(4)]  # one draw fits at 400
    write_lds_csv(tmp_path / "lds.csv", rows)
    table = read_lds_csv(tmp_path / "lds.csv")
    assert table.spearman["coar"].shape == (2, 2, 3, 4)
    assert np.isnan(table.spearman["coar"][1, :, 1:]).all()
    np.testing.assert_allclose(table.mean_curve("coar"), [0.06, 0.5])


def test_bootstrap_over_mask_draws_covers_their_variance():
    """Draws that differ by a known offset (sd 0.1) widen the interval as sd / sqrt(draws) predicts."""
    rng = np.random.default_rng(0)
    n_draws, n_inputs = 5, 200
    offsets = rng.normal(0.0, 0.1, size=n_draws)
    scores = 0.5 + offsets[None, None, :, None] + rng.normal(0.0, 0.01, size=(1, 1, n_draws, n_inputs))
    _, low, high, _ = bootstrap_curves(scores, 2000, 0.95, np.random.default_rng(1))
    pooled = scores.mean(axis=2, keepdims=True)  # the draws averaged first: inputs alone are resampled
    _, low_inputs, high_inputs, _ = bootstrap_curves(pooled, 2000, 0.95, np.random.default_rng(1))
    width, inputs_only = float(high[0] - low[0]), float(high_inputs[0] - low_inputs[0])
    assert width > 5 * inputs_only
    expected = 2 * 1.96 * offsets.std() / np.sqrt(n_draws)  # the bootstrap's plug-in standard error
    assert 0.6 * expected < width < 1.4 * expected


def test_resampled_sources_name_models_and_draws_only_when_there_are_several(tmp_path):
    one = [("coar", 0, 0, 100, 100, i, 0.5, 0.5) for i in range(3)]
    write_lds_csv(tmp_path / "one.csv", one)
    assert resampled_sources(read_lds_csv(tmp_path / "one.csv")) == "3 test inputs"
    many = [("coar", m, r, 100, 100, i, 0.5, 0.5) for m in range(2) for r in range(3) for i in range(3)]
    write_lds_csv(tmp_path / "many.csv", many)
    assert resampled_sources(read_lds_csv(tmp_path / "many.csv")) == (
        "3 test inputs, 2 independently trained models and up to 3 disjoint draws of training masks per size"
    )


def test_evaluations_put_priors_at_zero_and_leave_one_out_at_its_units_and_one_figure_shows_every_kind(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from compattr.analysis import read_lds_csv, write_lds_csv
    from compattr.plots import plot_unified

    rows = []
    for i in range(4):
        rows += [("coar", 0, 0, 50, 50, i, 0.5, 0.5), ("coar", 0, 0, 100, 100, i, 0.6, 0.6)]
        rows += [("gradient_prior", 0, 0, 50, 53, i, 0.7, 0.7), ("atp", 0, 0, 0, 3, i, 0.4, 0.4)]
        rows += [("loo", 0, 0, 0, 64, i, 0.8, 0.8), ("atp_top_8", 0, 0, 0, 12, i, 0.75, 0.75)]
    write_lds_csv(tmp_path / "lds.csv", rows)
    by_passes = read_lds_csv(tmp_path / "lds.csv")
    table = read_lds_csv(tmp_path / "lds.csv", by="evaluations", measured={"atp": 0, "atp_top_8": 8})
    assert by_passes.sizes["atp"].tolist() == [3] and by_passes.sizes["gradient_prior"].tolist() == [53]
    assert table.sizes["atp"].tolist() == [0] and table.sizes["gradient_prior"].tolist() == [50]
    assert table.sizes["loo"].tolist() == [64] and table.sizes["coar"].tolist() == [50, 100]
    assert table.sizes["atp_top_8"].tolist() == [8]  # its 8 ablated passes; its unablated one is no perturbation
    assert read_lds_csv(tmp_path / "lds.csv", by="evaluations").sizes["atp_top_8"].tolist() == [0]
    with pytest.raises(ValueError, match="by must be"):
        read_lds_csv(tmp_path / "lds.csv", by="seconds")
    fig = plot_unified({"components": ("components", table), "data": ("data", table)}, n_bootstrap=10)
    axes = [ax for ax in fig.axes if ax.get_xlabel()]
    assert [ax.get_xlabel() for ax in axes] == [
        "perturbed evaluations (ablated forward passes)",
        "perturbed evaluations (trained models)",
    ]
    assert [t.get_text() for t in fig.legends[0].get_texts()][-2] == "leave-one-out"
    # every method at one size is a diamond with error bars: the measured prior at its 8 evaluations, and
    # here gradient_prior, fitted at one size only; leave-one-out a star
    points = [c for c in axes[0].containers if c.lines[0].get_marker() == "D"]
    assert sorted(float(c.lines[0].get_xdata()[0]) for c in points) == [0.0, 8.0, 50.0]


def test_tables_round_trip_and_a_wrong_header_is_named(tmp_path):
    from compattr.analysis import read_table, write_table

    write_table(tmp_path / "t.csv", ("method", "value", "flag"), [("a", 0.123456789, True), ("b", float("nan"), False)])
    rows = read_table(tmp_path / "t.csv", ("method", "value", "flag"))
    assert rows == [{"method": "a", "value": "0.123457", "flag": "1"}, {"method": "b", "value": "nan", "flag": "0"}]
    with pytest.raises(ValueError, match=r"t.csv: expected columns \('method', 'cost'\)"):
        read_table(tmp_path / "t.csv", ("method", "cost"))


def test_the_headline_figure_shows_the_seeds_comparison_and_the_best_prior(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from compattr.plots import headline_methods, plot_headline

    rows = []
    for i in range(4):
        rows += [
            (name, 0, 0, n, n, i, 0.1 * i + n / 1000, 0.0) for name in ("coar", "ridge", "relu_net") for n in (50, 100)
        ]
        rows += [
            ("atp", 0, 0, 3, 3, i, 0.2, 0.0),
            ("atp_mean", 0, 0, 3, 3, i, 0.4, 0.0),
            ("loo", 0, 0, 9, 9, i, 0.9, 0.0),
        ]
    table = _table_from(rows)
    # the study's own methods in the seed's comparison, the better of its two priors, then leave-one-out
    assert headline_methods(table, ["atp", "atp_mean"]) == ["coar", "ridge", "atp_mean", "loo"]
    fig = plot_headline(table, priors=["atp", "atp_mean"], targets=[0.3], n_bootstrap=20)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert len(labels) == 4 and labels[0].startswith("COAR") and "leave-one-out" in labels[-1]
    assert "\n" in fig.axes[0].get_xlabel()  # wrapped, not cut at the figure's edge
    fig.canvas.draw()
    (legend,) = fig.legends  # below the panel, where it hides no curve
    assert legend.get_window_extent().y1 <= fig.axes[0].get_window_extent().y0
    fig.savefig(tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 10_000


def test_every_method_of_a_study_gets_a_colour_of_its_own():
    from compattr.plots import method_colors

    names = [f"method_{k}" for k in range(60)]  # the default study draws 22 curves
    colors = method_colors(names)
    assert list(colors) == names
    assert len(set(colors.values())) == len(names)
    assert method_colors(names[:3]) == {name: colors[name] for name in names[:3]}  # a method's colour is its place


def _two_model_table():
    """coar reaches 0.4 at 200 masks on model 0 and at 100 on model 1; net at 100 on model 0 and at 126 on model 1
    (model 1's second mask draw, at 100 masks only, lowers its mean there to 0.3); the prior is one point."""
    curves = {  # (estimator, model, replicate) -> LDS at 100, 200 masks, the same for both inputs
        ("coar", 0, 0): (0.2, 0.4),
        ("coar", 1, 0): (0.4, 0.6),
        ("net", 0, 0): (0.4, 0.5),
        ("net", 1, 0): (0.5, 0.6),
        ("net", 1, 1): (0.1, None),
    }
    rows = [
        (e, m, r, n, n, i, score, score)
        for (e, m, r), scores in curves.items()
        for n, score in zip((100, 200), scores, strict=True)
        if score is not None
        for i in range(2)
    ]
    rows += [("prior", m, 0, 0, 3, i, 0.5, 0.5) for m in (0, 1) for i in range(2)]
    return _table_from(rows)


def test_passes_needed_per_model_read_each_models_own_mean_curve():
    table = _two_model_table()
    assert needed_per_model(table, "coar", 0.4) == pytest.approx([200, 100])
    # model 1: 0.3 at 100 masks (the mean over its two draws), 0.6 at 200: a third of the way in log(size)
    assert needed_per_model(table, "net", 0.4) == pytest.approx([100, 100 * 2 ** (1 / 3)])
    assert np.isnan(needed_per_model(table, "coar", 0.7)).all()


def test_per_model_table_counts_the_models_where_a_method_needs_fewer_passes_than_coar():
    lines = per_model_markdown(_two_model_table(), [0.4, 0.9]).splitlines()
    assert lines[0] == "| target | method | model 0 | model 1 | fewer than coar |"
    assert lines[2] == "| 0.4 | coar | 200 | 100 |  |"
    assert lines[3] == "| 0.4 | net | 100 (+50%) | 126 (-26%) | 1 of 2 |"
    assert len(lines) == 4  # no regression reaches 0.9 on any model; the prior is no regression


def test_mean_lds_tables_average_models_and_draws_and_give_each_sampling_free_method_its_cost():
    def rows(estimator, model, replicate, n_train, passes, score):
        return [(estimator, model, replicate, n_train, passes, i, score, score) for i in (0, 1)]

    heldout = [  # coar and net at 100 and 200 masks on two models (net: a second draw at 100 on model 1); a prior
        *rows("coar", 0, 0, 100, 100, 0.2), *rows("coar", 1, 0, 100, 100, 0.4),
        *rows("coar", 0, 0, 200, 200, 0.4), *rows("coar", 1, 0, 200, 200, 0.6),
        *rows("net", 0, 0, 100, 100, 0.4), *rows("net", 1, 0, 100, 100, 0.5), *rows("net", 1, 1, 100, 100, 0.1),
        *rows("net", 0, 0, 200, 200, 0.5), *rows("net", 1, 0, 200, 200, 0.6),
        *rows("prior", 0, 0, 0, 3, 0.4), *rows("prior", 1, 0, 0, 3, 0.6),
    ]  # fmt: skip
    ood = [*rows("coar", 0, 0, 200, 200, 0.4), *rows("coar", 1, 0, 200, 200, 0.5), *rows("prior", 0, 0, 0, 3, 0.2)]
    by_masks = _table_from([(e, m, r, n, n, i, s, p) for e, m, r, n, _, i, s, p in heldout])
    lines = mean_lds_markdown(by_masks, _table_from(heldout), {0.1: _table_from(ood)}).splitlines()
    regressions = lines[lines.index("| method | 100 | 200 |") :]
    assert regressions[2] == "| coar | 0.300 | 0.500 |"
    assert regressions[3] == "| net | 0.333 | 0.550 |"  # model 1's second draw at 100 masks counts as a draw
    assert "| coar | 200 | 0.500 | 0.450 |" in lines  # at the largest size, held out and at rate 0.1
    assert "| net | 200 | 0.550 |  |" in lines  # not scored out of distribution
    assert lines[-1] == "| prior | 3 | 0.500 | 0.200 |"
