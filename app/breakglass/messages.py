"""Break-glass held for a second person: the Confirm card sent to each eligible confirmer,
and the security channel's line showing the wait, both updated in place when it ends."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from zoneinfo import ZoneInfo

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextBlock,
    HeaderBlock,
    PlainTextObject,
    SectionBlock,
)

from app.blockkit import Names, inert, quoted, words
from app.lifecycle.snapshots import BreakGlassStart, RequestSnapshot
from app.policy.durations import format_duration
from app.store.models import RequestState
from app.wording import clock_time

CONFIRM_ACTION = "breakglass_confirm"
# The purposes under which the confirm cards and the security channel's wait line are
# remembered, to be updated in place.
CONFIRM_CARD = "breakglass_confirm_card"
WAIT_LINE = "breakglass_wait"


def waited_words(waited: timedelta) -> str:
    """A wait as people say it: `45s`, `2m 10s`, `1h 5m`."""
    seconds = max(0, int(waited.total_seconds()))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {seconds}s"
    return f"{seconds}s"


def flag_lines(flags: Sequence[tuple[str, str]]) -> str:
    """The flags of a use, one bullet each, or '' when there are none."""
    return "\n".join(f"• ⚑ {inert(text)}" for _code, text in flags)


def _ending(view: RequestSnapshot, start: BreakGlassStart, zone: ZoneInfo, names: Names) -> str:
    if start.confirmed_by is not None:
        waited = waited_words(start.waited or timedelta(0))
        line = (
            f"✅ Confirmed by {names.person(start.confirmed_by, start.confirmed_by)} after {waited}"
        )
        if view.state == RequestState.ACTIVE:
            return f"{line}: access granted until {clock_time(view.expires_at, zone)}."
        if view.state == RequestState.GRANT_FAILED:
            return f"{line}, but the target did not grant it; security and the admins were told."
        return f"{line}."
    if view.state == RequestState.TIMED_OUT:
        return "Nobody confirmed it in time; it was closed. They can break glass again."
    if view.state == RequestState.CANCELLED:
        return f"Closed without access: {inert(view.end_reason or 'cancelled')}."
    return ""


def confirm_card(
    view: RequestSnapshot, start: BreakGlassStart, zone: ZoneInfo, names: Names
) -> tuple[str, list[Block]]:
    """To each eligible confirmer: who needs what and why it needs a second person, the
    flags, and Confirm while it waits."""
    who = names.person(view.requester, view.requester_slack_id)
    access = f"`{view.target}:{view.role}`"
    length = format_duration(view.requested)
    text = f"Break-glass #{view.id}: {who} needs {access} now and a second person to confirm"
    reasons = "\n".join(f"• {inert(r)}" for r in start.held_for)
    blocks: list[Block] = [
        HeaderBlock(text=PlainTextObject(text=f"Break-glass #{view.id} needs a second person")),
        SectionBlock(
            text=words(
                f"{who} needs {access} for {length}, now.\n*Why*, in their words\n"
                f"{quoted(view.reason, 1200)}"
            )
        ),
        SectionBlock(text=words(f"*Why it needs a second person*\n{reasons}"[:2990])),
    ]
    if start.flags:
        blocks.append(SectionBlock(text=words(f"*Flags*\n{flag_lines(start.flags)}"[:2990])))
    ending = _ending(view, start, zone, names)
    if view.state == RequestState.PENDING:
        blocks.append(
            ContextBlock(
                elements=[
                    words(
                        "The first to confirm grants it at once; it is reviewed afterwards like "
                        "any break-glass use. The person cannot confirm it themself."
                    )
                ]
            )
        )
        blocks.append(
            ActionsBlock(
                block_id=f"breakglass:{view.id}",
                elements=[
                    ButtonElement(
                        text="Confirm",
                        action_id=CONFIRM_ACTION,
                        value=str(view.id),
                        style="primary",
                    )
                ],
            )
        )
    elif ending:
        blocks.append(SectionBlock(text=words(ending)))
        text = f"Break-glass #{view.id}: {ending}"
    return text, blocks


def wait_line(
    view: RequestSnapshot,
    start: BreakGlassStart,
    waited: timedelta,
    zone: ZoneInfo,
    names: Names,
) -> str:
    """The security channel's line about a held use: the wait so far, live, then its end."""
    who = names.person(view.requester, view.requester_slack_id)
    head = f"Break-glass #{view.id}: {who} needs `{view.target}:{view.role}`"
    why = "; ".join(inert(r) for r in start.held_for)
    asked = ", ".join(names.person(m, m) for m in start.confirmers)
    if view.state == RequestState.PENDING:
        line = (
            f"⏳ {head}: waiting {waited_words(waited)} for a second person ({why}). "
            f"Asked to confirm: {asked}."
        )
    else:
        line = f"{head}: {_ending(view, start, zone, names)} ({why})"
    flags = flag_lines(start.flags)
    return f"{line}\n{flags}" if flags else line
