"""Break-glass reviews as Slack shows them: the review card with Justified / Not justified, the
dialog that asks the reviewer why, the reminder, the overdue alert and the outcome. Messages
never change state: they draw what the review service returns."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextBlock,
    HeaderBlock,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)

from app.blockkit import SLACK_SHOWS, Names, escape, inert, mention, quoted, why_modal, words
from app.lifecycle.snapshots import RequestSnapshot
from app.policy.durations import format_duration
from app.policy.model import BREAK_GLASS_PATH
from app.reviews.service import BreakGlassSummary
from app.store.models import RequestState, ReviewState
from app.wording import clock_time, day_time, listed, plural

# The card's buttons, and the dialog they open (its callback, and the note's field).
REVIEW_JUSTIFIED = "review_justified"
REVIEW_NOT_JUSTIFIED = "review_not_justified"
REVIEW_VIEW, NOTE_BLOCK, NOTE_INPUT = "review_note", "note", "note_text"


def note_modal(request_id: int, justified: bool) -> dict[str, Any]:
    """A break-glass review verdict asks why; it goes in the audit trail."""
    verdict = "Justified" if justified else "Not justified"
    return why_modal(
        REVIEW_VIEW,
        {"id": request_id, "justified": justified},
        title=f"Review #{request_id}",
        submit=verdict,
        question=f"{verdict}: why? This goes in the audit trail.",
        block_id=NOTE_BLOCK,
        action_id=NOTE_INPUT,
    )


def alerted(recipients: tuple[str, ...], names: Names = SLACK_SHOWS) -> str:
    """Who the break-glass alert reached (IDs Slack itself gave us), by name."""
    if not recipients:
        return "nobody: the alert could not be sent"
    return ", ".join(names.channel(r) for r in recipients)


def review_line(view: RequestSnapshot, zone: ZoneInfo, names: Names = SLACK_SHOWS) -> str:
    review = view.review
    if review is None:
        return "No review"
    if review.state == ReviewState.OPEN:
        return f"⏳ Review due by {day_time(review.due_at, zone)}"
    mark = "✅ Justified" if review.state == ReviewState.JUSTIFIED else "❌ Not justified"
    who = names.person(review.reviewer) if review.reviewer else "a reviewer"
    note = inert(review.note or "")
    return f"{mark}: {who} at {day_time(review.decided_at, zone)}: {note}"


def _at(instant: datetime | None, near: datetime | None, zone: ZoneInfo) -> str:
    """The time alone when it falls on the same local day as `near`, else day and time."""
    if instant is None or near is None:
        return clock_time(instant, zone)
    same_day = instant.astimezone(zone).date() == near.astimezone(zone).date()
    return clock_time(instant, zone) if same_day else day_time(instant, zone)


def earlier_line(
    earlier: RequestSnapshot,
    use: RequestSnapshot,
    zone: ZoneInfo,
    names: Names,
    replaced: bool = False,
) -> str:
    """One of the user's other requests for the same access, for the reviewer: what became of
    it, when and by whom, in the approver's own words. `replaced`: this use replaced it."""
    asked = f"#{earlier.id} asked {_at(earlier.created_at, use.created_at, zone)}"
    by = listed([names.person(d.approver, d.approver_slack_id) for d in earlier.approvals])
    decided = _at(earlier.decided_at, use.created_at, zone)
    ended = _at(earlier.ended_at, use.created_at, zone)
    if earlier.path == BREAK_GLASS_PATH:
        return f"#{earlier.id} break-glass at {_at(earlier.created_at, use.created_at, zone)}"
    match earlier.state:
        case RequestState.DENIED:
            denier = next((d for d in earlier.decisions if d.outcome == "deny"), None)
            who = names.person(denier.approver, denier.approver_slack_id) if denier else None
            why = inert(earlier.end_reason or "")[:300]
            return f"{asked}, *denied* {decided} by {who or 'an approver'}: “{why}”"
        case RequestState.PENDING:
            return f"{asked}, still waiting for approval"
        case RequestState.TIMED_OUT:
            return f"{asked}: nobody decided in time"
        case RequestState.CANCELLED if replaced:
            return f"{asked}, still waiting when this break-glass use replaced it"
        case RequestState.CANCELLED:
            why = f": {inert(earlier.end_reason)[:300]}" if earlier.end_reason else ""
            return f"{asked}, cancelled {ended}{why}"
        case RequestState.GRANT_FAILED:
            return f"{asked}, approved {decided} by {by}, but the target could not grant it"
        case (
            RequestState.APPROVED
            | RequestState.GRANTING
            | RequestState.ACTIVE
            | RequestState.REVOKING
            | RequestState.REVOKE_FAILED
        ):
            return f"{asked}, approved {decided} by {by}"
        case RequestState.ENDED:
            return f"{asked}, approved {decided} by {by}, ended {ended}"
    return f"{asked}: {earlier.state.value}"


