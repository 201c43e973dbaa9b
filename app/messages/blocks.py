"""Block Kit for WardKey's messages, built with slack_sdk.models so Slack's limits are checked
before anything is sent."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    HeaderBlock,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)

from app.lifecycle.snapshots import UNREACHABLE, RequestView
from app.policy import rules
from app.policy.durations import format_duration
from app.policy.model import Policy
from app.policy.people import Person
from app.store.models import RequestState
from app.wording import listed, plural

if TYPE_CHECKING:
    from app.directory import SlackDirectory

APPROVE_ACTION = "request_approve"
DENY_ACTION = "request_deny"
CANCEL_ACTION = "request_cancel"
_RISK_ICON = {"low": "🟢", "medium": "🟡", "high": "🟠", "critical": "🔴"}


def escape(text: str) -> str:
    """Text shown as mrkdwn: never a mention, link or channel ping (`<!channel>`). For names
    WardKey or the policy chose; words people typed go through `inert`."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# Characters that change how text looks without being seen: controls, zero-width and direction
# marks (a right-to-left override can make a reason read backwards on the card).
_HIDDEN = re.compile("[\x00-\x09\x0b-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")
# mrkdwn's formatting characters, as look-alikes Slack does not format: Slack has no escape.
_LOOK_ALIKES = str.maketrans({"*": "\u2217", "_": "\u02cd", "~": "\u223c", "`": "\u02cb"})
# What Slack turns into a link by itself: `scheme://` and dotted names (example.com, e-mails).
_SCHEME = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*):/+")
_DOT_IN_NAME = re.compile(r"(?i)(?<=[a-z0-9-])\.(?=[a-z][a-z0-9-])")
_MENTION = re.compile(r"^[UW][A-Z0-9]{2,20}$")


def inert(text: str) -> str:
    """Words a person typed (a reason, a note, a ticket, a profile name), shown in mrkdwn exactly
    as words: no bold or code that could pass for WardKey's own, no mention, ping or link (a
    dotted name is shown with a one-dot leader, so nothing is clickable)."""
    text = _HIDDEN.sub("", text.replace("\r\n", "\n"))
    text = escape(text).translate(_LOOK_ALIKES)
    text = _SCHEME.sub(lambda m: f"{m[1]}:\u2215\u2215", text)
    return _DOT_IN_NAME.sub("\u2024", text)


def quoted(text: str, limit: int = 2900) -> str:
    """A requester's words as a quote block: plainly theirs, never WardKey's."""
    lines = inert(text).split("\n")
    return "\n".join(f"> {line}" for line in lines)[:limit]


def mention(slack_user_id: str | None, fallback: str) -> str:
    """`<@U…>` built by WardKey from an ID Slack verified, which Slack shows as the account's
    current name; `fallback`, made inert, when there is none."""
    if slack_user_id and _MENTION.match(slack_user_id):
        return f"<@{slack_user_id}>"
    return inert(fallback)


_CHANNEL = re.compile(r"^[CG][A-Z0-9]{2,20}$")


class Names:
    """How people and channels are shown. This one needs no look-up: a person's verified Slack
    account as a mention (Slack shows its current name), a channel as a channel link, and
    someone with no Slack account by the policy's name for them, made inert."""

    def person(self, key: str, slack_user_id: str | None = None) -> str:
        return mention(slack_user_id, key)

    def channel(self, channel_id: str) -> str:
        """A channel, or a person a message was addressed to (a user ID)."""
        if _MENTION.match(channel_id):
            return self.person(channel_id, channel_id)
        if _CHANNEL.match(channel_id):
            return f"<#{channel_id}>"
        return escape(channel_id)


SLACK_SHOWS = Names()


class DirectoryNames(Names):
    """People by their name in Slack ("Ben Hughes", not ben@…) and channels by name
    ("#security-alerts", not C0…), looked up in the Slack directory (which caches them). Slack
    failing (5xx, 429) is raised, so the message is rendered again once it answers."""

    def __init__(self, directory: SlackDirectory) -> None:
        self.directory = directory

    def person(self, key: str, slack_user_id: str | None = None) -> str:
        ident = slack_user_id if slack_user_id and _MENTION.match(slack_user_id) else None
        name = self.directory.name_of(key, ident) if key or ident else None
        return inert(name) if name else super().person(key, slack_user_id)

    def channel(self, channel_id: str) -> str:
        if _MENTION.match(channel_id):
            return self.person("", channel_id)
        name = self.directory.channel_name(channel_id) if _CHANNEL.match(channel_id) else None
        return f"#{inert(name)}" if name else super().channel(channel_id)


