from snakemake.logging import logger

from pathlib import Path

from compattr.configcheck import estimator_priors as _estimator_priors, load_config, resolve_config, top_method
from compattr.io import source_hash
from compattr.repair import repair_logs as _repair_logs
from compattr.registry import BENCHMARKED, PRIOR_ESTIMATORS, TWO_LAYER_ESTIMATORS, training_groups
from compattr.stores import fit_store_name

# Every fault of the config at once (compattr.configcheck, as `python -m compattr.configcheck` reports them),
# before any job; the workflow then runs the checked config, the schema's defaults filled in.
# Each config file is read again as configcheck reads it: a key given twice is an error, not the last one kept.
for _path in workflow.configfiles:
    load_config(_path)
_checked = resolve_config(config)
for _warning in _checked.warnings:
    logger.warning(_warning)
config.clear()
config.update(_checked.config)

STUDY = config["study"]
# What the outputs are attributed to: components, features (input patches) or data (training examples).
KIND = config["kind"]
# The studies of the unified figure (rule unified), by name, with their kinds.
UNIFIED = config["unified"]["studies"]
RESULTS = f"results/{STUDY}"
LOGS = f"logs/{STUDY}"
# Replicates: independently trained models (model seed = model.train.seed + k), each with its own
# ablation stores, fits and scores under m<k>/; and disjoint draws of training masks per train size.
MODELS = list(range(config["replicates"]["models"]))
MASK_DRAWS = config["replicates"]["masks"]
MODEL_DIR = f"{RESULTS}/m{{model}}"
MODEL_LOGS = f"{LOGS}/m{{model}}"
OOD_RATES = config["sampling"].get("ood", {}).get("ablation_rates", [])
OOD_SPLITS = [f"ood_{rate}" for rate in OOD_RATES]
SPLITS = ["train", "heldout", *OOD_SPLITS]
ESTIMATORS = list(config["fit"]["estimators"])
# First-order priors (gradients in the keep factors; compattr.baselines.first_order_prior), by name.
PRIORS = config["fit"].get("priors", {})
BASELINES = list(config["fit"].get("baselines", []))
# Methods without ablation sampling, each scored alone at its cost: the priors, then leave-one-out.
SAMPLING_FREE = [*PRIORS, *BASELINES]
METHODS = ESTIMATORS + SAMPLING_FREE
# PRIOR_ESTIMATORS (from the library's registry): estimators whose fit takes a first-order prior.
BASELINE_FITS = SAMPLING_FREE
# The fit whose largest effects per input are listed by name (m<k>/top_components.csv): leave-one-out
# when the study computes it, else the first estimator at its largest train size.
TOP = {"k": 10, **config["analysis"].get("top_components", {})}
TOP_METHOD = top_method(config)
TRAIN_SIZES = sorted(config["fit"]["train_sizes"])
ENV = "../../envs/study.yaml"
# GPUs each GPU-able job holds: `--resources gpu=1` caps them locally; the SLURM profile asks for one.
GPU_JOBS = 0 if config["device"] == "cpu" else 1
# Precision, memory format and compilation of the ablated forward passes (ComponentMarginEvaluator).
FORWARD = {key: config["sampling"][key] for key in ("precision", "channels_last", "compile")}


def library(script):
    """A hash of the library code a workflow script runs: as a parameter, a change to that code reruns the job."""
    return source_hash(Path(workflow.basedir) / "workflow" / "scripts" / script)


def repair_logs(output):
    """An input function: the repair log of the job output ``output`` (a pattern) once damage was logged in it.

    A reader that finds a store damaged logs it against the output holding the store (compattr.repair):
    the log is then newer than that output, so the next run rebuilds it and everything built from it.
    """
    return lambda wildcards: _repair_logs(expand(output, **dict(wildcards.items())))


def estimator_priors(estimator):
    """The names of the priors an estimator that takes one starts from (several: it chooses on validation)."""
    return _estimator_priors(config, estimator)


def estimator_params(estimator):
    """An estimator's constructor parameters: its config entry less the workflow's prior setting."""
    return {k: v for k, v in config["fit"]["estimators"][estimator].items() if k != "prior"}


# 2-layer estimators that train the same networks are fitted in one job, with one training: the first
# of each group fits the others too (compattr.estimators.fit_together), and copy_shared_fit copies theirs out.
SHARED_FITS = {
    group[0]: group[1:]
    for group in training_groups({e: estimator_params(e) for e in ESTIMATORS})
    if len(group) > 1
}
FITTED_WITH = {member: lead for lead, members in SHARED_FITS.items() for member in members}


