"""Words for counts and lists, the same everywhere WardKey speaks: "1 approval", "2 approvals",
"Ben Hughes and Hana Novak". No "(s)" in anything a person reads."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

# Plurals that are not the word with an "s": the few WardKey says.
_IRREGULAR = {
    "person": "people",
    "was": "were",
    "is": "are",
    "entry": "entries",
    "policy": "policies",
    "identity": "identities",
    "reply": "replies",
    "this": "these",
}


def plural_of(word: str) -> str:
    """`word` for more than one: irregular ones from a short list, else with "s" (or "es")."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    return word + "s"


def plural(count: int, word: str, many: str | None = None, *, zero: str | None = None) -> str:
    """The count and the right form of the word: `plural(1, "service account")` is
    "1 service account", `plural(2, "vendor")` "2 vendors", `plural(3, "person")` "3 people".
    For a phrase, the last word is the one made plural unless `many` names the whole phrase.
    `zero` says nothing differently ("none", "no elevations")."""
    if count == 0 and zero is not None:
        return zero
    if count == 1:
        return f"1 {word}"
    if many is None:
        head, _, last = word.rpartition(" ")
        many = f"{head} {plural_of(last)}" if head else plural_of(last)
    return f"{count} {many}"


def listed(items: Sequence[str], conjunction: str = "and") -> str:
    """Items as a sentence says them: "A", "A and B", "A, B and C"."""
    if not items:
        return ""
    if len(items) == 1:
        return items[0]
    return f"{', '.join(items[:-1])} {conjunction} {items[-1]}"


def clock_time(instant: datetime | None, zone: ZoneInfo) -> str:
    """A time of day in the policy's zone ("14:05"), or "—" when there is none."""
    return "—" if instant is None else instant.astimezone(zone).strftime("%H:%M")


def day_time(instant: datetime | None, zone: ZoneInfo) -> str:
    """A day and time in the policy's zone ("Tue 01 Dec 14:05"), or "—" when there is none."""
    return "—" if instant is None else instant.astimezone(zone).strftime("%a %d %b %H:%M")
