import math

from compattr.analysis import read_lds_csv, summary_rows, write_lds_csv, write_summary_csv
from compattr.goals import goal_markdown, goal_row, main, sampling_free_markdown, sampling_free_rows


def _study(path, top: float, prior: float):
    """A study folder: coar rising to ``top`` LDS by 800 masks, and a 12-pass prior scoring about ``prior``."""
    path.mkdir()
    rows = []
    for n, score in ((100, 0.3), (200, 0.5), (400, top - 0.05), (800, top)):
        rows += [("coar", 0, 0, n, n, i, score + 0.002 * (i - 5), 0.0) for i in range(11)]
    rows += [("atp_top_8", 0, 0, 0, 12, i, prior + 0.002 * (i - 5), 0.0) for i in range(11)]
    write_lds_csv(path / "lds.csv", rows)
    table = read_lds_csv(path / "lds.csv")
    ceiling = max(float(table.mean_curve("coar")[-1]), 0)
    targets = [0.5, 0.9, round(0.9 * ceiling, 3)]
    write_summary_csv(path / "summary.csv", summary_rows(table, targets, n_bootstrap=100, ci=0.95, seed=0))
    return path


def test_the_goal_is_lds_0_9_or_90_percent_of_a_lower_ceiling(tmp_path, capsys):
    high = goal_row(_study(tmp_path / "high", top=0.95, prior=0.91))
    assert high["target"] == 0.9 and high["cheapest"] == "atp_top_8" and high["passes"] == 12
    assert math.isclose(high["reference"], 400) and math.isclose(high["ratio"], high["reference"] / 12)
    assert high["robust_method"] == "atp_top_8" and 1 < high["ratio_low"] <= high["ratio"]
    low = goal_row(_study(tmp_path / "low", top=0.7, prior=0.5))
    assert low["target"] == round(0.9 * 0.7, 3) and low["cheapest"] == "coar" and low["ratio"] == 1
    # a prior just above the target on average, not in every resample of the inputs: cheapest, not robust
    edge = goal_row(_study(tmp_path / "edge", top=0.95, prior=0.901))
    assert edge["cheapest"] == "atp_top_8" and edge["robust_method"] == "coar"
    text = goal_markdown([high, low, edge], goal=10)
    assert "| high | 0.950 | 0.900 | 400 | atp_top_8 | 12 | 33.3x | atp_top_8 | 12 |" in text
    assert ("(met)" in text) == (high["ratio_low"] >= 10)
    main([str(tmp_path / "high")])
    assert "| high |" in capsys.readouterr().out


def test_the_sampling_free_methods_are_those_fitted_on_no_masks(tmp_path, capsys):
    study = _study(tmp_path / "high", top=0.95, prior=0.91)
    rows = sampling_free_rows(study)
    assert [r["method"] for r in rows] == ["atp_top_8"] and rows[0]["passes"] == 12
    assert math.isclose(rows[0]["lds"], 0.91)
    assert "| `atp_top_8` | 12 | 0.910 |" in sampling_free_markdown({"high": rows})
    main(["--priors", str(study)])
    assert "`high`:" in capsys.readouterr().out
