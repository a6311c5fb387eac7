"""The workflow run through Snakemake on the tiny config, in a fresh copy of the repository."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from compattr.checkpoints import load_checkpoint
from compattr.stores import load_fit, read_coordinates, read_rows

pytestmark = pytest.mark.workflow  # the slow tier: `make test-fast` leaves it out

REPO = Path(__file__).resolve().parents[1]
STUDY = "results/tiny"


def copy_repo(dest: Path) -> Path:
    """Copy what a fresh clone holds of the workflow (not results, logs or the venv) to ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "Snakefile", dest)
    for folder in ("workflow", "config", "envs", "slurm"):
        shutil.copytree(REPO / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def snakemake(
    workdir: Path, *args: str, check: bool = True, configfile: str = "config/tiny.yaml", **kwargs
) -> subprocess.CompletedProcess:
    """Run Snakemake in ``workdir`` on a config (the tiny one); its log (stdout and stderr) is in ``.stdout``."""
    cmd = [sys.executable, "-m", "snakemake", *args, "--configfile", configfile]
    result = subprocess.run(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout[-6000:]}")
    return result


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """The tiny study run end to end with two parallel jobs."""
    workdir = copy_repo(tmp_path_factory.mktemp("study"))
    snakemake(workdir, "--cores", "2")
    return workdir


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_study_writes_sane_tables_and_figures(study):
    config = yaml.safe_load((study / "config/tiny.yaml").read_text())
    lds = read_csv(study / STUDY / "lds.csv")
    assert list(lds[0]) == ["estimator", "model", "replicate", "n_train", "passes", "input", "spearman", "pearson"]
    n_inputs, n_masks = config["inputs"]["n"], config["sampling"]["train"]["n_masks"]
    n_models, n_draws = config["replicates"]["models"], config["replicates"]["masks"]
    assert n_models > 1 and n_draws > 1  # the tiny study covers both kinds of replicate
    draws = sum(min(n_draws, n_masks // n) for n in config["fit"]["train_sizes"])  # disjoint draws that fit
    baselines = [*config["fit"]["priors"], *config["fit"]["baselines"]]  # the priors and leave-one-out
    # Estimators with a prior also have the prior's point at 0 masks.
    assert "gradient_prior" in config["fit"]["estimators"]
    assert len(lds) == (len(config["fit"]["estimators"]) * draws + len(baselines) + 1) * n_inputs * n_models
    assert {(r["model"], r["replicate"]) for r in lds if r["n_train"] == "40"} == {
        (str(m), str(r)) for m in range(n_models) for r in range(n_draws)
    }
    prior = {(r["model"], r["input"]): r["spearman"] for r in lds if r["estimator"] == "atp"}
    at_zero = {
        (r["model"], r["input"]): r["spearman"]
        for r in lds
        if r["estimator"] == "gradient_prior" and r["n_train"] == "0"
    }
    assert prior == at_zero
    values = np.array([[float(r["spearman"]), float(r["pearson"])] for r in lds])
    assert np.isfinite(values).all() and (np.abs(values) <= 1).all()
    # The largest fit of every estimator predicts held-out margins clearly better than chance.
    for estimator in config["fit"]["estimators"]:
        top = [float(r["spearman"]) for r in lds if r["estimator"] == estimator and r["n_train"] == "240"]
        assert np.mean(top) > 0.3, estimator
    passes = {r["estimator"]: int(r["passes"]) for r in lds if r["estimator"] in baselines}
    # A prior: 3 passes per point (forward and backward), 1 more for the unablated margin away from it.
    # exact_top: one more pass per unit it measures, and one unablated.
    expected = {
        "atp": 3,
        "atp_relu": 3,
        "atp_masks_2": 3 * 2 + 1,
        "atp_relu_top_4": 3 + 4 + 1,
        "loo": 8 + 16 + 16 * 2 + 16,
    }
    assert passes == expected
    # The cost of an estimator with a prior adds the prior's passes to its masks.
    assert {int(r["passes"]) - int(r["n_train"]) for r in lds if r["estimator"] == "gradient_prior"} == {3}
    assert all(r["passes"] == r["n_train"] for r in lds if r["estimator"] == "coar")
    # Several candidate priors: every one is computed, so their costs add up (3 + 7).
    assert {int(r["passes"]) - int(r["n_train"]) for r in lds if r["estimator"] == "gradient_prior_lasso"} == {10}
    ood = read_csv(study / STUDY / "lds_ood.csv")
    assert list(ood[0]) == [
        "estimator",
        "ablation_rate",
        "model",
        "replicate",
        "n_train",
        "passes",
        "input",
        "spearman",
        "pearson",
    ]
    assert {float(r["ablation_rate"]) for r in ood} == set(config["sampling"]["ood"]["ablation_rates"])
    assert len(ood) == len(lds) * len(config["sampling"]["ood"]["ablation_rates"])
    summary = read_csv(study / STUDY / "summary.csv")
    assert list(summary[0])[:4] == ["estimator", "target_lds", "ablations_needed", "reduction_vs_coar"]
    assert {r["estimator"] for r in summary} == set(config["fit"]["estimators"]) | set(baselines)
    for row in summary:
        if row["ablations_needed"] and row["estimator"] not in baselines:
            smallest = 3 if row["estimator"] == "gradient_prior" else 40  # a prior alone may reach a target
            assert smallest <= float(row["ablations_needed"]) <= 250
        if row["estimator"] == "coar" and row["ablations_needed"]:
            assert float(row["reduction_vs_coar"]) == 0
    markdown = (study / STUDY / "summary.md").read_text()
    assert "| method | passes needed | vs coar | vs ls_early_stopped | vs best tuned linear |" in markdown
    assert "## Fit quality" in markdown and "## Where the curves dip" in markdown
    rates = " | ".join(f"at rate {rate:g}" for rate in config["sampling"]["ood"]["ablation_rates"])
    assert "## Mean LDS" in markdown and f"| method | passes | LDS | {rates} |" in markdown
    fits = read_csv(study / STUDY / "m1/lds/relu_collapse.fits.csv")
    columns = ["estimator", "model", "replicate", "n_train", "input", "failed", "constant", "calibration", "prior"]
    assert list(fits[0]) == columns
    assert len(fits) == n_inputs * draws and all(r["calibration"] for r in fits) and fits[0]["model"] == "1"
    # each input's prior: the one gradient_prior starts from, and gradient_prior_lasso's choice of two
    assert {r["prior"] for r in read_csv(study / STUDY / "m0/lds/gradient_prior.fits.csv")} == {"atp"}
    assert {r["prior"] for r in read_csv(study / STUDY / "m0/lds/gradient_prior_lasso.fits.csv")} <= {
        "atp",
        "atp_masks_2",
    }
    assert "## Priors chosen on validation" in markdown and "`gradient_prior_lasso`:" in markdown
    assert "each resample drawing the" in markdown and f"{n_models} independently trained models and up to" in markdown
    assert "- atp against leave-one-out" in markdown and "## Cheapest method per target" in markdown
    assert "| module | components | atp | atp_relu | atp_masks_2 |" in markdown
    for ext in ("png", "pdf"):
        figure = study / STUDY / f"figures/lds_vs_ablations.{ext}"
        assert figure.stat().st_size > 10_000
    assert (study / STUDY / "figures/lds_headline.png").stat().st_size > 10_000
    seeds = []
    for m in range(n_models):  # independently trained models
        metrics = yaml.safe_load((study / STUDY / f"m{m}/model/metrics.json").read_text())
        assert metrics["test_accuracy"] > 0.5 and metrics["n_units"] == 8 + 16 + 16 * 2 + 16
        seeds.append(metrics["provenance"]["config"]["model"]["train"]["seed"])
    assert seeds == [config["model"]["train"]["seed"] + m for m in range(n_models)]
    names = (study / STUDY / "m0/model/components.tsv").read_text().splitlines()
    assert names[0] == "index\tname\tmodule\tunit\tkind" and names[1].split("\t")[1:] == [
        "conv1:0",
        "conv1",
        "0",
        "channels",
    ]
    for rule in ("m0/train_model", "plot_lds", "m1/fit_estimator/ridge"):
        assert (study / f"logs/tiny/{rule}.log").exists()
    assert (study / "logs/tiny/m0/benchmarks/fit_estimator/ridge.tsv").read_text().startswith("s\th:m:s")
    # relu_collapse_raw trains relu_collapse's networks: fitted in its job, with one training, and copied out.
    shared = study / STUDY / "m1/fits/relu_collapse/shared/relu_collapse_raw"
    assert sorted(p.name for p in (study / STUDY / "m1/fits/relu_collapse_raw").glob("n*.zarr")) == sorted(
        p.name for p in shared.glob("n*.zarr")
    )
    raw = load_fit(study / STUDY / "m1/fits/relu_collapse_raw/n240.r0.zarr")
    assert raw.attrs["estimator"] == "relu_collapse_raw" and raw.attrs["trained_with"] == [
        "relu_collapse",
        "relu_collapse_raw",
    ]
    assert not (study / "logs/tiny/m1/fit_estimator/relu_collapse_raw.log").exists()


def test_stores_carry_coordinates_and_the_top_components_are_named(study):
    """Ablation and fit stores label their axes (component names, input ids, labels); the table names effects."""
    names = [line.split("\t")[1] for line in (study / STUDY / "m0/model/components.tsv").read_text().splitlines()[1:]]
    with np.load(study / STUDY / "inputs.npz") as inputs:
        ids, labels = inputs["index"], inputs["labels"]
    for store in ("m0/ablations/train.zarr", "m0/fits/ridge/n240.r0.zarr", "m0/baselines/loo.zarr"):
        coords = read_coordinates(study / STUDY / store)
        assert coords["components"].tolist() == names, store
        np.testing.assert_array_equal(coords["inputs"], ids)
        np.testing.assert_array_equal(coords["labels"], labels)
    rows = read_csv(study / STUDY / "m1/top_components.csv")
    assert list(rows[0]) == ["method", "n_train", "input", "label", "rank", "component", "effect"]
    assert {r["method"] for r in rows} == {"loo"} and len(rows) == 10 * len(ids)
    loo = load_fit(study / STUDY / "m1/baselines/loo.zarr")
    first = [r for r in rows if r["input"] == str(ids[0])]
    assert [int(r["rank"]) for r in first] == list(range(1, 11))
    effects = [abs(float(r["effect"])) for r in first]
    assert effects == sorted(effects, reverse=True)
    assert np.isclose(effects[0], np.abs(loo.coef[0]).max(), rtol=1e-5)
    assert first[0]["component"] == names[int(np.abs(loo.coef[0]).argmax())]


def test_second_run_has_nothing_to_do_and_figures_regenerate_alone(study):
    assert "Nothing to be done" in snakemake(study, "--cores", "2").stdout
    shutil.rmtree(study / STUDY / "figures")
    assert _planned(study) == {"plot_lds", "all"}
    snakemake(study, "--cores", "2")
    assert (study / STUDY / "figures/lds_vs_ablations.png").exists()


def test_report_holds_figure_and_tables(study):
    snakemake(study, "--report", f"{STUDY}/report.html")
    html = (study / STUDY / "report.html").read_text(errors="ignore")
    for name in ("lds_vs_ablations.png", "summary.csv", "lds.csv"):
        assert name in html


def test_sweep_selects_settings_on_validation(study):
    config = yaml.safe_load((study / "config/tiny.yaml").read_text())
    snakemake(study, "sweep", "--cores", "2")
    rows = read_csv(study / STUDY / "m0/sweep/selection.csv")
    settings = set(config["sweep"]["settings"])
    assert {r["setting"] for r in rows} == settings
    for n in config["fit"]["train_sizes"]:
        at_n = [r for r in rows if int(r["n_train"]) == n]
        chosen = [r for r in at_n if r["selected"] == "True"]
        assert len(chosen) == 1
        assert float(chosen[0]["validation_spearman"]) == max(float(r["validation_spearman"]) for r in at_n)
        by_mse = [r for r in at_n if r["selected_by_mse"] == "True"]
        assert float(by_mse[0]["validation_mse"]) == min(float(r["validation_mse"]) for r in at_n)
    assert (study / STUDY / "m0/sweep/lds_vs_ablations.png").stat().st_size > 10_000


def test_editing_covers_every_method_and_k_and_leave_one_out_predicts_single_ablations(study):
    config = yaml.safe_load((study / "config/tiny.yaml").read_text())
    top_k = read_csv(study / STUDY / "editing/top_k.csv")
    methods = {*config["fit"]["estimators"], *config["fit"]["priors"], *config["fit"]["baselines"], "random"}
    assert {r["estimator"] for r in top_k} == methods
    assert {int(r["k"]) for r in top_k} == set(config["editing"]["ks"])
    assert {r["model"] for r in top_k} == {str(m) for m in range(config["replicates"]["models"])}
    # Leave-one-out's effect of a component is the true change of ablating it alone.
    single = [r for r in top_k if r["estimator"] == "loo" and r["k"] == "1"]
    assert len(single) == config["inputs"]["n"] * config["replicates"]["models"]
    for r in single:
        assert abs(float(r["true_change"]) - float(r["predicted_change"])) < 1e-3 * (1 + abs(float(r["true_change"])))
    assert all(r["predicted_change"] == "nan" for r in top_k if r["estimator"] == "random")
    forget = read_csv(study / STUDY / "editing/forget.csv")
    unedited = {(r["model"], r["target"]): r["class_accuracy"] for r in forget if r["k"] == "0"}
    assert all(unedited[(r["model"], r["target"])] == r["class_accuracy"] for r in forget if r["k"] == "0")
    assert {r["estimator"] for r in forget} == methods - {"random"}
    summary = (study / STUDY / "summary.md").read_text()
    assert "## Editing with attributions" in summary and "between mean LDS and the true drop" in summary
    for figure in ("top_k", "fix", "forget"):
        assert (study / STUDY / f"editing/{figure}.png").stat().st_size > 10_000


def test_mistakes_are_misclassified_attributed_under_the_training_masks_and_fixed_locally(study):
    config = yaml.safe_load((study / "config/tiny.yaml").read_text())
    models = config["replicates"]["models"]
    fix = read_csv(study / STUDY / "editing/fix.csv")
    methods = {*config["fit"]["estimators"], *config["fit"]["priors"], *config["fit"]["baselines"], "random"}
    assert {r["estimator"] for r in fix} == methods
    attributed = np.load(study / STUDY / "inputs.npz")["index"]
    for model in range(models):
        mistakes = study / STUDY / f"m{model}/mistakes"
        ids = np.load(mistakes / "inputs.npz")["index"]
        assert 0 < len(ids) <= config["editing"]["mistakes"]["n"] and not set(ids) & set(attributed)
        # the same training masks as the attributed inputs', up to the largest train size
        masks, margins = read_rows(mistakes / "ablations/train.zarr")
        own, _ = read_rows(study / STUDY / f"m{model}/ablations/train.zarr")
        assert masks.shape[0] == max(config["fit"]["train_sizes"]) and (masks == own[: len(masks)]).all()
        assert margins.shape == (len(masks), len(ids))
        # every one misclassified: leave-one-out's intercept is each input's unablated margin
        assert (load_fit(mistakes / "baselines/loo.zarr").intercept <= 0).all()
        rows = [r for r in fix if r["model"] == str(model)]
        single = [r for r in rows if r["estimator"] == "loo" and r["k"] == "1"]
        assert len(single) == len(ids)
        for r in single:  # leave-one-out predicts a single ablation exactly; fixed iff the margin turns positive
            assert abs(float(r["true_change"]) - float(r["predicted_change"])) < 1e-3 * (
                1 + abs(float(r["true_change"]))
            )
        unedited = {float(r["other_accuracy"]) for r in rows if r["estimator"] == "random" and r["k"] == "0"}
        assert len(unedited) == 1 and 0 < unedited.pop() <= 1
        largest = [
            r for r in rows if r["estimator"] == "coar" and int(r["n_train"]) == max(config["fit"]["train_sizes"])
        ]
        assert largest and all(0 <= float(r["other_accuracy"]) <= 1 for r in largest)
        smaller = [
            r for r in rows if r["estimator"] == "coar" and int(r["n_train"]) < max(config["fit"]["train_sizes"])
        ]
        assert smaller and all(r["other_accuracy"] == "nan" for r in smaller)


def _sampling_targets() -> list[str]:
    return [f"{STUDY}/m0/ablations/{split}.summary.json" for split in ("train", "heldout")]


def test_interrupted_serial_sampling_resumes_to_the_parallel_arrays(study, tmp_path):
    workdir = copy_repo(tmp_path / "serial")
    # Same trained model (training itself depends on the thread count); sampling is what is compared.
    shutil.copytree(study / STUDY / "m0/model", workdir / STUDY / "m0/model")
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", *_sampling_targets(), "--configfile", "config/tiny.yaml"]
    log = open(tmp_path / "interrupted.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def log_text() -> str:
        log.flush()
        return (tmp_path / "interrupted.log").read_text()[-5000:]

    def started_after_a_finished_shard() -> bool:
        # Snakemake prints a job's rule as it starts the job and "Finished jobid" once its outputs are
        # final; on one core one job runs at a time, so a shard started after a finished one is running
        # (from its Python's start to its flag: a wider window than the shard's own log file gives).
        text = (tmp_path / "interrupted.log").read_text()
        started = text.count("rule sample_ablation_shard:")
        return started > text.count("(Rule: sample_ablation_shard)") >= 1

    deadline = time.time() + 300
    while not started_after_a_finished_shard():
        if proc.poll() is not None or time.time() > deadline:
            raise AssertionError("sampling ended before it could be interrupted:\n" + log_text())
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGTERM)  # as a scheduler pre-empting the whole job tree
    proc.wait(timeout=120)
    log.close()
    done = {p: p.stat().st_mtime_ns for p in workdir.glob(f"{STUDY}/m0/ablations/*.shards/*.json")}
    assert 0 < len(done) < 6, "the interruption must fall between shards"

    snakemake(workdir, "--unlock")
    snakemake(workdir, "--cores", "1", "--rerun-incomplete", *_sampling_targets())
    assert {p: p.stat().st_mtime_ns for p in done} == done  # finished shards were not recomputed
    assert len(list(workdir.glob(f"{STUDY}/m0/ablations/*.shards/*.json"))) == 6
    for split in ("train", "heldout"):
        serial = read_rows(workdir / STUDY / f"m0/ablations/{split}.zarr")
        parallel = read_rows(study / STUDY / f"m0/ablations/{split}.zarr")
        for a, b in zip(serial, parallel, strict=True):
            np.testing.assert_array_equal(a, b)


def test_damage_found_by_a_reader_or_by_verify_is_repaired_by_the_next_plain_run_to_the_same_bytes(study, tmp_path):
    workdir = copy_repo(tmp_path / "repair")
    shutil.copytree(study / STUDY / "m0/model", workdir / STUDY / "m0/model")
    train = workdir / STUDY / "m0/ablations/train.zarr"
    fits = [f"{STUDY}/m0/fits/ridge", f"{STUDY}/m0/fits/coar"]
    snakemake(workdir, "--cores", "1", *fits)

    def files() -> dict[str, bytes]:
        found = train.parent.rglob("train.*/**/*")  # the store and its manifests
        return {str(f.relative_to(train.parent)): f.read_bytes() for f in found if f.is_file()}

    def coar() -> list[np.ndarray]:
        return [load_fit(store).coef for store in sorted((workdir / fits[1]).glob("*.zarr"))]

    intact, intact_coar = files(), coar()
    others = {p: p.stat().st_mtime_ns for p in train.with_suffix(".shards").glob("*.json") if p.stem != "1"}
    (train / "masks/c/1/0").unlink()  # read back as nothing ablated: only the recomputed masks show it
    found = snakemake(workdir, "--cores", "1", fits[0], "--forcerun", fits[0], check=False)
    assert found.returncode != 0
    error = (workdir / "logs/tiny/m0/fit_estimator/ridge.log").read_text()
    assert "shard 1 of" in error and "differs from the digests of its manifest" in error
    assert "marked" in error and "train.summary.json to be rebuilt" in error
    assert not (workdir / STUDY / "m0/ablations/train.shards/1.json").exists()
    # A plain run resamples shard 1 and refits what used it: ridge (its failed fit) and coar (up to date before).
    snakemake(workdir, "--cores", "1", *fits)
    assert files() == intact
    assert others and {p: p.stat().st_mtime_ns for p in others} == others  # only shard 1 was sampled again
    assert all(np.array_equal(a, b) for a, b in zip(coar(), intact_coar, strict=True))
    # verify reads every finished store and rebuilds nothing intact
    snakemake(workdir, "--cores", "1", "verify")
    assert "verified: all intact" in _log(workdir, "verify")
    assert _planned(workdir, *fits) == set()
    # a fit's diagnostics chunk deleted (it would read back as its fill value): verify names it, the next run refits
    (workdir / fits[0] / "n40.r0.zarr/alpha/c/0").unlink()
    assert snakemake(workdir, "--cores", "1", "verify", check=False).returncode != 0
    assert "array 'alpha' differs from the digest" in _log(workdir, "verify")
    assert _planned(workdir, *fits) == {"fit_estimator"}
    snakemake(workdir, "--cores", "1", *fits)
    load_fit(workdir / fits[0] / "n40.r0.zarr")


def _planned(workdir: Path, *targets: str) -> set[str]:
    """The rules a dry run of ``targets`` (the default target when none) would run jobs of."""
    dry = snakemake(workdir, *targets, "-n", "--quiet", "rules")  # targets first: --quiet takes several
    jobs = {line.split()[0] for line in dry.stdout.splitlines() if line.strip() and line.split()[-1].isdigit()}
    return jobs - {"job", "total"}


def _log(workdir: Path, job: str) -> str:
    return (workdir / "logs/tiny" / f"{job}.log").read_text()


def test_a_bad_config_fails_before_any_job_with_every_fault_named(tmp_path):
    """Snakemake reports the library's checks (tests/test_configcheck.py holds one case per check)."""
    workdir = copy_repo(tmp_path)
    config = yaml.safe_load((workdir / "config/tiny.yaml").read_text())
    config["sampling"]["heldout"]["n_masks"] = 2
    config["sweep"]["estimator"] = "coar_xl"
    (workdir / "config/tiny.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(workdir, "--cores", "1", check=False)
    assert result.returncode != 0
    assert "sampling.heldout.n_masks is 2" in result.stdout and "sweep.estimator 'coar_xl'" in result.stdout
    assert not (workdir / "results").exists()


def test_reduced_gpu_scale_config_runs_on_cpu(tmp_path):
    """config/digits_resnet18.yaml at toy sizes (same data, architecture and estimators' settings) runs end to end."""
    workdir = copy_repo(tmp_path / "repo")
    cfg = yaml.safe_load((REPO / "config/digits_resnet18.yaml").read_text())
    cfg.update(study="reduced", device="cpu")
    cfg["inputs"]["n"] = 6
    cfg["model"]["train"]["epochs"] = 1
    sampling = cfg["sampling"]
    sampling.update(shard_size=20, batch_size=512)
    sampling["train"]["n_masks"], sampling["heldout"]["n_masks"] = 40, 40  # the fewest held-out masks: 30
    del sampling["ood"]  # out-of-distribution scoring is the tiny study's to test
    cfg["fit"]["train_sizes"] = [40]
    # COAR and an estimator that takes the prior: each fit decomposes a 4,800 x 4,800 Gram matrix (tens of seconds)
    cfg["fit"]["estimators"] = {e: cfg["fit"]["estimators"][e] for e in ("coar", "gradient_prior")}
    cfg["fit"]["estimators"]["gradient_prior"]["prior"] = "atp"
    cfg["analysis"] |= {"references": ["coar"], "linear_baselines": []}  # only what is fitted here
    cfg["fit"]["priors"], cfg["fit"]["baselines"] = {"atp": {"point": "unablated"}}, []
    # Editing on this architecture, at toy cost: forgetting runs methods x classes x ks x images passes.
    mistakes = {**cfg["editing"]["mistakes"], "n": 3, "pool": 60, "score_images": 10}
    cfg["editing"] = {"ks": [1, 10], "random_draws": 1, "forget_images": 20, "mistakes": mistakes}
    (workdir / "config/reduced.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(workdir, "--cores", "2", configfile="config/reduced.yaml")
    metrics = yaml.safe_load((workdir / "results/reduced/m0/model/metrics.json").read_text())
    assert metrics["n_units"] == 4800 and metrics["n_test"] == 1078
    lds = read_csv(workdir / "results/reduced/lds.csv")
    assert len(lds) == (2 + 1 + 1) * 6  # two estimators at 40 masks, the prior's point, the baseline
    masks, margins = read_rows(workdir / "results/reduced/m0/ablations/train.zarr")
    assert masks.shape == (40, 4800) and margins.shape == (40, 6) and np.isfinite(margins).all()
    assert {r["k"] for r in read_csv(workdir / "results/reduced/editing/top_k.csv")} == {"1", "10"}


@pytest.mark.parametrize(
    ("config", "components", "ablation"),
    [
        ("digits_vit", {"heads": 3 * 4, "neurons": 3 * 64}, "mean"),
        ("text_transformer", {"heads": 2 * 4, "neurons": 2 * 128}, "zero"),
    ],
)
def test_reduced_transformer_studies_attribute_heads_and_neurons_end_to_end(tmp_path, config, components, ablation):
    """The two transformer studies at toy sizes: heads and MLP neurons sampled, fitted, scored and edited."""
    workdir = copy_repo(tmp_path / "repo")
    cfg = yaml.safe_load((REPO / f"config/{config}.yaml").read_text())
    cfg.update(study="reduced", device="cpu", replicates={"models": 1, "masks": 1})  # the tiny study runs them
    cfg["components"]["ablation"] = ablation
    cfg["inputs"]["n"] = 6
    cfg["model"]["train"]["epochs"] = 1
    sampling = cfg["sampling"]
    sampling.update(shard_size=40)
    sampling["train"]["n_masks"], sampling["heldout"]["n_masks"] = 80, 40
    sampling["ood"].update(ablation_rates=[0.1], n_masks=40)
    cfg["fit"]["train_sizes"] = [40, 80]
    cfg["fit"]["estimators"] = {e: cfg["fit"]["estimators"][e] for e in ("coar", "ridge", "gradient_prior")}
    cfg["analysis"] |= {"references": ["coar"], "linear_baselines": ["ridge"]}
    cfg["fit"]["priors"] = {name: cfg["fit"]["priors"][name] for name in ("atp", "atp_mean")}
    mistakes = {**cfg["editing"]["mistakes"], "n": 3, "score_images": 20}
    cfg["editing"] = {"ks": [1, 5], "random_draws": 1, "forget_images": 20, "mistakes": mistakes}
    (workdir / "config/reduced.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(workdir, "--cores", "2", configfile="config/reduced.yaml")
    rows = [line.split("\t") for line in (workdir / "results/reduced/m0/model/components.tsv").read_text().splitlines()]
    kinds = [row[4] for row in rows[1:]]
    assert {kind: kinds.count(kind) for kind in set(kinds)} == components
    heads = [row[1] for row in rows[1:] if row[4] == "heads"]
    assert heads[0].endswith(":head0") and len(set(heads)) == components["heads"]
    lds = read_csv(workdir / "results/reduced/lds.csv")
    assert len(lds) == (3 * 2 + 2 + 1) * 6  # three estimators at two sizes, two priors, leave-one-out
    masks, margins = read_rows(workdir / "results/reduced/m0/ablations/train.zarr")
    assert masks.shape == (80, sum(components.values())) and np.isfinite(margins).all()
    assert "## Editing with attributions" in (workdir / "results/reduced/summary.md").read_text()
    fix = read_csv(workdir / "results/reduced/editing/fix.csv")
    assert {r["estimator"] for r in fix} == {"coar", "ridge", "gradient_prior", "atp", "atp_mean", "loo", "random"}
    _, loaded = load_checkpoint(workdir / "results/reduced/m0/model/model.pt")
    store = zarr.open_group(str(workdir / "results/reduced/m0/ablations/train.zarr"), mode="r")
    assert loaded.ablation == ablation and store.attrs["config"]["components"]["ablation"] == ablation


def test_reduced_feature_and_data_studies_run_the_same_stages_and_share_one_figure(tmp_path):
    """config/digits_features.yaml and config/digits_data.yaml at toy sizes, then the unified figure of both."""
    workdir = copy_repo(tmp_path / "repo")
    for config, study in (("digits_features", "reduced_features"), ("digits_data", "reduced_data")):
        cfg = yaml.safe_load((REPO / f"config/{config}.yaml").read_text())
        cfg.update(study=study, device="cpu", replicates={"models": 1, "masks": 1})
        cfg["inputs"]["n"] = 6
        sampling = cfg["sampling"]
        sampling.update(shard_size=40)
        sampling["train"]["n_masks"], sampling["heldout"]["n_masks"] = 80, 40
        sampling.pop("ood", None)
        cfg["fit"]["train_sizes"] = [40, 80]
        cfg["fit"]["estimators"] = {e: cfg["fit"]["estimators"][e] for e in ("coar", "ridge", "gradient_prior")}
        cfg["analysis"] |= {"references": ["coar"], "linear_baselines": ["ridge"]}
        cfg["unified"] = {"studies": {"reduced_features": "features", "reduced_data": "data"}}
        if config == "digits_features":
            cfg["model"]["train"]["epochs"] = 1
            cfg["fit"]["priors"] = {name: cfg["fit"]["priors"][name] for name in ("atp", "atp_mean")}
            cfg["fit"]["estimators"]["gradient_prior"]["prior"] = ["atp", "atp_mean"]
            mistakes = {**cfg["editing"]["mistakes"], "n": 3, "pool": 60, "score_images": 20}
            cfg["editing"] = {"ks": [1, 5], "random_draws": 1, "forget_images": 20, "mistakes": mistakes}
        else:
            cfg["examples"]["n"] = 30
            cfg["model"]["train"]["steps"] = 20
        (workdir / f"config/{study}.yaml").write_text(yaml.safe_dump(cfg))
        snakemake(workdir, "--cores", "2", configfile=f"config/{study}.yaml")
    rows = [
        line.split("\t")
        for line in (workdir / "results/reduced_features/m0/model/components.tsv").read_text().splitlines()
    ]
    assert rows[1][1:] == ["patch:r0c0", "patch", "r0c0", "patches"] and len(rows) == 1 + 64
    rows = [
        line.split("\t") for line in (workdir / "results/reduced_data/m0/model/components.tsv").read_text().splitlines()
    ]
    assert len(rows) == 1 + 30 and {row[4] for row in rows[1:]} == {"examples"}
    # three estimators at two sizes and leave-one-out; features: two priors; data: the influence prior, and
    # gradient_prior's point at zero masks (its one prior alone)
    for study in ("reduced_features", "reduced_data"):
        lds = read_csv(workdir / f"results/{study}/lds.csv")
        assert len(lds) == (3 * 2 + 2 + 1) * 6
        assert {r["estimator"] for r in lds} >= {"coar", "ridge", "gradient_prior", "loo"}
    data_lds = read_csv(workdir / "results/reduced_data/lds.csv")
    assert {r["passes"] for r in data_lds if r["estimator"] == "influence"} == {"0"}  # trains no model
    assert {r["passes"] for r in data_lds if r["estimator"] == "loo"} == {"30"}  # one model per left-out example
    masks, margins = read_rows(workdir / "results/reduced_data/m0/ablations/train.zarr")
    assert masks.shape == (80, 30) and 0.3 < masks.mean() < 0.7 and np.isfinite(margins).all()
    _, units = load_checkpoint(workdir / "results/reduced_data/m0/model/model.pt")
    assert len(units) == 30 and units.recipe.steps == 20
    assert (workdir / "results/reduced_features/editing/top_k.csv").exists()  # the deletion curve
    assert not (workdir / "results/reduced_data/editing").exists()
    snakemake(workdir, "--cores", "1", "unified", configfile="config/reduced_data.yaml")
    assert (workdir / "results/unified/lds_vs_perturbations.png").stat().st_size > 10_000


def test_parsing_the_workflow_imports_no_torch(tmp_path):
    """A dry run (and so every job's parse on a cluster) plans the study without importing torch or scikit-learn."""
    workdir = copy_repo(tmp_path)
    probe = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('HEAVY', sorted({m.split('.')[0] for m in sys.modules} "
        "& {'torch', 'torchvision', 'sklearn'})))\n"
        "from snakemake.cli import main\n"
        "sys.argv = ['snakemake', '-n', '--cores', '1', '--configfile', 'config/tiny.yaml']\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "sample_ablation_shard" in result.stdout  # it did plan the jobs
    assert "HEAVY []" in result.stdout
