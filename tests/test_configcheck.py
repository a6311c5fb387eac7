"""Configs are checked in one place (the workflow calls it too): every fault named by its key, files read with
errors that say where (YAML line and column, a missing file)."""

import copy
from pathlib import Path

import pytest
import yaml

from compattr.configcheck import ConfigFileError, check_config, check_config_file, load_config, main, resolve_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "config").glob("*.yaml"))
TINY = yaml.safe_load((Path(__file__).resolve().parents[1] / "config/tiny.yaml").read_text())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_the_shipped_configs_pass(path):
    assert check_config_file(path)["study"]


def test_a_yaml_error_names_file_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("study: x\nsampling:\n  train: [1, 2\n  seed: 1\n")
    with pytest.raises(ConfigFileError, match=r"bad.yaml:4:7: expected ',' or ']'"):
        load_config(path)


def test_a_key_given_twice_is_an_error_naming_both_lines(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("study: x\nsampling:\n  ablation_rate: 0.05\n  seed: 1\n  ablation_rate: 0.2\n")
    with pytest.raises(ConfigFileError, match=r"twice.yaml:5:3: key 'ablation_rate' appears twice \(first on line 3\)"):
        load_config(path)


def test_a_missing_file_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere.yaml")]) == 2
    assert capsys.readouterr().err == f"{tmp_path / 'nowhere.yaml'}: no such config file\n"


def test_a_refused_value_names_its_key(tmp_path):
    config = CONFIGS[0].read_text().replace("ablation_rate: 0.05", "ablation_rate: 2", 1)
    assert config != CONFIGS[0].read_text()
    path = tmp_path / "rate.yaml"
    path.write_text(config)
    with pytest.raises(ConfigFileError, match=r"rate.yaml: config sampling.ablation_rate: 2 is greater than"):
        check_config_file(path)


def test_a_list_is_not_a_config(tmp_path):
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigFileError, match="a mapping"):
        load_config(tmp_path / "list.yaml")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["sampling"].update(colour="red"), "colour"),
        (lambda c: c["sampling"].update(ablation_rate="high"), "ablation_rate"),
        (lambda c: c["sampling"].update(alpha=0.05), "sampling.alpha is now sampling.ablation_rate"),
        (lambda c: c["fit"]["estimators"].update(lasso_xl={}), "lasso_xl"),
        (lambda c: c["fit"].update(train_sizes=[40, 5000]), "exceed sampling.train.n_masks"),
        (lambda c: c["sweep"].update(estimator="coar_xl"), "sweep.estimator"),
        (
            lambda c: c["sampling"]["heldout"].update(seed=c["sampling"]["train"]["seed"]),
            "sampling.train.seed and sampling.heldout.seed",
        ),
        (lambda c: c["fit"]["estimators"]["gradient_prior"].update(prior="atp_xl"), "gradient_prior.prior 'atp_xl'"),
        (lambda c: c["fit"]["estimators"]["relu_collapse_raw"].update(prior="atp"), "relu_collapse_raw.prior"),
        (lambda c: c["fit"]["priors"].update(atp_odd={"point": "median"}), "median"),
        (lambda c: c["fit"]["priors"].update(atp_odd={"point": "mean", "relu": "exactly"}), "atp_odd.relu"),
        (lambda c: c["fit"]["priors"].update(atp_odd={"point": "mean", "exact_top": -1}), "atp_odd.exact_top"),
        (
            lambda c: c["fit"]["priors"].update(atp_odd={"point": "path", "n_points": 2, "exact_top": 4}),
            "fit.priors.atp_odd.exact_top: units are measured at the unablated model or at the mean",
        ),
        (
            lambda c: c["fit"]["priors"].update(atp_odd={"point": "path", "n_points": 2, "margin": "simulated"}),
            "fit.priors.atp_odd.margin: simulated is taken at point unablated or mean",
        ),
        (lambda c: c["fit"]["priors"].update(atp_odd={"point": "mean", "simulated_masks": 1}), "simulated_masks"),
        (lambda c: c["fit"]["priors"].update(atp_odd={"point": "unablated", "competitors": 2}), "atp_odd.competitors"),
        (
            lambda c: c["fit"]["priors"].update(
                atp_odd={"point": "unablated", "margin": "simulated", "competitors": 0}
            ),
            "atp_odd.competitors",
        ),
        (lambda c: c["sampling"].update(ablation_rate=0), "ablation_rate"),
        (lambda c: c["sampling"].update(ablation_rate=1), "ablation_rate"),
        (lambda c: c["sampling"]["ood"].update(ablation_rates=[0.1, 1.0]), "ablation_rates"),
        (lambda c: c["sampling"]["heldout"].update(n_masks=2), "sampling.heldout.n_masks is 2"),
        (lambda c: c["analysis"].update(references=["coarr"]), "analysis.references names ['coarr']"),
        (lambda c: c["sweep"]["settings"].update(odd={"hiden": 8}), "sweep.settings.odd"),
        (lambda c: c["sweep"]["settings"].update(odd={"lr": -1}), "sweep.settings.odd: lr"),
        (lambda c: c.update(study=".."), "config study: '..' does not match"),
        (lambda c: c.update(study="."), "config study: '.' does not match"),
        (lambda c: c["analysis"].update(lds_targets=[0.3, 0]), "analysis.lds_targets.1: 0 is less than or equal"),
        # what `snakemake --config 'replicates={models: 3}'` gives: the value as text, and a hint
        (lambda c: c["replicates"].update(models="3"), "replicates.models: '3' is not of type 'integer' (text:"),
        (lambda c: c["replicates"].update(models="three"), "replicates.models: 'three' is not of type 'integer'"),
    ],
)
def test_each_bad_value_is_a_fault_naming_its_key(edit, message):
    config = copy.deepcopy(TINY)
    edit(config)
    faults = check_config(config).faults
    assert any(message in fault for fault in faults), faults
    with pytest.raises(ConfigFileError, match="config"):
        resolve_config(config)


