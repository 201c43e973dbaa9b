"""MkDocs hooks: the pages that are generated at build time, so they cannot drift from the code.

- `<!-- policy-reference -->` (docs/policy-reference.md) becomes the policy manifest's reference,
  rendered from the JSON Schema `wardkey policy schema` prints (`app.policy.model.policy_schema`),
  with the hand-written notes of docs/policy_fields.yaml beside each field. A note for a field
  the schema does not have stops the build; a field with neither a description in the schema nor
  a note is a warning, which `mkdocs build --strict` turns into a failure.
- `<!-- policy-schema-json -->` becomes the schema itself, as JSON.
- `<!-- cli-reference -->` (docs/cli.md) becomes `wardkey --help` for every command.

Run from the repository root (where mkdocs.yml is), with WardKey installed (`pip install -e
'.[dev]'`), as `mkdocs build --strict` or `mkdocs serve`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("mkdocs.plugins.wardkey")

HERE = Path(__file__).parent
NOTES_FILE = HERE / "policy_fields.yaml"
ROOT_SECTION = "Policy"

# The schema's named patterns (their `description`), as the reference's type names.
KINDS = {
    "A duration": "duration",
    "A Slack user ID": "person",
    "A Slack channel ID": "channel ID",
    "A local time of day": "local time",
    "A local date and time": "local date and time",
    "The name of the environment variable": "variable name",
}
NAME_PATTERN = "^[a-z0-9][a-z0-9_.-]*$"
ISO_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")


# --------------------------------------------------------------------------- MkDocs events


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if "<!-- policy-reference -->" in markdown:
        markdown = markdown.replace("<!-- policy-reference -->", policy_reference())
    if "<!-- policy-schema-json -->" in markdown:
        text = f"```json\n{json.dumps(_schema(), indent=2, ensure_ascii=False)}\n```"
        markdown = re.sub(
            r"^( *)<!-- policy-schema-json -->$",
            lambda m: "\n".join(m.group(1) + line for line in text.splitlines()),
            markdown,
            flags=re.MULTILINE,
        )
    if "<!-- cli-reference -->" in markdown:
        markdown = markdown.replace("<!-- cli-reference -->", cli_reference())
    return markdown


# --------------------------------------------------------------------------- policy reference


def _schema() -> dict[str, Any]:
    from app.policy.model import policy_schema

    return policy_schema()


def policy_reference() -> str:
    schema = _schema()
    _learn_kinds(schema)
    notes = _notes()
    sections = {ROOT_SECTION: schema, **schema["$defs"]}
    places = _places(schema)
    unknown = [
        f"{section}.{field}"
        for section, fields in notes.items()
        for field in fields
        if section not in sections or field not in sections[section].get("properties", {})
    ]
    if unknown:
        raise ValueError(
            f"{NOTES_FILE.name}: notes for fields the policy schema does not have: "
            + ", ".join(unknown)
        )
    out: list[str] = []
    for section in [ROOT_SECTION, *sorted(places, key=lambda s: places[s][0])]:
        if section not in sections:
            continue
        spec = sections[section]
        where = places.get(section, [""])
        title = f"`{where[0]}`" if where[0] else "The top level"
        out.append(f"### {title} {{ #{_anchor(section)} }}\n")
        if len(where) > 1:
            out.append("Also at " + ", ".join(f"`{w}`" for w in where[1:]) + ".\n")
        if spec.get("description") and section != ROOT_SECTION:
            out.append(_one_line(spec["description"]) + "\n")
        required = set(spec.get("required", []))
        out.append("| field | type | required / default | meaning |")
        out.append("| --- | --- | --- | --- |")
        for field, prop in spec.get("properties", {}).items():
            meaning = " ".join(
                text
                for text in (_own_description(prop), notes.get(section, {}).get(field, ""))
                if text
            )
            if not meaning:
                log.warning(
                    "policy reference: %s.%s has no description in the schema and no note in %s",
                    section,
                    field,
                    NOTES_FILE.name,
                )
            need = "required" if field in required else _default(prop)
            out.append(f"| `{field}` | {_type(prop)} | {need} | {_cell(_one_line(meaning))} |")
        out.append("")
    return "\n".join(out)


def _notes() -> dict[str, dict[str, str]]:
    loaded = yaml.safe_load(NOTES_FILE.read_text(encoding="utf-8")) or {}
    return {str(s): {str(f): str(n) for f, n in fields.items()} for s, fields in loaded.items()}


def _places(schema: dict[str, Any]) -> dict[str, list[str]]:
    """Where in a manifest each section ($defs entry) is written, e.g. `paths.<name>`."""
    found: dict[str, list[str]] = {}

    def visit(node: Any, where: str) -> None:
        if not isinstance(node, dict):
            return
        ref = node.get("$ref")
        if isinstance(ref, str):
            name = ref.rsplit("/", 1)[-1]
            if where not in found.setdefault(name, []):
                found[name].append(where)
                visit(schema["$defs"][name], where)
            return
        for key, child in node.get("properties", {}).items():
            visit(child, f"{where}.{key}" if where else key)
        for pattern, child in node.get("patternProperties", {}).items():
            visit(child, f"{where}.<{_placeholder(pattern, where)}>")
        if isinstance(node.get("items"), dict):
            visit(node["items"], f"{where}[]")
        for option in node.get("anyOf", []):
            visit(option, where)

    visit(schema, "")
    return found


def _placeholder(pattern: str, where: str) -> str:
    if pattern != NAME_PATTERN:
        return "person"
    return "role" if where.endswith(".roles") else "name"


def _anchor(section: str) -> str:
    if section == ROOT_SECTION:
        return "policy-top-level"
    return "policy-" + re.sub(r"(?<!^)(?=[A-Z])", "-", section).lower()


def _own_description(prop: dict[str, Any]) -> str:
    """The field's own description, not the one its type's pattern carries."""
    text = str(prop.get("description", ""))
    return "" if _kind_of(text) else text


# Patterns of the named kinds, learnt from the schema: a field with its own description keeps
# its kind's pattern (e.g. `channels.security_alerts` is a channel ID).
KIND_PATTERNS: dict[str, str] = {}


def _learn_kinds(node: Any) -> None:
    if isinstance(node, dict):
        kind = _kind_of(str(node.get("description", "")))
        if kind and isinstance(node.get("pattern"), str):
            KIND_PATTERNS[node["pattern"]] = kind
        for child in node.values():
            _learn_kinds(child)
    elif isinstance(node, list):
        for child in node:
            _learn_kinds(child)


def _kind_of(description: str) -> str | None:
    for start, kind in KINDS.items():
        if description.startswith(start):
            return kind
    return None


def _type(prop: dict[str, Any]) -> str:
    if "anyOf" in prop:
        options = [o for o in prop["anyOf"] if o.get("type") != "null"]
        text = " or ".join(_type(o) for o in options)
        return f"{text} or `null`" if len(options) < len(prop["anyOf"]) else text
    if "$ref" in prop:
        name = prop["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{_anchor(name)})"
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`"
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    kind = _kind_of(str(prop.get("description", ""))) or KIND_PATTERNS.get(str(prop.get("pattern")))
    if kind:
        return kind
    if prop.get("pattern") == NAME_PATTERN:
        return "name"
    if prop.get("format") == "date":
        return "date"
    if prop.get("type") == "array":
        return f"list of {_type(prop.get('items', {}))}"
    if prop.get("type") == "object":
        values = prop.get("additionalProperties")
        patterns = list(prop.get("patternProperties", {}).items())
        if patterns:
            pattern, child = patterns[0]
            key = "person" if pattern != NAME_PATTERN else "name"
            return f"map of {key} → {_type(child)}"
        if isinstance(values, dict):
            return f"map of setting → {_type(values)}"
        return "map"
    names = {"string": "text", "integer": "whole number", "boolean": "`true` \\| `false`"}
    text = names.get(str(prop.get("type")), str(prop.get("type", "any")))
    if "minimum" in prop and "maximum" in prop:
        return f"{text}, {prop['minimum']} to {prop['maximum']}"
    if "minimum" in prop:
        return f"{text}, at least {prop['minimum']}"
    if "maximum" in prop:
        return f"{text}, at most {prop['maximum']}"
    return text


def _default(prop: dict[str, Any]) -> str:
    if "default" not in prop:
        return "optional"
    value = prop["default"]
    if value is None or value in ({}, [], ""):
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        iso = ISO_DURATION.match(value)
        if iso and value != "P":
            days, hours, minutes, seconds = (int(g or 0) for g in iso.groups())
            parts = [(days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s")]
            return "`" + "".join(f"{n}{unit}" for n, unit in parts if n) + "`"
        if re.fullmatch(r"\d{2}:\d{2}:00", value):
            return f"`{value[:5]}`"
        return f"`{value}`"
    if isinstance(value, dict):
        return f"`{json.dumps(value)}`"
    return f"`{value}`"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


# --------------------------------------------------------------------------- CLI reference


def cli_reference() -> str:
    """`wardkey --help` and every command's, as the installed CLI prints them."""
    from app.cli import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal's width
    parser = build_parser()
    out = ["### `wardkey`\n", "```text", parser.format_help().rstrip(), "```\n"]
    for path, sub in _subcommands(parser, ["wardkey"]):
        out += [f"### `{' '.join(path)}`\n", "```text", sub.format_help().rstrip(), "```\n"]
    return "\n".join(out)


def _subcommands(
    parser: argparse.ArgumentParser, path: list[str]
) -> list[tuple[list[str], argparse.ArgumentParser]]:
    found: list[tuple[list[str], argparse.ArgumentParser]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                has_own = any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)
                if not has_own:
                    found.append(([*path, name], sub))
                found += _subcommands(sub, [*path, name])
    return found
