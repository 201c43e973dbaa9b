"""Read a policy manifest: YAML in, a validated `Policy` out, or every problem with its place."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from app.policy.checks import Location, PolicyIssue, TargetCheck, semantic_issues
from app.policy.errors import MISPLACED, did_you_mean, pydantic_message, yaml_message
from app.policy.model import Policy
from app.wording import plural


class PolicyError(Exception):
    """The manifest is unusable; `issues` lists every problem found."""

    def __init__(self, source: str, issues: list[PolicyIssue], complete: bool = True) -> None:
        self.source = source
        self.issues = issues
        # False when shape errors kept the cross-reference checks from running at all.
        self.complete = complete
        lines = "\n".join(f"  {issue}" for issue in issues)
        super().__init__(f"{source}: {plural(len(issues), 'problem')}\n{lines}")


def load_policy(path: str | Path, *, target_checks: Sequence[TargetCheck] = ()) -> Policy:
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(str(source), [PolicyIssue((), f"cannot read the file: {exc}")]) from None
    return parse_policy(text, str(source), target_checks=target_checks)


def parse_policy(
    text: str, source: str = "<policy>", *, target_checks: Sequence[TargetCheck] = ()
) -> Policy:
    """The manifest's shape, then every rule relating its parts; `target_checks` add what a
    target needs from outside the policy (its adapter's settings, app/policy_targets.py)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line, message = yaml_message(exc, text)
        raise PolicyError(source, [PolicyIssue((), message, line)]) from None
    if data is None:
        raise PolicyError(source, [PolicyIssue((), "the manifest is empty")])
    if not isinstance(data, dict):
        raise PolicyError(
            source,
            [PolicyIssue((), "the manifest must be 'key: value' lines (timezone:, groups:, …)")],
        )
    lines = LineIndex(root)
    issues = lines.duplicate_keys()
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        issues += _misplaced_once(
            [_issue_from_pydantic(err, lines) for err in _without_echoes(exc.errors())]
        )
        issues.sort(key=lambda i: i.line or 0)
        raise PolicyError(source, issues, complete=False) from None
    issues += [
        PolicyIssue(i.loc, i.message, lines.line_of(i.loc))
        for i in semantic_issues(policy, target_checks)
    ]
    if issues:
        raise PolicyError(source, sorted(issues, key=lambda i: i.line or 0))
    return policy


def _issue_from_pydantic(error: Any, lines: LineIndex) -> PolicyIssue:
    loc, message = pydantic_message(error, lines)
    if error["type"] == "extra_forbidden":
        line = lines.key_line(loc)
    elif error["type"] == "missing":
        line = lines.key_line(loc[:-1])  # the mapping that lacks it
    else:
        line = lines.line_of(loc)
    return PolicyIssue(loc, message, line)


def _misplaced_once(issues: list[PolicyIssue]) -> list[PolicyIssue]:
    """A key written one level too far out is read as an entry of its own (a target called
    'roles'): once that is said, the errors inside that entry are only its echoes."""
    misplaced = {(*issue.loc[:-2], issue.loc[-1]) for issue in issues if MISPLACED in issue.message}
    return [
        issue
        for issue in issues
        if not any(len(issue.loc) > len(m) and issue.loc[: len(m)] == m for m in misplaced)
    ]


def _without_echoes(errors: list[Any]) -> list[Any]:
    """A misspelt field is also a missing one: say it once, as the misspelling."""
    misspelt = {
        (tuple(e["loc"][:-1]), str(e["loc"][-1])) for e in errors if e["type"] == "extra_forbidden"
    }

    def echo(error: Any) -> bool:
        parent, name = tuple(error["loc"][:-1]), str(error["loc"][-1])
        return error["type"] == "missing" and any(
            p == parent and did_you_mean(typo, [name]) for p, typo in misspelt
        )

    return [e for e in errors if not echo(e)]


class LineIndex:
    """Maps a location such as ('targets', 'db', 'roles') to its line in the YAML text."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root

    @classmethod
    def of(cls, text: str) -> LineIndex:
        """The lines of a manifest's text (which must be valid YAML)."""
        return cls(yaml.compose(text, Loader=yaml.SafeLoader))

    def _node(self, loc: Location) -> yaml.Node | None:
        node = self.root
        for part in loc:
            node = self._child(node, part)
            if node is None:
                return None
        return node

    def has_key(self, loc: Location, key: str) -> bool:
        node = self._node(loc)
        return isinstance(node, yaml.MappingNode) and any(
            str(k.value) == key for k, _ in node.value
        )

    def key_line(self, loc: Location) -> int | None:
        """The line of the key that names `loc` (for a mapping entry), else of its value."""
        parent = self._node(loc[:-1]) if loc else None
        if isinstance(parent, yaml.MappingNode):
            for key, _ in parent.value:
                if str(key.value) == str(loc[-1]):
                    return int(key.start_mark.line) + 1
        return self.line_of(loc)

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
