"""Read and check a study's config file before Snakemake does, with errors that say where.

Snakemake reads ``--configfile`` itself, before the workflow runs, and reports a YAML
error without its place and a missing file as a traceback. ``python -m compattr.configcheck
FILE`` (``make study CONFIG=FILE`` runs it first) reads the file as the workflow would and
says in one line what is wrong: the file, line and column of a YAML error, a missing file,
or the key of a value the schema refuses. The workflow's own checks across keys run when
Snakemake starts (``snakemake -n`` runs them all without running a job).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ConfigFileError", "load_config", "schema_errors", "check_config_file", "SCHEMA"]

#: The workflow's config schema, beside the package in a checkout.
SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


class ConfigFileError(ValueError):
    """A config file is missing, is not YAML, or holds a value its schema refuses; the message says where."""


def load_config(path: str | Path) -> dict[str, Any]:
    """The mapping a YAML config file holds; :class:`ConfigFileError` names the file, line and column of an error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigFileError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
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


def schema_errors(config: dict[str, Any], schema: str | Path = SCHEMA) -> list[str]:
    """Each value of ``config`` its JSON schema refuses, as ``"<dotted key>: <why>"`` (empty when valid)."""
    import jsonschema  # installed with Snakemake, which is what reads the schema in a run

    validator = jsonschema.Draft7Validator(yaml.safe_load(Path(schema).read_text()))
    errors = sorted(validator.iter_errors(config), key=lambda error: list(map(str, error.path)))
    return [f"{'.'.join(map(str, error.path)) or '(top level)'}: {error.message}" for error in errors]


def check_config_file(path: str | Path, schema: str | Path = SCHEMA) -> dict[str, Any]:
    """Read a config file and check it against the schema; :class:`ConfigFileError` names every refused key."""
    config = load_config(path)
    errors = schema_errors(config, schema)
    if errors:
        raise ConfigFileError("\n".join(f"{path}: config {error}" for error in errors))
    return config


def main(argv: list[str] | None = None) -> int:
    """Check each config file named on the command line; print one line per file; 2 if any is refused."""
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python -m compattr.configcheck CONFIG.yaml [...]", file=sys.stderr)
        return 2
    status = 0
    for path in paths:
        try:
            check_config_file(path)
        except ConfigFileError as error:
            print(error, file=sys.stderr)
            status = 2
        else:
            print(f"{path}: valid")
    return status


if __name__ == "__main__":
    sys.exit(main())
