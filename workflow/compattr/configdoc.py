"""The configuration's reference, generated from its JSON schema (``config/README.md``).

``python -m compattr.configdoc workflow/schemas/config.schema.yaml > config/README.md``
(``make config-docs``) writes it; a test checks that the file is current and that
every key has a description.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ConfigKey", "schema_keys", "schema_markdown"]


@dataclass(frozen=True)
class ConfigKey:
    """One key of the configuration: its dotted path, type, default, whether required, and description."""

    path: str
    type: str
    default: str
    required: bool
    description: str


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """``node`` with its ``$ref`` (to ``#/definitions/...``) merged in; the node's own keys win."""
    if "$ref" not in node:
        return node
    target = root
    for part in node["$ref"].removeprefix("#/").split("/"):
        target = target[part]
    return {**_resolve(target, root), **{k: v for k, v in node.items() if k != "$ref"}}


def _type(node: dict[str, Any]) -> str:
    if "enum" in node:
        return "one of " + ", ".join(json.dumps(v) for v in node["enum"])
    if "const" in node:
        return json.dumps(node["const"])
    if "oneOf" in node:
        return " or ".join(_type(option) for option in node["oneOf"])
    kind = node.get("type", "any")
    if kind == "array" and "items" in node:
        return f"list of {_type(node['items'])}"
    return kind


def schema_keys(schema: dict[str, Any]) -> list[ConfigKey]:
    """Every key of the configuration the schema describes, depth first (``<name>`` for free-named keys)."""
    keys: list[ConfigKey] = []

    def walk(node: dict[str, Any], path: str, required: bool) -> None:
        node = _resolve(node, schema)
        named = node.get("additionalProperties")
        if path:
            default = json.dumps(node["default"]) if "default" in node else ""
            keys.append(ConfigKey(path, _type(node), default, required, " ".join(node.get("description", "").split())))
        for name, child in node.get("properties", {}).items():
            walk(child, f"{path}.{name}" if path else name, name in node.get("required", []))
        if isinstance(named, dict) and "properties" in _resolve(named, schema):
            walk(named, f"{path}.<name>", False)

    walk(schema, "", True)
    return keys


def schema_markdown(schema: dict[str, Any], source: str) -> str:
    """The configuration reference as Markdown: one table per top-level key."""
    lines = [
        "# Configuration keys",
        "",
        f"Generated from `{source}` by `make config-docs`; edit the schema, not this file. Every config",
        "is checked against the schema before any job runs, and a bad value stops the run naming its key.",
        "`<name>` stands for a name you choose (a prior's, for instance).",
    ]
    for key in schema_keys(schema):
        if "." not in key.path:
            lines += ["", f"## `{key.path}`", ""]
            if key.description and key.type == "object":
                text = _escape(key.description)
                lines += [text[0].upper() + text[1:] + ".", ""]
            lines += ["| key | type | default | required | description |", "|---|---|---|---|---|"]
            if key.type != "object":
                lines.append(_row(key))
            continue
        lines.append(_row(key))
    return "\n".join(lines) + "\n"


def _row(key: ConfigKey) -> str:
    cells = (
        f"`{key.path}`",
        _escape(key.type),
        f"`{key.default}`" if key.default else "",
        "yes" if key.required else "",
    )
    return "| " + " | ".join((*cells, _escape(key.description))) + " |"


def _escape(text: str) -> str:
    """Text safe in a Markdown table: no HTML-looking ``<name>``, no cell-ending pipe."""
    return text.replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def main(argv: list[str] | None = None) -> None:
    """Print the reference of the schema at ``argv[0]``."""
    (path,) = sys.argv[1:] if argv is None else argv
    sys.stdout.write(schema_markdown(yaml.safe_load(Path(path).read_text()), path))


if __name__ == "__main__":
    main()
