"""Config files are read with errors that say where: YAML line and column, a missing file, a refused key."""

from pathlib import Path

import pytest

from compattr.configcheck import ConfigFileError, check_config_file, load_config, main

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "config").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_the_shipped_configs_pass(path):
    assert check_config_file(path)["study"]


def test_a_yaml_error_names_file_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("study: x\nsampling:\n  train: [1, 2\n  seed: 1\n")
    with pytest.raises(ConfigFileError, match=r"bad.yaml:4:7: expected ',' or ']'"):
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