def _announce_downloads():
    """Say, before any job, what the study will download (and how large it is), or what it needs and lacks."""
    from compattr.downloads import dataset_download, weights_download

    data, model = config["data"], config["model"]
    planned = [(dataset_download(**data), "data.download", data.get("download", False))]
    if "weights" in model:
        weights = weights_download(model["arch"]["name"], model["weights"])
        planned.append((weights, "model.download", model.get("download", False)))
    for item, switch, allowed in planned:
        if item is None or item.present:
            continue
        if allowed:
            logger.warning(f"this study downloads {item.describe()} (train_model; {switch}: false refuses)")
        else:
            logger.warning(
                f"this study needs {item.what}, which is not in {item.destination}, and {switch} is false: "
                f"train_model will stop; set {switch}: true to fetch it ({item.size_bytes / 2**20:.1f} MiB) "
                "or put it there"
            )
    if data["name"] == "imagenet" and not Path(data["root"]).is_dir():
        logger.warning(
            f"config data.root {data['root']}: no ImageNet validation folder there (it is never downloaded); "
            "train_model will stop until it is (ImageFolder layout, see the config's comments)"
        )


_announce_downloads()


def split_settings(split):
    """Ablation rate, number of masks and seed of a sampling split.

    OOD split k (``ood_<rate>``) uses seed ``sampling.ood.seed + k``.
    """
    sampling = config["sampling"]
    if split in ("train", "heldout"):
        return {"ablation_rate": sampling["ablation_rate"], **sampling[split]}
    k = OOD_SPLITS.index(split)
    ood = sampling["ood"]
    return {"ablation_rate": OOD_RATES[k], "n_masks": ood["n_masks"], "seed": ood["seed"] + k}