def review_card(
    summary: BreakGlassSummary,
    zone: ZoneInfo,
    names: Names = SLACK_SHOWS,
    requester_label: str = "",
) -> list[Block]:
    """The break-glass summary reviewers judge, with Justified / Not justified while open: who
    (name and title), what, when, why in their words, who was alerted, what they asked for
    before (a denial minutes earlier matters most), how often they used break-glass lately, and
    what the target recorded. `requester_label`: the user's name and title in Slack."""
    view = summary.view
    used = format_duration(summary.used_for) if summary.used_for is not None else "—"
    if summary.recorded:
        record = "The target logged every statement of the session (session recording)."
    else:
        record = "The target does not record sessions for this role."
    if summary.sessions_ended:
        record += f" Revoking ended {plural(summary.sessions_ended, 'open session')}."
    for note in summary.target_notes:
        record += f" {escape(note)[:300]}."
    who = mention(view.requester_slack_id, view.requester)
    if requester_label:
        who += f" ({inert(requester_label)})"
    before = [
        f"• {earlier_line(e, view, zone, names, replaced=e.id == summary.replaces)}"
        for e in summary.earlier
    ]
    if summary.replaces is not None and summary.replaces not in {e.id for e in summary.earlier}:
        before.append(
            f"• It replaced their request #{summary.replaces}, which was waiting for approval "
            "(cancelled when break-glass began)."
        )
    if not before:
        before = ["• No other request for this access in the 24 hours before."]
    uses = summary.break_glass_30_days
    often = (
        "This is their only break-glass use in the last 30 days."
        if uses <= 1
        else f"{plural(uses, 'break-glass use')} in the last 30 days, this one included."
    )
    history = "\n".join([*before, often])
    blocks: list[Block] = [
        HeaderBlock(text=PlainTextObject(text=f"Break-glass review #{view.id}")),
        SectionBlock(
            fields=[
                words(f"*Who*\n{who}"),
                MarkdownTextObject(
                    text=f"*Access*\n`{view.target}:{view.role}` as `{escape(view.account)}`"
                ),
                MarkdownTextObject(
                    text=f"*When*\n{day_time(view.granted_at, zone)} to "
                    f"{clock_time(view.ended_at, zone)} ({used})"
                ),
                words(f"*Alerted*\n{alerted(summary.alerted, names)}"[:2000]),
            ]
        ),
        SectionBlock(text=words(f"*Why*, in their words\n{quoted(view.reason)}")),
        SectionBlock(text=words(f"*Before this*, the last 24 hours\n{history}"[:2990])),
        *_break_glass_flags(summary, names),
        SectionBlock(text=MarkdownTextObject(text=f"*On the target*\n{record[:2900]}")),
        ContextBlock(elements=[words(review_line(view, zone, names))]),
    ]
    if view.review is not None and view.review.state == ReviewState.OPEN:
        blocks.append(
            ActionsBlock(
                block_id=f"review:{view.id}",
                elements=[
                    ButtonElement(
                        text="Justified",
                        action_id=REVIEW_JUSTIFIED,
                        value=str(view.id),
                        style="primary",
                    ),
                    ButtonElement(
                        text="Not justified",
                        action_id=REVIEW_NOT_JUSTIFIED,
                        value=str(view.id),
                        style="danger",
                    ),
                ],
            )
        )
    return blocks


def _break_glass_flags(summary: BreakGlassSummary, names: Names) -> list[Block]:
    """The use's flags, and the second person who confirmed it if it was held."""
    lines = [f"• ⚑ {inert(text)}" for _code, text in summary.flags]
    if summary.confirmed_by is not None:
        who = names.person(summary.confirmed_by, summary.confirmed_by)
        lines.append(
            f"• Needed a second person ({inert('; '.join(summary.held_for))}); confirmed by {who}."
        )
    if not lines:
        return [SectionBlock(text=words("*Flags*\nNone: nothing unusual was found."))]
    return [SectionBlock(text=words(("*Flags*\n" + "\n".join(lines))[:2990]))]


def requested_text(view: RequestSnapshot, names: Names = SLACK_SHOWS) -> str:
    """The review card's message text (its notification)."""
    who = names.person(view.requester, view.requester_slack_id)
    return f"Break-glass review #{view.id}: {who} used {view.target}:{view.role}"


def reminder_text(view: RequestSnapshot, zone: ZoneInfo) -> str:
    """To the reviewers, in the card's thread and by DM, while the review waits."""
    due = day_time(view.review.due_at if view.review else None, zone)
    return f"⏰ Reminder: the review of break-glass #{view.id} is waiting (due {due})."


def overdue_text(view: RequestSnapshot, zone: ZoneInfo, names: Names = SLACK_SHOWS) -> str:
    """To security, the WardKey admins and whom the policy escalates to, once past due."""
    who = names.person(view.requester, view.requester_slack_id)
    due = day_time(view.review.due_at if view.review else None, zone)
    return (
        f"🚨 The review of break-glass #{view.id} ({who}, "
        f"`{view.target}:{view.role}`) is overdue: it was due {due}."
    )


def decided_text(view: RequestSnapshot, zone: ZoneInfo, names: Names = SLACK_SHOWS) -> str:
    """The decided card's message text."""
    return f"Break-glass review #{view.id}: {review_line(view, zone, names)}"


def outcome_text(view: RequestSnapshot, zone: ZoneInfo, names: Names = SLACK_SHOWS) -> str:
    """To the person who used break-glass, once their use is reviewed."""
    return f"The review of your break-glass use #{view.id}: {review_line(view, zone, names)}"
