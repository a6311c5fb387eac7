"""The SLURM profile, run end to end on fake SLURM programs; dry runs of the paper-scale configs."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
import yaml
from test_workflow import REPO, STUDY, copy_repo, read_csv, snakemake

pytestmark = pytest.mark.workflow  # the slow tier: `make test-fast` leaves it out

FAKE_SLURM = REPO / "tests/fake_slurm"
GPU_RULES = {"train_model", "sample_ablation_shard", "fit_estimator", "fit_baseline"}


def sbatch_calls(state: Path) -> dict[str, list[list[str]]]:
    """The logged sbatch argument lists, by rule (from the ``--comment rule_<name>...`` the plugin sets)."""
    calls: dict[str, list[list[str]]] = {}
    for path in sorted((state / "calls").iterdir(), key=lambda p: int(p.name)):
        args = shlex.split(path.read_text())
        comment = args[args.index("--comment") + 1]
        rule = comment.removeprefix("rule_").split("_wildcards_")[0]
        calls.setdefault(rule, []).append(args)
    return calls


def test_tiny_study_runs_through_the_slurm_profile_on_fake_slurm(tmp_path):
    workdir = copy_repo(tmp_path / "repo")
    config = yaml.safe_load((workdir / "config/tiny.yaml").read_text())
    # The profile is under test here, not the replicates or every estimator: one model and draw, a method
    # of each kind (moments, a 2-layer network, a prior and an estimator that takes it, leave-one-out).
    config["replicates"] = {"models": 1, "masks": 1}
    kept = ("coar", "relu_collapse", "gradient_prior")
    config["fit"]["estimators"] = {e: config["fit"]["estimators"][e] for e in kept}
    config["fit"]["priors"] = {"atp": config["fit"]["priors"]["atp"]}
    config["fit"]["baselines"] = []
    del config["sampling"]["ood"]
    config["sampling"]["shard_size"] = 120  # fewer sampling jobs: each is one submission like the others
    config["editing"] = {"enabled": False}  # GPU rules of their own: every one is checked statically below
    (workdir / "config/tiny.yaml").write_text(yaml.safe_dump(config))
    state = tmp_path / "slurm_state"
    state.mkdir()
    env = {**os.environ, "PATH": f"{FAKE_SLURM}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM_DIR": str(state)}
    snakemake(workdir, "--profile", "slurm", "--slurm-init-seconds-before-status-checks", "1", env=env)
    assert len(read_csv(workdir / STUDY / "summary.csv")) > 0
    assert (workdir / STUDY / "figures/lds_vs_ablations.png").stat().st_size > 10_000
    calls = sbatch_calls(state)
    profile = yaml.safe_load((REPO / "slurm/config.yaml").read_text())
    account = profile["default-resources"]["slurm_account"]
    cpu_partition = profile["default-resources"]["slurm_partition"]
    gpu_partition = profile["set-resources"]["train_model"]["slurm_partition"]
    assert set(calls) >= GPU_RULES | {"summarize_lds", "plot_lds", "score_lds"}
    assert not set(calls) & {"all", "init_ablation_store"}, "local rules run in the main process"
    for rule, rule_calls in calls.items():
        for args in rule_calls:
            line = " ".join(args)
            assert f"-A {account}" in line or f"--account {account}" in line, line
            if rule in GPU_RULES:
                assert "--gpus=1" in line or "--gres=gpu:1" in line, line
                assert gpu_partition in line, line
            else:
                assert "gpu" not in line.replace(gpu_partition, ""), line
                assert cpu_partition in line, line
    n_models, n_estimators = config["replicates"]["models"], len(config["fit"]["estimators"])
    # One job per shard and model (240 and 120 masks by 120), one fit job per estimator and model.
    assert len(calls["sample_ablation_shard"]) == (2 + 1) * n_models
    assert len(calls["fit_estimator"]) == n_estimators * n_models
    assert list((workdir / "logs/slurm").rglob("*.log")), "the SLURM job logs go to logs/slurm/"


def test_every_rule_that_can_hold_a_gpu_asks_the_profile_for_one():
    profile = yaml.safe_load((REPO / "slurm/config.yaml").read_text())["set-resources"]
    gpu_rules, derived = set(), []
    for path in (REPO / "workflow/rules").glob("*.smk"):
        text = path.read_text()
        for block in re.split(r"^rule ", text, flags=re.M)[1:]:
            if "gpu=GPU_JOBS" in block:
                gpu_rules.add(block.split(":", 1)[0])
        derived += re.findall(r"^use rule (\w+) as (\w+)", text, flags=re.M)
    gpu_rules |= {new for base, new in derived if base in gpu_rules}  # `use rule` keeps the resources
    assert GPU_RULES | {"edit_top_k", "forget_class", "fix_random", "fit_mistakes_estimator"} <= gpu_rules
    for rule in gpu_rules:
        assert profile.get(rule, {}).get("gpu") == 1, f"{rule} holds a GPU locally but not in the SLURM profile"


def test_no_default_profile_can_override_the_slurm_resources():
    for folder in ("profiles/default", "workflow/profiles/default"):
        assert not (REPO / folder).exists(), f"{folder} would be loaded automatically and replace default-resources"


@pytest.mark.parametrize("config", ["cifar10_resnet18", "imagenet_resnet50", "imagenet_vit_b16", "digits_resnet18"])
def test_dry_run_of_the_paper_scale_configs_resolves_the_job_graph(tmp_path, config):
    workdir = copy_repo(tmp_path / "repo")
    empty_cache = {**os.environ, "TORCH_HOME": str(tmp_path / "torch")}  # no weights there yet
    args = ("-n", "--quiet", "rules", "--profile", "slurm")
    result = snakemake(workdir, *args, configfile=f"config/{config}.yaml", env=empty_cache)
    cfg = yaml.safe_load((REPO / f"config/{config}.yaml").read_text())
    counts = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    shards = sum(
        -(-n // cfg["sampling"]["shard_size"])
        for n in [cfg["sampling"]["train"]["n_masks"], cfg["sampling"]["heldout"]["n_masks"]]
        + [cfg["sampling"]["ood"]["n_masks"]] * len(cfg["sampling"]["ood"]["ablation_rates"])
    )
    assert counts["sample_ablation_shard"] == shards
    # Every size and draw in one job; estimators that train the same networks in one job, their fits copied out.
    assert counts["fit_estimator"] + counts.get("copy_shared_fit", 0) == len(cfg["fit"]["estimators"])
    assert counts["train_model"] == 1
    downloads = {  # listed before any job, with their sizes: none of them is in the fresh copy
        "cifar10_resnet18": "downloads CIFAR-10 (python batches): 162.6 MiB from https://",
        "imagenet_resnet50": "downloads ResNet50_Weights.IMAGENET1K_V1: 97.8 MiB from https://",
        "imagenet_vit_b16": "downloads ViT_B_16_Weights.IMAGENET1K_V1: 330.3 MiB from https://",
        "digits_resnet18": None,
    }[config]
    assert downloads is None and "download" not in result.stdout or downloads in result.stdout