def n_shards(split):
    """Number of shard jobs of a sampling split."""
    return -(-split_settings(split)["n_masks"] // config["sampling"]["shard_size"])


def model_dir(model):
    """Directory of one model's outputs (its checkpoint, stores, fits and scores)."""
    return f"{RESULTS}/m{model}"


def store_path(model, split):
    """Path of a split's ablation store of one model."""
    return f"{model_dir(model)}/ablations/{split}.zarr"


def prior_fits(model, estimator, root=None):
    """The fits of the priors an estimator starts from, on one model (under ``root``: the mistakes' fits)."""
    return [f"{root or model_dir(model)}/baselines/{name}.zarr" for name in estimator_priors(estimator)]


def model_config(wildcards):
    """The model section of the config for model replicate ``k``: its training seed is model.train.seed + k."""
    model = dict(config["model"])
    if "train" in model:
        model["train"] = {**model["train"], "seed": model["train"]["seed"] + int(wildcards.model)}
    return model


def methods_fits(model, root=None):
    """The fits of every method on one model, in method order (under ``root``: see :func:`fits_of`)."""
    return [fit for method in METHODS for fit in fits_of(model, method, root)]


def model_fits(wildcards):
    """The fits of every method on one model."""
    return methods_fits(wildcards.model)


def fits_of(model, method, root=None):
    """The fits of one method on one model: a baseline's store, or an estimator's directory of fits.

    An estimator with one prior also gets the prior's fit: its point at zero ablations. Under
    ``root`` (default the model's directory; :func:`mistakes_dir` for the misclassified images).
    """
    root = root or model_dir(model)
    if method in SAMPLING_FREE:
        return [f"{root}/baselines/{method}.zarr"]
    fits = [f"{root}/fits/{method}"]
    if method in PRIOR_ESTIMATORS and len(estimator_priors(method)) == 1:
        return [*prior_fits(model, method, root), *fits]
    return fits


def prior_input(wildcards):
    """The priors' fits, for the estimators that take one (a sweep's: its estimator, on model 0)."""
    estimator = wildcards.get("estimator", SWEEP["estimator"])
    return {"prior": prior_fits(wildcards.get("model", 0), estimator)} if estimator in PRIOR_ESTIMATORS else {}


def shard_flags(wildcards):
    """Per-shard summaries of a split of one model: one per shard job."""
    return expand(
        f"{model_dir(wildcards.model)}/ablations/{wildcards.split}.shards/{{shard}}.json",
        shard=range(n_shards(wildcards.split)),
    )


def split_summaries(wildcards):
    """The checked summaries of one model's held-out and out-of-distribution stores."""
    return [f"{model_dir(wildcards.model)}/ablations/{split}.summary.json" for split in ["heldout", *OOD_SPLITS]]


def store_provenance(wildcards):
    """The config sections that determine an ablation store's contents."""
    return {
        "study": STUDY,
        "model_replicate": int(wildcards.model),
        "split": wildcards.split,
        **split_settings(wildcards.split),
        "forward": FORWARD,
        **{key: config[key] for key in ("data", "components", "inputs")},
        "model": model_config(wildcards),
    }


SWEEP = config.get("sweep", {"estimator": None, "settings": {}})
SWEEP_SIZES = sorted(SWEEP.get("train_sizes", TRAIN_SIZES))


def sweep_params(wildcards):
    """Parameters of one sweep setting: the estimator's config updated by the setting's overrides."""
    return {**estimator_params(SWEEP["estimator"]), **SWEEP["settings"][wildcards.setting]}


# Estimators the fit benchmark times against a scikit-learn reference (compattr.bench.REFERENCES).
BENCH_ESTIMATORS = [e for e in BENCHMARKED if e in ESTIMATORS]


def bench_prior(wildcards):
    """The prior's fit (model 0), when the fit benchmark includes an estimator that takes one."""
    return {"prior": prior_fits(0, "gradient_prior")} if "gradient_prior" in BENCH_ESTIMATORS else {}


# The study's 2-layer estimators the settings benchmark compares (config bench.two_layer).
BENCH_TWO_LAYER = [e for e in config["bench"]["two_layer"]["estimators"] if e in ESTIMATORS]


def bench_two_layer_prior(wildcards):
    """The prior's fit (model 0) of the 2-layer estimator that starts from one, when it is benchmarked."""
    taking = [e for e in BENCH_TWO_LAYER if e in PRIOR_ESTIMATORS]
    return {"prior": prior_fits(0, taking[0])} if taking else {}


def top_components_store(model):
    """The fit store behind a model's top-components table."""
    if TOP_METHOD in SAMPLING_FREE:
        return f"{RESULTS}/m{model}/baselines/{TOP_METHOD}.zarr"
    return f"{RESULTS}/m{model}/fits/{TOP_METHOD}/{fit_store_name(TRAIN_SIZES[-1], 0)}"


def top_components_fit(wildcards):
    """The job output that holds that store: the baseline's store, or the estimator's fits."""
    if TOP_METHOD in SAMPLING_FREE:
        return top_components_store(wildcards.model)
    return f"{RESULTS}/m{wildcards.model}/fits/{TOP_METHOD}"


# Editing with attributions (rules/editing.smk); the schema gives the defaults.
EDITING = config["editing"]


def editing_fits(wildcards):
    """The fits every method's edits use, on one model."""
    return [fit for method in METHODS for fit in fits_of(wildcards.model, method)]


# Fixing mistakes: misclassified test images get their own ablation store (the training masks of the
# largest train size, the same masks as the attributed inputs'), priors, leave-one-out and fits.
MISTAKES = EDITING["mistakes"]
MISTAKES_DIR = f"{MODEL_DIR}/mistakes"


def mistakes_dir(model):
    """Directory of one model's misclassified images, with their ablation store and fits."""
    return f"{model_dir(model)}/mistakes"


def verify_summaries(wildcards):
    """Every finished mask store's check summary, on every model (the misclassified images' too, when editing).

    Only those there: verifying builds nothing.
    """
    splits = {model_dir(m): ["train", "heldout", *OOD_SPLITS] for m in MODELS}
    if EDITING["enabled"]:
        splits |= {mistakes_dir(m): ["train"] for m in MODELS}
    found = [f"{root}/ablations/{split}.summary.json" for root, names in splits.items() for split in names]
    return [path for path in found if Path(path).exists()]


def verify_fits(wildcards):
    """Every finished fit of every method on every model (the misclassified images' too, when editing)."""
    fits = [fit for m in MODELS for fit in methods_fits(m)]
    if EDITING["enabled"]:
        fits += [fit for m in MODELS for fit in methods_fits(m, mistakes_dir(m))]
    return [path for path in dict.fromkeys(fits) if Path(path).exists()]


def mistakes_fits(wildcards):
    """The fits every method's fixing edits use, on one model."""
    return methods_fits(wildcards.model, mistakes_dir(wildcards.model))


def mistakes_prior_input(wildcards):
    """The priors' fits on the misclassified images, for the estimators that take one."""
    if wildcards.estimator not in PRIOR_ESTIMATORS:
        return {}
    return {"prior": prior_fits(wildcards.model, wildcards.estimator, mistakes_dir(wildcards.model))}


def mistakes_shard_flags(wildcards):
    """Shard manifests of the misclassified images' ablation store."""
    n = -(-TRAIN_SIZES[-1] // config["sampling"]["shard_size"])
    return expand(f"{mistakes_dir(wildcards.model)}/ablations/train.shards/{{shard}}.json", shard=range(n))


def editing_tables():
    """Every model's editing tables, for the summary's editing section (none when the study does not edit)."""
    if not EDITING["enabled"]:
        return {}
    return {
        name: expand(f"{RESULTS}/m{{model}}/editing/{name}.csv", model=MODELS) for name in ("top_k", "fix", "forget")
    }


def forgetting_fit(model, method):
    """The fit store whose attributions choose the components to forget: a method's largest train size."""
    if method in SAMPLING_FREE:
        return f"{model_dir(model)}/baselines/{method}.zarr"
    return f"{model_dir(model)}/fits/{method}/{fit_store_name(TRAIN_SIZES[-1], 0)}"


def final_targets():
    """The default targets: every model's metrics, the tables and the figures."""
    return [
        *expand(f"{RESULTS}/m{{model}}/model/metrics.json", model=MODELS),
        *expand(f"{RESULTS}/m{{model}}/top_components.csv", model=MODELS),
        f"{RESULTS}/lds.csv",
        f"{RESULTS}/lds_ood.csv",
        f"{RESULTS}/summary.csv",
        f"{RESULTS}/summary.md",
        f"{RESULTS}/figures/lds_vs_ablations.png",
        f"{RESULTS}/figures/lds_vs_ablations.pdf",
        f"{RESULTS}/figures/lds_headline.png",
        *([f"{RESULTS}/editing/{name}.png" for name in ("top_k", "fix", "forget")] if EDITING["enabled"] else []),
    ]
