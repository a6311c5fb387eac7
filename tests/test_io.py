import subprocess
import sys
from pathlib import Path

from compattr import __version__
from compattr.io import provenance, source_hash


def test_provenance_names_the_code_commit_and_versions():
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, check=True
    ).stdout.strip()
    out = provenance({"seed": 3}, device="cpu")
    assert out["commit"].removesuffix("-dirty") == head
    assert out["versions"]["compattr"] == __version__ and out["versions"]["torch"]
    assert out["config"] == {"seed": 3} and out["device"] == "cpu"


def test_provenance_names_the_running_code_version_not_a_stale_install(monkeypatch):
    """An editable install's metadata keeps the version it was installed at; the code that runs says its own."""
    from importlib import metadata

    installed = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "0.0.1" if name == "compattr" else installed(name))
    versions = provenance()["versions"]
    assert versions["compattr"] == __version__ != "0.0.1" and versions["numpy"] == installed("numpy")


def test_provenance_without_git_has_no_commit(monkeypatch):
    monkeypatch.setenv("PATH", "")
    assert provenance()["commit"] is None


def test_source_hash_follows_the_library_modules_a_script_imports(tmp_path):
    package = tmp_path / "compattr"
    package.mkdir()
    (package / "__init__.py").write_text('__version__ = "1"\n')
    (package / "fitting.py").write_text("from compattr import estimators\n")
    (package / "estimators.py").write_text("import numpy\nfrom compattr.lds import lds_scores\n")
    (package / "lds.py").write_text("def lds_scores(): ...\n")
    (package / "plots.py").write_text("import matplotlib\n")
    script = tmp_path / "fit.py"
    script.write_text("from compattr.fitting import fit\nimport compattr\n")
    before = source_hash(script, package)
    (package / "plots.py").write_text("import matplotlib  # not imported by the script\n")
    (package / "__init__.py").write_text('__version__ = "2"\n')
    assert source_hash(script, package) == before
    (package / "lds.py").write_text("def lds_scores(): return 1\n")  # imported two steps away
    changed = source_hash(script, package)
    assert changed != before
    script.write_text("from compattr.fitting import fit  # the script itself: Snakemake tracks it\n")
    assert source_hash(script, package) == changed


def test_the_workflow_plans_its_jobs_without_importing_torch():
    """The Snakefile imports compattr.io and compattr.registry at parse time: they must stay light."""
    code = "import sys, compattr, compattr.io, compattr.registry; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_jobs_that_read_and_score_stores_start_without_torch():
    """Scoring, store checks and summaries import these alone: torch and scikit-learn would double their time."""
    modules = "compattr.stores, compattr.masks, compattr.fitting, compattr.analysis, compattr.scores"
    code = f"import sys, {modules}; print(sorted({{'torch', 'sklearn'}} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_registry_names_what_the_classes_and_benchmarks_do():
    from compattr.bench import REFERENCES
    from compattr.estimators import ESTIMATORS, ReluCollapseRegressor
    from compattr.registry import BENCHMARKED, PRIOR_ESTIMATORS, TWO_LAYER_ESTIMATORS

    assert set(PRIOR_ESTIMATORS) == {name for name, cls in ESTIMATORS.items() if cls.uses_prior}
    assert set(TWO_LAYER_ESTIMATORS) == {n for n, cls in ESTIMATORS.items() if issubclass(cls, ReluCollapseRegressor)}
    assert set(BENCHMARKED) == set(REFERENCES)


def test_training_groups_are_the_estimators_that_train_the_same_networks():
    """The registry groups names without torch; the estimators built from them agree on what they train."""
    from compattr.estimators import make_estimator
    from compattr.registry import NETWORKS, TWO_LAYER_ESTIMATORS, training_groups

    assert set(NETWORKS) == set(TWO_LAYER_ESTIMATORS)
    base = {"hidden": 8, "lr": 0.01, "early_stopping": "auto", "calibrate": True}
    settings = {name: dict(base) for name in NETWORKS} | {"ridge": {}}
    settings["relu_collapse_raw"] |= {"early_stopping": "network", "calibrate": False}
    for variant in ({}, {"relu_net": {**base, "hidden": 16}}):
        estimators = settings | variant
        groups = training_groups(estimators)
        assert sorted(sum(groups, [])) == sorted(estimators)
        assert ["ridge"] in groups
        for group in (g for g in groups if g[0] in NETWORKS):
            trained = {make_estimator(name, estimators[name])._training() for name in group}
            assert len(trained) == 1, group
        leads = [make_estimator(g[0], estimators[g[0]])._training() for g in groups if g[0] in NETWORKS]
        assert len(set(leads)) == len(leads)  # groups that train alike are one group
    assert ["relu_collapse", "relu_collapse_raw", "relu_net"] in training_groups(settings)
    assert ["relu_collapse", "relu_collapse_raw"] in training_groups(settings | {"relu_net": {**base, "hidden": 16}})
