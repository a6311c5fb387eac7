"""A study's config, checked in one place: the workflow and ``python -m compattr.configcheck`` both call it.

:func:`check_config` fills the schema's defaults into a copy of the config, then returns
every fault it finds (the schema's, and those across keys that a schema cannot express),
each naming its key; :func:`resolve_config` raises them all at once or returns the config
the workflow runs. ``python -m compattr.configcheck FILE`` (``make study CONFIG=FILE`` runs
it first) reads a file as the workflow would and prints the same faults, with the file,
line and column of a YAML error. Nothing here imports torch: the workflow calls it while it
parses, before any job.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from compattr.registry import DEFAULT_PRIOR, PRIOR_ESTIMATORS

__all__ = [
    "ConfigFileError",
    "ConfigCheck",
    "SCHEMA",
    "MIN_HELDOUT",
    "load_config",
    "load_schema",
    "schema_errors",
    "check_config",
    "resolve_config",
    "check_config_file",
    "estimator_priors",
    "top_method",
]

#: The workflow's config schema, beside the package in a checkout.
SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"
#: Held-out (and out-of-distribution) masks below which the LDS, a rank correlation over them, is refused.
MIN_HELDOUT = 30
#: Held-out masks below which LDS differences under about 0.05 are within the resolution (a warning).
FEW_HELDOUT = 200
# Keys renamed since 0.4.0: the ablation rate was "alpha", the name of the penalty of ridge and lasso.
_RENAMED = {
    ("sampling", "alpha"): "sampling.ablation_rate",
    ("sampling", "ood", "alphas"): "sampling.ood.ablation_rates",
}
# Architectures whose components are heads and neurons (components.kind transformer).
_TRANSFORMERS = ("vit", "text_transformer", "hf_gpt2", "torchvision_vit_b_16")
#: Language models over the text data.
_LANGUAGE_MODELS = ("text_transformer", "hf_gpt2")


class ConfigFileError(ValueError):
    """A config file is missing, is not YAML, or holds values the checks refuse; the message says where."""


@dataclass
class ConfigCheck:
    """What :func:`check_config` found: the config with the schema's defaults, its faults, and warnings."""

    config: dict[str, Any]
    faults: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key written twice in one mapping is an error (YAML says keys are unique)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<: *anchor" merges keys that the mapping's own keys may override
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                first = seen[key].start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (first on line {first}); keep one", key_node.start_mark
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path) -> dict[str, Any]:
    """The mapping a YAML config file holds; :class:`ConfigFileError` names the file, line and column of an error.

    A key given twice in one mapping is such an error, where other readers keep the last one silently.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigFileError(f"{path}: no such config file")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = error.problem or error.context or "not valid YAML"
        raise ConfigFileError(f"{where}: {problem}") from error
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigFileError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path}: a config is a mapping of keys to values, not {type(data).__name__}")
    return data


def load_schema(schema: str | Path = SCHEMA) -> dict[str, Any]:
    """The config schema (JSON schema draft 2020-12, in YAML)."""
    return yaml.safe_load(Path(schema).read_text())


def _validator(schema: dict[str, Any], fill_defaults: bool) -> Any:
    """A draft 2020-12 validator that, with ``fill_defaults``, sets each missing property's default as it validates.

    Snakemake's ``validate(..., set_default=True)`` fills defaults the same way (jsonschema's FAQ recipe).
    """
    from jsonschema import Draft202012Validator, validators  # installed with Snakemake

    if not fill_defaults:
        return Draft202012Validator(schema)
    properties = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator: Any, props: dict, instance: Any, subschema: dict) -> Any:
        if isinstance(instance, dict):
            for name, sub in props.items():
                if "default" in sub:
                    instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from properties(validator, props, instance, subschema)

    return validators.extend(Draft202012Validator, {"properties": set_defaults})(schema)


def schema_errors(
    config: dict[str, Any], schema: str | Path | dict = SCHEMA, *, fill_defaults: bool = False
) -> list[str]:
    """Each value of ``config`` its JSON schema refuses, as ``"<dotted key>: <why>"`` (empty when valid).

    With ``fill_defaults``, missing keys get the schema's defaults in ``config`` itself.
    """
    schema = load_schema(schema) if not isinstance(schema, dict) else schema
    errors = sorted(_validator(schema, fill_defaults).iter_errors(config), key=lambda e: list(map(str, e.path)))
    return [f"{'.'.join(map(str, e.path)) or '(top level)'}: {e.message}{_text_hint(e)}" for e in errors]


#: Python types of the JSON schema's scalar types.
_SCALARS = {"integer": int, "number": (int, float), "boolean": bool}


def _text_hint(error: Any) -> str:
    """A hint for a scalar given as text (as Snakemake's ``--config`` passes a nested value); else empty."""
    if error.validator != "type" or not isinstance(error.instance, str):
        return ""
    wanted = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
    try:
        value = yaml.safe_load(error.instance)
    except yaml.YAMLError:
        return ""
    if not any(isinstance(value, _SCALARS[kind]) for kind in wanted if kind in _SCALARS):
        return ""
    return " (text: `snakemake --config key={...}` passes nested values as text; set them in a config file)"


def estimator_priors(config: dict[str, Any], estimator: str) -> list[str]:
    """The names of the priors an estimator that takes one starts from (several: it chooses on validation)."""
    names = config["fit"]["estimators"][estimator].get("prior", DEFAULT_PRIOR)
    return [names] if isinstance(names, str) else list(names)


def top_method(config: dict[str, Any]) -> str:
    """The method whose largest effects per input are listed by name: the config's, else leave-one-out
    when the study computes it, else the first estimator."""
    fit = config["fit"]
    default = "loo" if "loo" in fit.get("baselines", []) else next(iter(fit["estimators"]))
    return config["analysis"].get("top_components", {}).get("method", default)


def check_config(config: dict[str, Any], schema: str | Path = SCHEMA) -> ConfigCheck:
    """Every fault of a study's config, each naming its key, and its warnings; ``config`` itself is left as it is.

    The returned config is a copy with the schema's defaults filled in. Renamed keys and
    the schema's faults come first; the checks across keys run on a config the schema accepts.
    """
    # analysis lists the config sets itself are checked against the study's methods; defaults are not
    explicit = {key for key in ("references", "linear_baselines") if key in config.get("analysis", {})}
    config = copy.deepcopy(config)
    found = ConfigCheck(config)
    for path, new_key in _RENAMED.items():
        holder = config
        for key in path[:-1]:
            holder = holder.get(key, {}) if isinstance(holder, dict) else {}
        if isinstance(holder, dict) and path[-1] in holder:
            found.faults.append(f"config {'.'.join(path)} is now {new_key}: rename it")
    schema_dict = load_schema(schema)
    found.faults += [f"config {error}" for error in schema_errors(config, schema_dict, fill_defaults=True)]
    if found.faults:
        return found
    _check_across_keys(config, schema_dict, found, explicit)
    return found


def _check_across_keys(config: dict[str, Any], schema: dict[str, Any], found: ConfigCheck, explicit: set[str]) -> None:
    """The checks a JSON schema cannot express, appended to ``found``."""
    fault = found.faults.append
    fit, sampling, analysis = config["fit"], config["sampling"], config["analysis"]
    estimators, priors, baselines = list(fit["estimators"]), fit.get("priors", {}), list(fit.get("baselines", []))
    methods = estimators + list(priors) + baselines
    n_train = sampling["train"]["n_masks"]
    too_big = sorted({n for n in fit["train_sizes"] + config.get("sweep", {}).get("train_sizes", []) if n > n_train})
    if too_big:
        fault(
            f"config fit.train_sizes (or sweep.train_sizes) {too_big} exceed sampling.train.n_masks ({n_train}): "
            "sample more masks or drop those sizes"
        )
    for name in priors:
        if name in estimators or name in baselines:
            fault(f"config fit.priors.{name} has the name of an estimator or baseline: rename it")
    for name, params in fit["estimators"].items():
        if "prior" in params and name not in PRIOR_ESTIMATORS:
            fault(f"config fit.estimators.{name}.prior: {name} takes no prior (only {PRIOR_ESTIMATORS} do)")
        if name not in PRIOR_ESTIMATORS:
            continue
        for prior in estimator_priors(config, name):
            if prior not in priors:
                fault(
                    f"config fit.estimators.{name}.prior {prior!r} is not one of fit.priors "
                    f"({sorted(priors) or 'none defined'})"
                )
        if len(estimator_priors(config, name)) > 1 and name == "relu_collapse_prior":
            fault(f"config fit.estimators.{name}.prior: {name} starts from one prior, not a list")
    if (top := top_method(config)) not in methods:
        fault(
            f"config analysis.top_components.method {top!r} is not one of fit.estimators, fit.priors "
            f"or fit.baselines ({methods})"
        )
    sweep = config.get("sweep")
    if sweep:
        if sweep["estimator"] not in fit["estimators"]:
            fault(f"config sweep.estimator {sweep['estimator']!r} is not one of fit.estimators")
        else:
            _check_sweep_settings(config, schema, found)
    for key in ("references", "linear_baselines"):
        unknown = [name for name in analysis.get(key, []) if name not in methods]
        if unknown and key in explicit:
            fault(f"config analysis.{key} names {unknown}, which the study does not fit ({methods})")
    counts = {"sampling.heldout.n_masks": sampling["heldout"]["n_masks"]}
    if sampling.get("ood", {}).get("ablation_rates"):
        counts["sampling.ood.n_masks"] = sampling["ood"]["n_masks"]
    for key, n in counts.items():
        if n < MIN_HELDOUT:
            fault(
                f"config {key} is {n}: the LDS is a rank correlation over the held-out masks and needs at least "
                f"{MIN_HELDOUT}"
            )
        elif n < FEW_HELDOUT:
            found.warnings.append(
                f"config {key} is {n}: LDS differences below about 0.05 are within the resolution of fewer than "
                f"{FEW_HELDOUT} held-out masks"
            )
    _check_seeds(sampling, found)
    _check_model(config, found)
    _check_kind(config, found)


def _check_sweep_settings(config: dict[str, Any], schema: dict[str, Any], found: ConfigCheck) -> None:
    """Every sweep setting, merged into its estimator's parameters, checked against that estimator's schema."""
    sweep = config["sweep"]
    estimators = {"definitions": schema["definitions"], **schema["properties"]["fit"]["properties"]["estimators"]}
    validator = _validator({"$schema": schema["$schema"], **estimators}, fill_defaults=False)
    name = sweep["estimator"]
    params = {k: v for k, v in config["fit"]["estimators"][name].items() if k != "prior"}
    for setting, overrides in sweep["settings"].items():
        for error in validator.iter_errors({name: {**params, **overrides}}):
            where = ".".join(str(part) for part in list(error.path)[1:]) or "(the setting)"
            found.faults.append(f"config sweep.settings.{setting}: {where}: {error.message}")


def _check_seeds(sampling: dict[str, Any], found: ConfigCheck) -> None:
    """Every split draws from its own seed: held-out masks never repeat training masks (or each other)."""
    seeds = {"sampling.train.seed": sampling["train"]["seed"], "sampling.heldout.seed": sampling["heldout"]["seed"]}
    ood = sampling.get("ood", {})
    # OOD split k uses seed sampling.ood.seed + k
    seeds |= {f"sampling.ood.seed (+{k})": ood["seed"] + k for k in range(len(ood.get("ablation_rates", [])))}
    names = list(seeds)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if seeds[a] == seeds[b]:
                found.faults.append(
                    f"config {a} and {b} are both {seeds[a]}: held-out masks would repeat training masks "
                    "(or each other); give every split its own seed"
                )


def _check_model(config: dict[str, Any], found: ConfigCheck) -> None:
    """The model against its data, its replicates and where its weights come from."""
    fault = found.faults.append
    model, data = config["model"], config["data"]
    arch = model["arch"]
    if config["replicates"]["models"] > 1 and "train" not in model:
        fault(
            "config replicates.models > 1 needs model.train (models trained from seeds); "
            "pretrained weights or a checkpoint give one model"
        )
    if arch["name"] == "cifar_resnet" and len(arch["widths"]) != len(arch["blocks"]):
        fault("config model.arch.widths and model.arch.blocks must have the same length")
    if arch["name"] in ("vit", *_LANGUAGE_MODELS) and arch["hidden"] % arch["heads"]:
        fault(f"config model.arch.hidden {arch['hidden']} is not a multiple of model.arch.heads {arch['heads']}")
    if (arch["name"] in _LANGUAGE_MODELS) != (data["name"] == "text"):
        fault(
            f"config model.arch.name {arch['name']} on data.name {data['name']}: "
            "the text data go with a language model (text_transformer, hf_gpt2), and they with them"
        )
    elif arch["name"] in _LANGUAGE_MODELS and arch["context"] != data["context"]:
        fault(f"config model.arch.context {arch['context']} differs from data.context {data['context']}")
    if arch["name"] == "vit" and arch["image_size"] != data.get("image_size", arch["image_size"]):
        fault(f"config model.arch.image_size {arch['image_size']} differs from data.image_size {data['image_size']}")
    sources = [key for key in ("train", "weights", "checkpoint") if key in model]
    if len(sources) != 1:
        fault(
            "config model needs exactly one of model.train (train the model), model.weights "
            f"(torchvision's pretrained weights) or model.checkpoint (your file); got {sources or 'none'}"
        )
    if data["name"] == "imagenet" and "train" in model:
        fault("config data.name imagenet has no train split: use model.weights or model.checkpoint")
    if config["components"]["ablation"] == "mean" and data["name"] == "imagenet":
        fault(
            "config components.ablation mean averages each unit over training inputs, and data.name imagenet "
            "has no train split here: use zero"
        )


def _check_kind(config: dict[str, Any], found: ConfigCheck) -> None:
    """The study's kind (components, features or data) against its model, data, priors and stages."""
    fault = found.faults.append
    kind, arch, data = config["kind"], config["model"]["arch"], config["data"]
    priors = config["fit"].get("priors", {})
    if (kind == "data") != (arch["name"] == "mlp"):
        fault(
            f"config kind {kind} with model.arch.name {arch['name']}: a data study trains an mlp per mask, "
            "and the mlp serves data studies only"
        )
    if kind == "data" and "train" not in config["model"]:
        fault("config kind data needs model.train: the recipe every mask's model is trained by")
    if kind != "components" and data["name"] in ("text", "imagenet"):
        fault(
            f"config kind {kind} on data.name {data['name']}: features and data studies take image "
            "datasets with a train split (digits, cifar10)"
        )
    if kind == "data" and config["editing"]["enabled"]:
        fault(
            "config editing.enabled: a data study has no editing stage (edits ablate parts of one model); "
            "set it to false"
        )
    if kind == "data":
        for name, prior in priors.items():
            if prior["point"] != "unablated":
                fault(
                    f"config fit.priors.{name}.point: a data study's prior (the influence function) is taken at the "
                    f"model trained on every example: unablated, not {prior['point']!r}"
                )
    for name, prior in priors.items():
        if prior.get("exact_top") and prior["point"] not in ("unablated", "mean"):
            fault(
                f"config fit.priors.{name}.exact_top: units are measured at the unablated model or at the mean, "
                f"not at point {prior['point']!r}"
            )
    transformer = arch["name"] in _TRANSFORMERS
    unit_kind = config["components"]["kind"] if kind == "components" else "features"
    if kind == "components" and unit_kind == "transformer" and not transformer:
        fault(
            "config components.kind transformer needs a transformer (model.arch.name vit, text_transformer, "
            f"hf_gpt2 or torchvision_vit_b_16), not {arch['name']}"
        )
    if kind == "components" and unit_kind == "conv" and transformer:
        fault(
            f"config components.kind is conv on a {arch['name']}: set components.kind: transformer (heads and neurons)"
        )
    for name, prior in priors.items():
        if prior.get("margin") != "simulated":
            if prior.get("competitors") is not None:
                fault(f"config fit.priors.{name}.competitors: the classes a margin simulated prior tracks; set margin")
            continue
        if kind == "data":
            fault(
                f"config fit.priors.{name}.margin: simulated takes components or input patches, not training examples"
            )
        if prior["point"] not in ("unablated", "mean"):
            fault(f"config fit.priors.{name}.margin: simulated is taken at point unablated or mean")
    exact = [name for name, prior in priors.items() if prior.get("relu") == "exact"]
    if exact and kind != "features" and (kind != "components" or unit_kind != "conv"):
        fault(
            f"config fit.priors {exact}: relu exact follows conv filters or input patches to their first "
            f"nonlinearity; leave it out for {f'{unit_kind} components' if kind == 'components' else f'a {kind} study'}"
        )


def resolve_config(config: dict[str, Any], schema: str | Path = SCHEMA, *, source: str = "config") -> ConfigCheck:
    """The config the workflow runs: defaults filled, analysis lists left at the methods the study fits.

    :class:`ConfigFileError` lists every fault, one per line, each after ``source`` (a file's path).
    """
    found = check_config(config, schema)
    if found.faults:
        raise ConfigFileError("\n".join(f"{source}: {fault}" for fault in found.faults))
    fit, analysis = found.config["fit"], found.config["analysis"]
    methods = [*fit["estimators"], *fit.get("priors", {}), *fit.get("baselines", [])]
    for key in ("references", "linear_baselines"):  # defaults name every candidate: keep those fitted
        analysis[key] = [name for name in analysis.get(key, []) if name in methods]
    return found


def check_config_file(path: str | Path, schema: str | Path = SCHEMA) -> dict[str, Any]:
    """Read a config file and check it as the workflow does; :class:`ConfigFileError` names every fault."""
    return resolve_config(load_config(path), schema, source=str(path)).config


def main(argv: list[str] | None = None) -> int:
    """Check each config file named on the command line; print one line per file; 2 if any is refused."""
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python -m compattr.configcheck CONFIG.yaml [...]", file=sys.stderr)
        return 2
    status = 0
    for path in paths:
        try:
            found = resolve_config(load_config(path), source=str(path))
        except ConfigFileError as error:
            print(error, file=sys.stderr)
            status = 2
        else:
            for warning in found.warnings:
                print(f"{path}: warning: {warning}", file=sys.stderr)
            print(f"{path}: valid")
    return status


if __name__ == "__main__":
    sys.exit(main())