def words(text: str) -> MarkdownTextObject:
    """A mrkdwn text object with people's words in it: Slack adds no links of its own."""
    return MarkdownTextObject(text=text, verbatim=True)


def ticket_field(view: RequestView, zone: ZoneInfo) -> str:
    """The card's ticket: as typed; or, checked in the path's ticket system, a link to it with
    its state and title as the system showed them, and when it was checked (the state is not
    followed while the request waits: the final approval checks it again); or marked for the
    approver to check, when the system did not answer and the path lets the request go on."""
    if not view.ticket:
        return "*Ticket*\nnone"
    check = view.ticket_check
    if check is None:
        return f"*Ticket*\n{inert(view.ticket)}"
    name = inert(view.ticket)
    if check.url.startswith(("https://", "http://")):
        url = check.url.replace("|", "%7C").replace("<", "%3C").replace(">", "%3E")
        name = f"<{url}|{escape(view.ticket)}>"
    if check.checked_at is None:
        return f"*Ticket*\n{name}\n:warning: {escape(check.state)}; check it before approving"
    state = f" · {inert(check.state)}" if check.state else ""
    state += f" (checked {clock_time(check.checked_at, zone)})"
    title = f"\n{inert(check.title)}" if check.title else ""
    return f"*Ticket*\n{name}{state}{title}"


def clock_time(instant: datetime | None, zone: ZoneInfo) -> str:
    return "—" if instant is None else instant.astimezone(zone).strftime("%H:%M")


@dataclass(frozen=True)
class CardContext:
    """What an approver needs beyond the request itself to decide fast."""

    requester_name: str
    requester_title: str
    risk: str
    elevations_30_days: int
    other_active: tuple[str, ...]
    zone: ZoneInfo
    names: Names = SLACK_SHOWS
    # Where "on call now" came from and how fresh, one line per rota approving the path.
    on_call_from: tuple[str, ...] = ()
    # Where the approvers of each directory group approving the path came from, and how fresh.
    groups_from: tuple[str, ...] = ()
    # The path needs a fresh sign-in with the identity provider to approve (step_up).
    step_up: bool = False


def _summary(view: RequestView, ctx: CardContext) -> list[Block]:
    # Who asked, as Slack verified it: the account's mention, then its directory name and title.
    profile = inert(ctx.requester_name)
    if ctx.requester_title:
        profile += f", {inert(ctx.requester_title)}"
    who = f"{mention(view.requester_slack_id, view.requester)} ({profile})"
    if view.identity:
        who += f" (for service account `{escape(view.identity)}`)"
    fields = [
        words(f"*Who*\n{who}"),
        MarkdownTextObject(
            text=f"*Access*\n`{view.target}:{view.role}` as `{escape(view.account)}`"
        ),
        MarkdownTextObject(text=f"*For*\n{format_duration(view.requested)}"),
        MarkdownTextObject(
            text=f"*Path*\n{_RISK_ICON.get(ctx.risk, '')} {view.path} ({ctx.risk} risk)"
        ),
        words(ticket_field(view, ctx.zone)),
    ]
    history = plural(ctx.elevations_30_days, "elevation", zero="no elevations")
    history = history[0].upper() + history[1:] + " in the last 30 days"
    others = (
        "also holds " + listed([escape(a) for a in ctx.other_active])
        if ctx.other_active
        else "holds no other elevation now"
    )
    return [
        HeaderBlock(text=PlainTextObject(text=f"Access request #{view.id}")),
        SectionBlock(fields=fields),
        SectionBlock(text=words(f"*Why*, in the requester's words\n{quoted(view.reason)}")),
        ContextBlock(elements=[MarkdownTextObject(text=f"{history} · {others}")]),
    ]


