"""Slash command text into typed commands, or a UsageError that says what was wrong and shows a
correct example. Pure: no Slack, no database."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from app.policy.durations import DurationError, parse_duration

MAX_TEXT = 2000
# Characters that change how text looks without being visible: zero-width and direction marks.
_INVISIBLE = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")
_ACCESS = re.compile(r"^(?P<target>[a-z0-9][a-z0-9_.-]*):(?P<role>[a-z0-9][a-z0-9_.-]*)$")
# A ticket at the end of a request: INC0012345 (bracketed or not), or a Jira key in brackets,
# [WARD-42] (bare, it could be the reason's last word: "COVID-19").
_TICKET = re.compile(
    r"^(\[?(?P<ticket>[A-Z]{2,10}[0-9]{4,12})\]?|\[(?P<key>[A-Z][A-Z0-9_]{1,9}-[0-9]{1,9})\])$"
)
_ID = re.compile(r"^#?(?P<id>[0-9]{1,12})$")

REQUEST_EXAMPLE = "/jit request pharmacy-db:read 30m fix stuck order set on ward 12 INC0012345"
BREAKGLASS_EXAMPLE = "/breakglass pharmacy-db:read pharmacy system down in ED"
EXTEND_EXAMPLE = "/jit extend 42 30m"
REVOKE_EXAMPLE = "/jit revoke 42"
CANCEL_EXAMPLE = "/jit cancel 42"
LOCKDOWN_EXAMPLE = '/jit lockdown pharmacy-db "suspected compromise of the admin account"'
LIFT_EXAMPLE = "/jit lockdown lift pharmacy-db checked with the vendor, safe again"
_TARGET = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
IDENTITY_EXAMPLE = (
    "/jit request lab-db:interface 1h replay stuck HL7 results INC0012345 for svc-lab-interface"
)


class UsageError(Exception):
    def __init__(self, problem: str, example: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.example = example

    @property
    def message(self) -> str:
        return f"{self.problem}\nFor example: `{self.example}`"


@dataclass(frozen=True)
class OpenModal:
    pass


@dataclass(frozen=True)
class Help:
    pass


@dataclass(frozen=True)
class ListTargets:
    pass


@dataclass(frozen=True)
class Status:
    pass


@dataclass(frozen=True)
class Standing:
    """Admins: access on targets that no grant covers."""


@dataclass(frozen=True)
class RequestAccess:
    target: str
    role: str
    duration: timedelta
    reason: str
    ticket: str | None
    # `… for svc-name`: the service account to elevate (its owner asks). Whether it names a
    # real service account is for the policy to say; otherwise it was part of the reason.
    for_identity: str | None = None


@dataclass(frozen=True)
class Extend:
    request_id: int
    duration: timedelta


@dataclass(frozen=True)
class Revoke:
    request_id: int
    reason: str


@dataclass(frozen=True)
class Cancel:
    """Withdraw a request still waiting for approval; the words after the number say why."""

    request_id: int
    reason: str


@dataclass(frozen=True)
class Lockdown:
    """Security admins: revoke every grant on a target and refuse new ones until lifted."""

    target: str
    reason: str


@dataclass(frozen=True)
class LiftLockdown:
    target: str
    note: str


@dataclass(frozen=True)
class BreakGlass:
    target: str
    role: str
    reason: str


JitCommand = (
    OpenModal
    | Help
    | ListTargets
    | Status
    | Standing
    | RequestAccess
    | Extend
    | Revoke
    | Cancel
    | Lockdown
    | LiftLockdown
)


def _clean(text: str, example: str) -> str:
    if len(text) > MAX_TEXT:
        raise UsageError(f"That is {len(text):,} characters; keep it under {MAX_TEXT:,}.", example)
    return _INVISIBLE.sub("", text).strip()


def _access(word: str, example: str) -> tuple[str, str]:
    match = _ACCESS.match(word.lower())
    if match is None:
        raise UsageError(f"'{word}' is not a target and role; write them as target:role.", example)
    return match["target"], match["role"]


def _duration(word: str, example: str) -> timedelta:
    try:
        return parse_duration(word)
    except DurationError as exc:
        raise UsageError(str(exc), example) from None


def _request_id(word: str, example: str) -> int:
    match = _ID.match(word)
    if match is None:
        raise UsageError(f"'{word}' is not a request number.", example)
    return int(match["id"])


def parse_jit(text: str) -> JitCommand:
    words = _clean(text, REQUEST_EXAMPLE).split()
    if not words:
        return OpenModal()
    verb, rest = words[0].lower(), words[1:]
    if verb == "help":
        return Help()
    if verb == "targets":
        return ListTargets()
    if verb == "status":
        return Status()
    if verb == "standing":
        return Standing()
    if verb == "request":
        if len(rest) < 3:
            raise UsageError(
                "Say what you need, for how long and why: target:role, a duration, then a reason.",
                REQUEST_EXAMPLE,
            )
        target, role = _access(rest[0], REQUEST_EXAMPLE)
        duration = _duration(rest[1], REQUEST_EXAMPLE)
        reason_words = rest[2:]
        ticket, for_identity = None, None
        for _ in range(2):  # `[TICKET] for svc-x` or `for svc-x [TICKET]`, at the end
            if ticket is None and reason_words and (last := _TICKET.match(reason_words[-1])):
                ticket, reason_words = last["ticket"] or last["key"], reason_words[:-1]
            if for_identity is None and len(reason_words) >= 2 and reason_words[-2] == "for":
                for_identity, reason_words = reason_words[-1], reason_words[:-2]
        if not reason_words:
            raise UsageError("Add a reason after the duration.", REQUEST_EXAMPLE)
        return RequestAccess(target, role, duration, " ".join(reason_words), ticket, for_identity)
    if verb == "extend":
        if len(rest) != 2:
            raise UsageError("Give the request number and how much longer.", EXTEND_EXAMPLE)
        return Extend(_request_id(rest[0], EXTEND_EXAMPLE), _duration(rest[1], EXTEND_EXAMPLE))
    if verb == "revoke":
        if not rest:
            raise UsageError("Give the number of the request to end.", REVOKE_EXAMPLE)
        return Revoke(_request_id(rest[0], REVOKE_EXAMPLE), " ".join(rest[1:]))
    if verb == "cancel":
        if not rest:
            raise UsageError("Give the number of the request to cancel.", CANCEL_EXAMPLE)
        return Cancel(_request_id(rest[0], CANCEL_EXAMPLE), " ".join(rest[1:]))
    if verb == "lockdown":
        return _lockdown(rest)
    raise UsageError(
        f"I don't know '{words[0][:40]}'. Try request, status, cancel, extend, revoke, targets "
        "or help.",
        REQUEST_EXAMPLE,
    )


def _lockdown(rest: list[str]) -> Lockdown | LiftLockdown:
    """`lockdown TARGET reason…` or `lockdown lift TARGET [note…]`; a reason in quotes is
    taken without them."""
    if rest and rest[0].lower() == "lift":
        if len(rest) < 2:
            raise UsageError("Name the target whose lockdown to lift.", LIFT_EXAMPLE)
        return LiftLockdown(_target(rest[1], LIFT_EXAMPLE), _unquoted(rest[2:]))
    if not rest:
        raise UsageError("Name the target to lock down, then say why.", LOCKDOWN_EXAMPLE)
    target = _target(rest[0], LOCKDOWN_EXAMPLE)
    reason = _unquoted(rest[1:])
    if not reason:
        raise UsageError(f"Say why {target} is being locked down.", LOCKDOWN_EXAMPLE)
    return Lockdown(target, reason)


def _target(word: str, example: str) -> str:
    name = word.lower()
    if ":" in name or _TARGET.match(name) is None:
        raise UsageError(f"'{word[:60]}' is not a target name (a whole target, no role).", example)
    return name


def _unquoted(words: list[str]) -> str:
    text = " ".join(words).strip()
    for left, right in (('"', '"'), ("“", "”"), ("'", "'")):
        if len(text) >= 2 and text.startswith(left) and text.endswith(right):
            return text[1:-1].strip()
    return text


def parse_breakglass(text: str) -> BreakGlass:
    words = _clean(text, BREAKGLASS_EXAMPLE).split()
    if len(words) < 2:
        raise UsageError("Say which target:role you need and why.", BREAKGLASS_EXAMPLE)
    target, role = _access(words[0], BREAKGLASS_EXAMPLE)
    return BreakGlass(target, role, " ".join(words[1:]))
