"""config/README.md is the schema's reference: current, and every key described."""

from pathlib import Path

import yaml

from compattr.configdoc import schema_keys, schema_markdown

REPO = Path(__file__).resolve().parents[1]
SCHEMA = "workflow/schemas/config.schema.yaml"


def test_every_config_key_has_a_description():
    keys = schema_keys(yaml.safe_load((REPO / SCHEMA).read_text()))
    assert len(keys) > 100
    assert [k.path for k in keys if not k.description] == []


def test_config_readme_is_generated_from_the_current_schema():
    expected = schema_markdown(yaml.safe_load((REPO / SCHEMA).read_text()), SCHEMA)
    assert (REPO / "config/README.md").read_text() == expected, "run `make config-docs`"


def test_keys_follow_references_named_maps_and_required_fields():
    schema = {
        "definitions": {"seed": {"type": "integer", "description": "a seed"}},
        "type": "object",
        "properties": {
            "run": {
                "type": "object",
                "description": "the run",
                "required": ["seed"],
                "properties": {"seed": {"$ref": "#/definitions/seed", "default": 3, "description": "its seed"}},
            },
            "priors": {
                "type": "object",
                "description": "by name",
                "additionalProperties": {
                    "type": "object",
                    "description": "one",
                    "properties": {"point": {"enum": ["a", "b|c"], "description": "x < y"}},
                },
            },
        },
    }
    keys = {k.path: k for k in schema_keys(schema)}
    assert list(keys) == ["run", "run.seed", "priors", "priors.<name>", "priors.<name>.point"]
    assert (keys["run.seed"].type, keys["run.seed"].default, keys["run.seed"].required) == ("integer", "3", True)
    assert keys["run.seed"].description == "its seed"
    text = schema_markdown(schema, "s.yaml")
    assert '| `priors.<name>.point` | one of "a", "b\\|c" |  |  | x &lt; y |' in text
