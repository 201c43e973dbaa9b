"""Slash command text: cleaning it, and the words every command's parsing is built of (target and
role, a duration, a request number, a target, a quoted reason), each refused with a UsageError
that says what was wrong and shows a correct example. Pure: no Slack, no database. What each
subcommand's words mean is parsed by the feature whose it is (app/<feature>/listeners.py)."""

from __future__ import annotations

import re
from datetime import timedelta

from app.policy.durations import DurationError, parse_duration

MAX_TEXT = 2000
# Characters that change how text looks without being visible: zero-width and direction marks.
_INVISIBLE = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")
_ACCESS = re.compile(r"^(?P<target>[a-z0-9][a-z0-9_.-]*):(?P<role>[a-z0-9][a-z0-9_.-]*)$")
_ID = re.compile(r"^#?(?P<id>[0-9]{1,12})$")
_TARGET = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")

# The example `/jit` shows when its text is too long or its first word names no subcommand.
REQUEST_EXAMPLE = "/jit request pharmacy-db:read 30m fix stuck order set on ward 12 INC0012345"


class UsageError(Exception):
    def __init__(self, problem: str, example: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.example = example

    @property
    def message(self) -> str:
        return f"{self.problem}\nFor example: `{self.example}`"


def clean(text: str, example: str) -> str:
    if len(text) > MAX_TEXT:
        raise UsageError(f"That is {len(text):,} characters; keep it under {MAX_TEXT:,}.", example)
    return _INVISIBLE.sub("", text).strip()


def access(word: str, example: str) -> tuple[str, str]:
    match = _ACCESS.match(word.lower())
    if match is None:
        raise UsageError(f"'{word}' is not a target and role; write them as target:role.", example)
    return match["target"], match["role"]


def duration(word: str, example: str) -> timedelta:
    try:
        return parse_duration(word)
    except DurationError as exc:
        raise UsageError(str(exc), example) from None


def request_id(word: str, example: str) -> int:
    match = _ID.match(word)
    if match is None:
        raise UsageError(f"'{word}' is not a request number.", example)
    return int(match["id"])


def target(word: str, example: str) -> str:
    name = word.lower()
    if ":" in name or _TARGET.match(name) is None:
        raise UsageError(f"'{word[:60]}' is not a target name (a whole target, no role).", example)
    return name


def unquoted(words: list[str]) -> str:
    """The words as one text; a text in quotes is taken without them."""
    text = " ".join(words).strip()
    for left, right in (('"', '"'), ("“", "”"), ("'", "'")):
        if len(text) >= 2 and text.startswith(left) and text.endswith(right):
            return text[1:-1].strip()
    return text
