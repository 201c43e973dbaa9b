"""Checks of what people type, the same for every feature: reasons and notes (whitespace
collapsed, control characters refused, enough words, not too long) and durations within a
role's cap. Each refusal is an InvalidRequest (or NotEligible) naming the form field."""

from __future__ import annotations

import re
import unicodedata
from datetime import timedelta

from app.lifecycle.errors import InvalidRequest, NotEligible
from app.policy import rules
from app.policy.durations import format_duration

MIN_REASON_WORDS = 3
MAX_REASON_CHARS = 2000
MAX_NOTE_CHARS = 1000
WORD = re.compile(r"\w{2,}")


def refuse_control_characters(text: str, what: str, field: str | None = None) -> None:
    """PostgreSQL cannot store NUL, and other control characters garble logs and cards:
    refuse them the same way on every database."""
    if any(unicodedata.category(c) == "Cc" and not c.isspace() for c in text):
        raise InvalidRequest(f"Remove the control character from the {what}.", field=field)


def clean_text(
    text: str,
    *,
    what: str,
    min_words: int,
    max_chars: int,
    too_short: str,
    field: str | None = None,
) -> str:
    """The one check of every reason and note a person types (request and break-glass
    reasons, deny reasons, review and revoke notes): whitespace collapsed, control characters
    refused, at least `min_words` words (0: not empty) and at most `max_chars` characters."""
    refuse_control_characters(text, what, field)
    cleaned = " ".join(text.split())
    if not cleaned or len(WORD.findall(cleaned)) < min_words:
        raise InvalidRequest(too_short, field=field)
    if len(cleaned) > max_chars:
        raise InvalidRequest(f"Keep the {what} under {max_chars} characters.", field=field)
    return cleaned


def clean_reason(reason: str) -> str:
    """Why someone asks for access (a request or break-glass)."""
    return clean_text(
        reason,
        what="reason",
        min_words=MIN_REASON_WORDS,
        max_chars=MAX_REASON_CHARS,
        too_short=f"Give a reason of at least {MIN_REASON_WORDS} words, e.g. "
        '"fix stuck order set on ward 12".',
        field="reason",
    )


def clean_note(note: str, too_short: str) -> str:
    """A note for the record: a review's verdict, or what an admin checked on the target."""
    return clean_text(
        note,
        what="note",
        min_words=MIN_REASON_WORDS,
        max_chars=MAX_REASON_CHARS,
        too_short=too_short,
        field="note",
    )


def within_cap(duration: timedelta, plan: rules.RequestPlan) -> timedelta:
    if duration <= timedelta(0):
        raise InvalidRequest("Ask for at least 1m.", field="duration")
    if plan.cap <= timedelta(0):
        raise NotEligible(
            f"No time is left for {plan.target}:{plan.role} (contract ended).", field="access"
        )
    if duration > plan.cap:
        raise InvalidRequest(
            f"{format_duration(duration)} is more than the {format_duration(plan.cap)} allowed "
            f"for {plan.target}:{plan.role}; ask for {format_duration(plan.cap)} or less.",
            field="duration",
        )
    return duration
