from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml")

STUDY = config["study"]
RESULTS = f"results/{STUDY}"
LOGS = f"logs/{STUDY}"
SPLITS = ["train", "heldout"]
ESTIMATORS = list(config["fit"]["estimators"])
TRAIN_SIZES = sorted(config["fit"]["train_sizes"])
ENV = "../../envs/study.yaml"


def _check_config():
    """Cross-field checks that a JSON schema cannot express; fail before any job runs."""
    n_train = config["sampling"]["train"]["n_masks"]
    too_big = [n for n in TRAIN_SIZES if n > n_train]
    if too_big:
        raise ValueError(
            f"config fit.train_sizes {too_big} exceed sampling.train.n_masks ({n_train}): "
            "sample more masks or drop those sizes"
        )
    arch = config["model"]["arch"]
    if len(arch["widths"]) != len(arch["blocks"]):
        raise ValueError(
            "config model.arch.widths and model.arch.blocks must have the same length"
        )


_check_config()


def n_shards(split):
    """Number of shard jobs of a sampling split."""
    sampling = config["sampling"]
    return -(-sampling[split]["n_masks"] // sampling["shard_size"])


def shard_flags(wildcards):
    """Per-shard summaries of a split: one per shard job."""
    return expand(
        f"{RESULTS}/ablations/{wildcards.split}.shards/{{shard}}.json",
        shard=range(n_shards(wildcards.split)),
    )


def store_provenance(wildcards):
    """The config sections that determine an ablation store's contents."""
    sampling = config["sampling"]
    return {
        "study": STUDY,
        "split": wildcards.split,
        "alpha": sampling["alpha"],
        "seed": sampling[wildcards.split]["seed"],
        **{key: config[key] for key in ("data", "model", "components", "inputs")},
    }


def final_targets():
    """The default targets: tables, figures and the model metrics."""
    return [
        f"{RESULTS}/model/metrics.json",
        f"{RESULTS}/lds.csv",
        f"{RESULTS}/summary.csv",
        f"{RESULTS}/summary.md",
        f"{RESULTS}/figures/lds_vs_ablations.png",
        f"{RESULTS}/figures/lds_vs_ablations.pdf",
    ]
