"""Read a policy manifest: YAML in, a validated `Policy` out, or every problem with its place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from app.policy.checks import Location, PolicyIssue, semantic_issues
from app.policy.model import Policy


class PolicyError(Exception):
    """The manifest is unusable; `issues` lists every problem found."""

    def __init__(self, source: str, issues: list[PolicyIssue], complete: bool = True) -> None:
        self.source = source
        self.issues = issues
        # False when shape errors kept the cross-reference checks from running at all.
        self.complete = complete
        lines = "\n".join(f"  {issue}" for issue in issues)
        super().__init__(f"{source}: {len(issues)} problem(s)\n{lines}")


def load_policy(path: str | Path) -> Policy:
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(str(source), [PolicyIssue((), f"cannot read the file: {exc}")]) from None
    return parse_policy(text, str(source))


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(source, [PolicyIssue((), f"not valid YAML: {problem}", line)]) from None
    if not isinstance(data, dict):
        raise PolicyError(source, [PolicyIssue((), "the manifest must be a YAML mapping")])
    lines = _LineIndex(root)
    issues = lines.duplicate_keys()
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        issues += [_issue_from_pydantic(err, lines) for err in exc.errors()]
        issues.sort(key=lambda i: i.line or 0)
        raise PolicyError(source, issues, complete=False) from None
    issues += [PolicyIssue(i.loc, i.message, lines.line_of(i.loc)) for i in semantic_issues(policy)]
    if issues:
        raise PolicyError(source, sorted(issues, key=lambda i: i.line or 0))
    return policy


def _issue_from_pydantic(error: Any, lines: _LineIndex) -> PolicyIssue:
    loc = tuple(part for part in error["loc"] if part != "[key]")
    message = str(error["msg"]).removeprefix("Value error, ")
    kind = error["type"]
    if kind == "missing":
        message = "required, but missing"
    elif kind == "extra_forbidden":
        message = "unknown field (check the spelling)"
    elif "[key]" in error["loc"]:
        message = f"bad name: {message}"
    return PolicyIssue(loc, message, lines.line_of(loc))


class _LineIndex:
    """Maps a location such as ('targets', 'db', 'roles') to its line in the YAML text."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root

    def line_of(self, loc: Location) -> int | None:
        node = self.root
        best = node.start_mark.line + 1 if node is not None else None
        for part in loc:
            node = self._child(node, part)
            if node is None:
                break
            best = node.start_mark.line + 1
        return best

    @staticmethod
    def _child(node: yaml.Node | None, part: str | int) -> yaml.Node | None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if str(key.value) == str(part):
                    return value  # type: ignore[no-any-return]
        in_range = isinstance(part, int) and 0 <= part < len(getattr(node, "value", []))
        if isinstance(node, yaml.SequenceNode) and in_range:
            return node.value[part]  # type: ignore[no-any-return]
        return None

    def duplicate_keys(self) -> list[PolicyIssue]:
        # PyYAML keeps the last of two equal keys silently; a second target or group with the
        # same name would hide the first, so it is an error here.
        found: list[PolicyIssue] = []

        def walk(node: yaml.Node | None, loc: Location) -> None:
            if isinstance(node, yaml.MappingNode):
                seen: set[str] = set()
                for key, value in node.value:
                    name = str(key.value)
                    if name in seen:
                        found.append(
                            PolicyIssue((*loc, name), "defined twice", key.start_mark.line + 1)
                        )
                    seen.add(name)
                    walk(value, (*loc, name))
            elif isinstance(node, yaml.SequenceNode):
                for i, item in enumerate(node.value):
                    walk(item, (*loc, i))

        walk(self.root, ())
        return found