@pytest.mark.parametrize(
    ("prior", "message", "refused_by"),
    [
        ({"relu": "exact"}, "relu exact follows conv filters or input patches", {"digits_vit", "digits_data"}),
        ({"margin": "simulated"}, "fit.priors.atp_new.margin: simulated takes", {"digits_data"}),
    ],
)
def test_a_prior_setting_is_refused_where_the_units_do_not_allow_it(prior, message, refused_by):
    root = Path(__file__).resolve().parents[1] / "config"
    for name in ("digits_vit", "digits_features", "digits_data"):
        config = yaml.safe_load((root / f"{name}.yaml").read_text())
        config["fit"]["priors"]["atp_new"] = {"point": "unablated", **prior}
        faults = [f for f in check_config(config).faults if message in f]
        assert bool(faults) == (name in refused_by), (name, faults)


def test_every_fault_is_reported_at_once_and_the_given_config_is_left_as_it_was():
    config = copy.deepcopy(TINY)
    config["sampling"]["heldout"]["n_masks"] = 2
    config["sweep"]["estimator"] = "coar_xl"
    config["fit"]["estimators"]["relu_collapse_raw"]["prior"] = "atp"
    before = copy.deepcopy(config)
    faults = check_config(config).faults
    assert len(faults) == 3 and config == before


def test_the_checked_config_has_the_schemas_defaults_and_the_analysis_lists_of_its_methods():
    config = copy.deepcopy(TINY)
    found = resolve_config(config)
    assert "sampling" in config and "editing" in found.config and "enabled" not in config["editing"]
    assert found.config["editing"]["enabled"] is True and found.config["kind"] == "components"
    methods = {*config["fit"]["estimators"], *config["fit"]["priors"], *config["fit"]["baselines"]}
    assert set(found.config["analysis"]["references"]) <= methods and found.config["analysis"]["references"]
    assert any("sampling.heldout.n_masks is 120" in warning for warning in found.warnings)


def test_the_command_line_refuses_what_the_workflow_refuses(tmp_path, capsys):
    config = copy.deepcopy(TINY)
    config["sampling"]["heldout"]["n_masks"] = 2
    path = tmp_path / "few.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main([str(path)]) == 2
    assert f"{path}: config sampling.heldout.n_masks is 2" in capsys.readouterr().err
