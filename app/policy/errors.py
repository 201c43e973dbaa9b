"""Problems in a manifest in WardKey's words: what is wrong, where, and the likely fix.

pydantic's and PyYAML's messages ("Field required", "Input should be a valid dictionary",
"expected <block end>, but found '<block mapping start>'") are turned into plain sentences that
name the field, suggest the nearest name for a typo, and explain indentation in words.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Iterable
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

from app.policy.model import Policy

Location = tuple[str | int, ...]


def did_you_mean(name: object, choices: Iterable[object]) -> str:
    """' (did you mean 'engineering'?)' for a near miss, else ''."""
    options = [str(c) for c in choices]
    close = difflib.get_close_matches(str(name), options, n=1, cutoff=0.6)
    if not close and isinstance(name, str):  # a case slip: 'Engineering'
        close = [o for o in options if o.lower() == name.lower()][:1]
    return f" (did you mean '{close[0]}'?)" if close else ""


# --------------------------------------------------------------------------- the model's shape

# What each part of the manifest is called, in the words of the policy reference.
_NOUNS = {
    "Policy": "the policy (top level)",
    "Channels": "channels",
    "PersonAliases": "a person's other accounts",
    "RotaOverride": "a rota override",
    "Rota": "an on-call rota",
    "ApproverSource": "an approver source (group or rota)",
    "AccessPath": "an access path",
    "AccountMapping": "a target's account mapping",
    "Role": "a role",
    "Target": "a target",
    "Identity": "a service account (identities)",
    "Vendor": "a vendor",
    "DirectoryGroup": "a group from the directory",
    "LdapGroup": "an LDAP group",
    "EntraGroup": "an Entra ID group",
}


# Parts of a pydantic location that are no place in the manifest: a key's own check, and the
# tags of a union (a group: listed, or read from the directory).
_NOT_PLACES = {"[key]", "[listed]", "[directory-group]"}


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated and Optional: `Annotated[X, …] | None` -> X."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            inner = [a for a in get_args(annotation) if a is not type(None)]
            if len(inner) != 1:
                return annotation
            annotation = inner[0]
        else:
            return annotation


def shape_at(loc: Location) -> Any:
    """The type the manifest has at `loc` (a model class, dict[…], list[…], a Literal…), or None
    where the location leaves the model (a typo'd key, settings)."""
    current: Any = Policy
    for part in loc:
        current = _branch(_unwrap(current), part)
        origin = get_origin(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        elif origin is dict:
            current = get_args(current)[1]
        elif origin is list:
            current = get_args(current)[0]
        else:
            return None
    return _unwrap(current)


def _branch(current: Any, part: str | int) -> Any:
    """In a union (a group: a list, or a directory group), the branch `part` goes into: a list
    for a position, a model for a name."""
    if get_origin(current) not in (Union, types.UnionType):
        return current
    for option in (_unwrap(a) for a in get_args(current)):
        is_list = get_origin(option) is list
        if is_list == isinstance(part, int):
            return option
    return current


def model_at(loc: Location) -> type[BaseModel] | None:
    shape = shape_at(loc)
    return shape if isinstance(shape, type) and issubclass(shape, BaseModel) else None


def _noun(model: type[BaseModel]) -> str:
    return _NOUNS.get(model.__name__, model.__name__)


def _models_inside(model: type[BaseModel], depth: int = 3) -> Iterable[tuple[type[BaseModel], str]]:
    """Models nested in `model`, with the field path to them (e.g. Role via 'roles.<name>')."""
    if depth == 0:
        return
    for name, field in model.model_fields.items():
        shape = _unwrap(field.annotation)
        step = name
        while get_origin(shape) in (dict, list):
            step += ".<name>" if get_origin(shape) is dict else ".<n>"
            shape = _unwrap(get_args(shape)[-1])
        if isinstance(shape, type) and issubclass(shape, BaseModel):
            yield shape, step
            for inner, path in _models_inside(shape, depth - 1):
                yield inner, f"{step}.{path}"


# --------------------------------------------------------------------------- pydantic's errors

_KIND_OF = {dict: "a mapping", list: "a list", str: "text", int: "a number", float: "a number"}


def _found(value: Any) -> str:
    if isinstance(value, bool):
        return f"found {str(value).lower()}"
    for kind, words in _KIND_OF.items():
        if isinstance(value, kind):
            shown = f" {value!r}" if isinstance(value, str | int | float) else ""
            return f"found {words}{shown}"
    return "found nothing" if value is None else f"found {value!r}"


MISPLACED = "one level further out"


def _indented_elsewhere(loc: Location, key: str, lines: Any) -> str:
    """Where `key` was written at another level nearby: the usual indentation slip."""
    parent = loc[:-1]
    # Written one level too far out: a sibling of the mapping it belongs in.
    if parent and parent[-1] != key and lines.has_key(parent[:-1], key):
        line = lines.key_line((*parent[:-1], key))
        return f"; '{key}' is on line {line}, {MISPLACED}: indent it under '{parent[-1]}'"
    return ""


def pydantic_message(error: Any, lines: Any) -> tuple[Location, str]:
    """One pydantic error as (location, WardKey's sentence)."""
    loc: Location = tuple(part for part in error["loc"] if part not in _NOT_PLACES)
    kind: str = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    msg = str(error["msg"]).removeprefix("Value error, ")
    if kind == "missing":
        owner = model_at(loc[:-1])
        what = f"{_noun(owner)} needs '{loc[-1]}'" if owner else f"'{loc[-1]}' is needed"
        return loc, f"missing: {what}{_indented_elsewhere(loc, str(loc[-1]), lines)}"
    if kind == "extra_forbidden":
        return loc, _unknown_field(loc)
    if "[key]" in error["loc"]:
        return loc, f"bad name: {msg}"
    if kind == "value_error":
        return loc, msg
    if kind == "literal_error":
        allowed = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        hint = did_you_mean(value, allowed) if isinstance(value, str) else ""
        return loc, f"must be one of {', '.join(allowed)}; {_found(value)}{hint}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        owner = model_at(loc)
        what = _noun(owner) if owner else "a mapping"
        return loc, (
            f"must be {what}: 'name: value' lines indented under it; {_found(value)}"
            + (" (is the next line indented too little?)" if value is None else "")
        )
    if kind == "list_type":
        return loc, f"must be a list ('- item' lines indented under it, or [a, b]); {_found(value)}"
    if kind == "too_short":
        if isinstance(value, str):
            return loc, "must not be empty"
        least = ctx.get("min_length", 1)
        return loc, f"needs at least {least} {'entry' if least == 1 else 'entries'}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return loc, f"must be a whole number, like 2; {_found(value)}"
    if kind == "greater_than_equal":
        return loc, f"must be at least {ctx.get('ge')}; {_found(value)}"
    if kind == "less_than_equal":
        return loc, f"must be at most {ctx.get('le')}; {_found(value)}"
    if kind in ("bool_parsing", "bool_type"):
        return loc, f"must be true or false; {_found(value)}"
    if kind in ("string_type", "string_too_short"):
        return loc, f"must be text (quote it if it looks like a number or a date); {_found(value)}"
    if kind.startswith("date"):
        return loc, f"must be a date like 2027-03-31; {_found(value)}"
    if kind.startswith("time"):
        return loc, f"must be a time of day in quotes, like '09:00'; {_found(value)}"
    # Anything else: pydantic's words, put as ours.
    plain = re.sub(r"^Input should be ", "must be ", msg)
    return loc, plain[:1].lower() + plain[1:]


def _unknown_field(loc: Location) -> str:
    key = str(loc[-1])
    owner = model_at(loc[:-1])
    if owner is None:
        return f"unknown field '{key}'"
    fields = list(owner.model_fields)
    hint = did_you_mean(key, fields)
    if hint:
        return f"unknown field '{key}'{hint}"
    # A field of a model inside this one: written one level too far out.
    for inner, path in _models_inside(owner):
        if key in inner.model_fields:
            return (
                f"unknown field '{key}' for {_noun(owner)}; it belongs to {_noun(inner)} "
                f"({path}.{key}): is it indented too little?"
            )
    return f"unknown field '{key}'; {_noun(owner)} has {', '.join(fields)}"


# --------------------------------------------------------------------------- YAML's errors


def _indent(text: str) -> int:
    return len(text) - len(text.lstrip(" "))


def _spaces(n: int) -> str:
    return f"{n} space{'' if n == 1 else 's'}"


def yaml_message(exc: yaml.YAMLError, text: str) -> tuple[int | None, str]:
    """A YAML syntax error as (line, sentence in words)."""
    problem = str(getattr(exc, "problem", "") or exc)
    context = str(getattr(exc, "context", "") or "")
    mark = getattr(exc, "problem_mark", None)
    opened = getattr(exc, "context_mark", None)
    lines = text.splitlines()
    line = mark.line + 1 if mark is not None else None

    def at(n: int | None) -> str:
        return lines[n - 1] if n is not None and 0 < n <= len(lines) else ""

    if "'\\t'" in problem or "\t" in problem:
        tab = next((n for n, t in enumerate(lines, 1) if "\t" in t[: _indent(t) + 1]), line)
        return tab, "starts with a tab: YAML indents with spaces only; use spaces"
    if "found '<block mapping start>'" in problem or "found '<block sequence start>'" in problem:
        above = opened.line + 1 if opened is not None else None
        return line, (
            f"indented {_spaces(_indent(at(line)))}, which lines up with nothing above it: the "
            f"block it seems to continue (line {above}) is indented {_spaces(_indent(at(above)))}"
            "; line it up with the keys beside it, or indent it under a key that ends with ':'"
        )
    if "but found '-'" in problem:
        return line, (
            "a list item ('- …') where a 'key: value' line was expected: put the list under a "
            "key, indented below it (for example 'members:' and then '  - …')"
        )
    if "mapping values are not allowed" in problem and line is not None:
        # Either the line above has no ':' (so YAML read both as one text), or the value has
        # ': ' in it.
        prev = line - 1
        while prev > 0 and not at(prev).strip():
            prev -= 1
        before = at(prev).strip()
        if prev > 0 and ":" not in before and not before.startswith(("-", "#")):
            return prev, f"'{before}' has no ':' after its key; write it as 'key: value'"
        return line, "has ': ' inside a value; put the whole value in quotes"
    if "could not find expected ':'" in problem:
        start = opened.line + 1 if opened is not None else line
        return start, f"'{at(start).strip()}' has no ':' after its key; write it as 'key: value'"
    if "flow sequence" in context or "flow mapping" in context:
        start = opened.line + 1 if opened is not None else line
        bracket = "[" if "sequence" in context else "{"
        close = "]" if bracket == "[" else "}"
        return start, (
            f"the '{bracket}' opened here is not closed: add '{close}' at its end, with commas "
            "between the items"
        )
    if "quoted scalar" in context:
        start = opened.line + 1 if opened is not None else line
        return start, "a quote opened here is never closed"
    return line, f"not valid YAML: {problem}"