def approver_card(view: RequestView, ctx: CardContext) -> list[Block]:
    """The card approvers see: context, progress and, while pending, Approve and Deny."""
    blocks = _summary(view, ctx)
    if ctx.on_call_from or ctx.groups_from:
        lines = "\n".join(
            [f"📅 {inert(line)}" for line in ctx.on_call_from]
            + [f"📇 {inert(line)}" for line in ctx.groups_from]
        )
        blocks.append(ContextBlock(elements=[words(lines)]))
    blocks.append(ContextBlock(elements=[words(outcome_line(view, ctx.zone, ctx.names))]))
    if view.state == RequestState.PENDING:
        if ctx.step_up:
            blocks.append(ContextBlock(elements=[words(STEP_UP_LINE)]))
        blocks.append(decision_buttons(view, high_risk=ctx.risk in ("high", "critical")))
    return blocks


# On the card of a path with step_up (app/stepup): what Approve does there.
STEP_UP_LINE = (
    "🔐 *Approval needs sign-in:* Approve sends you a one-time link to sign in with the "
    "trust's identity provider (with MFA); the approval counts only then."
)


def decision_buttons(view: RequestView, high_risk: bool) -> ActionsBlock:
    """Approve (confirmed first on high-risk paths) and Deny; the value is only the number."""
    confirm = None
    if high_risk:
        length = format_duration(view.extension or view.requested)
        confirm = ConfirmObject(
            title="Approve high-risk access?",
            text=f"{view.target}:{view.role} for {length}. You are accountable for this approval.",
            confirm="Approve",
            deny="Back",
        )
    return ActionsBlock(
        block_id=f"decide:{view.id}",
        elements=[
            ButtonElement(
                text="Approve",
                action_id=APPROVE_ACTION,
                value=str(view.id),
                style="primary",
                confirm=confirm,
            ),
            ButtonElement(text="Deny", action_id=DENY_ACTION, value=str(view.id), style="danger"),
        ],
    )


def cancel_button(view: RequestView) -> ButtonElement:
    """The requester's Cancel, while the request waits for approval; the value is only the
    number (who may cancel is checked against the request as stored, at the click)."""
    return ButtonElement(
        text="Cancel request",
        action_id=CANCEL_ACTION,
        value=str(view.id),
        confirm=ConfirmObject(
            title=f"Cancel request #{view.id}?",
            text=f"{view.target}:{view.role} stops waiting for approval, and its approvers' "
            "cards say you cancelled it. You can ask again later.",
            confirm="Cancel request",
            deny="Keep waiting",
        ),
    )


def requester_receipt(
    view: RequestView, zone: ZoneInfo, names: Names = SLACK_SHOWS
) -> tuple[str, list[Block]]:
    """The requester's own message about their request (text and blocks): what they asked
    for and where it stands, with Cancel while it waits. Updated in place as it moves on."""
    asked = (
        f"Request #{view.id} for `{view.target}:{view.role}` "
        f"({format_duration(view.requested)}: “{inert(view.reason)[:200]}”)"
    )
    waiting = view.state == RequestState.PENDING and view.extension is None
    if waiting and view.escalation_level >= UNREACHABLE:
        text = (
            f"{asked} could not reach any {view.path} approver in Slack, so it went straight "
            "to the escalation group. My message to you says what you can do now."
        )
    elif waiting:
        text = f"{asked} is with the {view.path} approvers. I'll message you when someone decides."
    else:
        text = f"{asked}: {outcome_line(view, zone, names)}"
    blocks: list[Block] = [SectionBlock(text=words(text))]
    if waiting:
        blocks.append(ContextBlock(elements=[words(outcome_line(view, zone, names))]))
        blocks.append(ActionsBlock(block_id=f"cancel:{view.id}", elements=[cancel_button(view)]))
    return text, blocks


def outcome_line(view: RequestView, zone: ZoneInfo, names: Names = SLACK_SHOWS) -> str:
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


def day_time(instant: datetime | None, zone: ZoneInfo) -> str:
    return "—" if instant is None else instant.astimezone(zone).strftime("%a %d %b %H:%M")


def contract_line(policy: Policy, person: Person, now: datetime) -> str | None:
    """For a vendor: when their contract ends and how long is left (every grant ends by then)."""
    vendor = rules.vendor_of(policy, person)
    if vendor is None:
        return None
    left = rules.contract_end_instant(policy, vendor) - now
    if left <= timedelta(0):
        return f"Your {escape(vendor.company)} contract ended on {vendor.contract_end:%d %b %Y}."
    days = left.days
    remaining = plural(days, "day") if days >= 1 else format_duration(left)
    return (
        f"Your {escape(vendor.company)} contract ends on {vendor.contract_end:%d %b %Y}: "
        f"{remaining} left. No access can last beyond it."
    )
