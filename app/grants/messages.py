"""What a grant says in Slack, as Block Kit built with slack_sdk.models: the holder's Extend
and Revoke now (on the App Home's rows of active access and on the warning before access
ends), that warning, and the one line saying where access asked for stands, from waiting to
ended (`outcome_line`: the grants' own replies say it, and so does everything above them, the
requests' cards, receipts and tellings, break-glass, the vendors' sponsors; grants sit lowest
of those, so it is theirs). Messages never change state: they draw what the service returns."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    MarkdownTextObject,
    SectionBlock,
)

from app.blockkit import SLACK_SHOWS, Names, inert
from app.lifecycle.snapshots import UNREACHABLE, RequestSnapshot
from app.policy.durations import format_duration
from app.store.models import RequestState
from app.wording import clock_time, listed, plural

HOME_EXTEND, HOME_REVOKE = "home_extend", "home_revoke"
HOME_EXTEND_BY = timedelta(minutes=30)


def holder_buttons(v: RequestSnapshot, block_id: str) -> ActionsBlock:
    """What the holder of active access can do: Extend (not for break-glass) and Revoke now."""
    buttons = [
        ButtonElement(
            text="Revoke now",
            action_id=HOME_REVOKE,
            value=str(v.id),
            style="danger",
            confirm=ConfirmObject(
                title="End this access now?",
                text=f"{v.target}:{v.role} ends at once.",
                confirm="Revoke",
                deny="Keep",
            ),
        )
    ]
    if not v.is_break_glass:
        buttons.insert(
            0,
            ButtonElement(
                text=f"Extend {format_duration(HOME_EXTEND_BY)}",
                action_id=HOME_EXTEND,
                value=str(v.id),
            ),
        )
    return ActionsBlock(block_id=block_id, elements=buttons)


def expiry_warning(v: RequestSnapshot, now: datetime, zone: ZoneInfo) -> list[Block]:
    """The DM before access ends: when, and the same two buttons as the App Home."""
    left = max(timedelta(0), (v.expires_at or now) - now)
    done = "" if v.is_break_glass else " Need longer? Extend. "
    return [
        SectionBlock(
            text=MarkdownTextObject(
                text=f"⏰ Your access `{v.target}:{v.role}` (#{v.id}) ends in "
                f"{format_duration(left)}, at {clock_time(v.expires_at, zone)}.{done}"
                "Finished? Revoke it now."
            )
        ),
        holder_buttons(v, block_id=f"warn:{v.id}"),
    ]


def outcome_line(view: RequestSnapshot, zone: ZoneInfo, names: Names = SLACK_SHOWS) -> str:
    """One line saying where the request stands, for cards and DMs; people by name."""
    approvals = view.approvals
    by = listed([names.person(d.approver, d.approver_slack_id) for d in approvals])
    decided = clock_time(view.decided_at, zone)
    match view.state:
        case RequestState.PENDING:
            needed = plural(view.approvals_needed, "approval")
            if approvals:
                waiting = f"⏳ Waiting: {len(approvals)} of {needed} ({by})"
            else:
                waiting = f"⏳ Waiting for {'approval' if view.approvals_needed == 1 else needed}"
            sponsor = ""
            if view.sponsor is not None and view.extension is None:
                said = "approved" if view.sponsor_approved else "still to approve"
                sponsor = f" · vendor sponsor {names.person(view.sponsor)} {said}"
            escalated = ""
            if view.escalation_level >= UNREACHABLE:
                escalated = " · no approver could be reached, so it was escalated at once"
            elif view.escalation_level >= 2:
                escalated = " · escalated: the approval is overdue"
            return waiting + sponsor + escalated
        case RequestState.APPROVED | RequestState.GRANTING:
            return f"✅ Approved by {by} at {decided}; access is being set up"
        case RequestState.ACTIVE:
            until = clock_time(view.expires_at, zone)
            if approvals:
                return f"✅ Approved by {by} at {decided}; access active until {until}"
            return f"✅ Access active until {until}"
        case RequestState.DENIED:
            denier = next((d for d in view.decisions if d.outcome == "deny"), None)
            who = names.person(denier.approver, denier.approver_slack_id) if denier else None
            why = inert(view.end_reason or "")
            return f"❌ Denied by {who or 'an approver'} at {decided}: {why}"
        case RequestState.CANCELLED:
            # WardKey, a retirement or a contract's end cancelled it: say why, as recorded.
            if view.end_reason and view.ended_by == "wardkey":
                return f"↩️ Cancelled by WardKey: {inert(view.end_reason)}"
            why = f": {inert(view.end_reason)}" if view.end_reason else ""
            if view.cancelled_by_requester:  # withdrawn, or replaced by their break-glass
                who = names.person(view.requester, view.requester_slack_id)
                return f"↩️ Cancelled by {who} at {clock_time(view.ended_at, zone)}{why}"
            if view.end_reason:
                return f"↩️ Cancelled{why}"
            return "↩️ Cancelled by the requester"
        case RequestState.TIMED_OUT:
            return (
                "⌛ Timed out: nobody decided in time. If you still need it, ask again with "
                "/jit request, or phone the on-call lead"
            )
        case RequestState.GRANT_FAILED:
            at = f" by {by} at {decided}" if by else ""
            return f"⚠️ Approved{at}, but the target could not grant it; WardKey admins are told"
        case RequestState.REVOKING | RequestState.ENDED:
            why = inert(view.end_reason or "expired")
            return f"🔒 Ended at {clock_time(view.ended_at, zone)} ({why})"
        case RequestState.REVOKE_FAILED:
            return (
                "⚠️ Ending failed on the target; WardKey keeps trying and alerts the security "
                "channel (the WardKey admins if that channel cannot be reached)"
            )
    return view.state.value
