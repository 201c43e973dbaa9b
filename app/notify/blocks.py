"""Block Kit for WardKey's messages, built with slack_sdk.models so Slack's limits are checked
before anything is sent."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
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

from app.policy import rules
from app.policy.durations import format_duration
from app.policy.model import Policy
from app.policy.people import Person
from app.service.digest import Digest
from app.service.identities import RETIRED, STILL_NEEDED, AttestationView
from app.service.reviews import BreakGlassSummary
from app.service.views import RequestView
from app.store.models import RequestState as S
from app.store.models import ReviewState

APPROVE_ACTION = "request_approve"
DENY_ACTION = "request_deny"
CANCEL_ACTION = "request_cancel"
REVIEW_JUSTIFIED = "review_justified"
REVIEW_NOT_JUSTIFIED = "review_not_justified"
ATTEST_KEEP = "attest_still_needed"
ATTEST_RETIRE = "attest_retire"
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


def alerted(recipients: tuple[str, ...]) -> str:
    """Who the break-glass alert reached, as Slack shows them (IDs Slack itself gave us)."""
    if not recipients:
        return "nobody: the alert could not be sent"
    shown = [
        f"<@{r}>" if _MENTION.match(r) else f"<#{r}>" if _CHANNEL.match(r) else escape(r)
        for r in recipients
    ]
    return ", ".join(shown)


def words(text: str) -> MarkdownTextObject:
    """A mrkdwn text object with people's words in it: Slack adds no links of its own."""
    return MarkdownTextObject(text=text, verbatim=True)


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
        words(f"*Ticket*\n{inert(view.ticket) if view.ticket else 'none'}"),
    ]
    history = f"{ctx.elevations_30_days} elevation(s) in the last 30 days"
    others = (
        "also holds " + ", ".join(escape(a) for a in ctx.other_active)
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
    blocks.append(ContextBlock(elements=[words(outcome_line(view, ctx.zone))]))
    if view.state == S.PENDING:
        blocks.append(decision_buttons(view, high_risk=ctx.risk in ("high", "critical")))
    return blocks


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


def requester_receipt(view: RequestView, zone: ZoneInfo) -> tuple[str, list[Block]]:
    """The requester's own message about their request (text and blocks): what they asked
    for and where it stands, with Cancel while it waits. Updated in place as it moves on."""
    asked = (
        f"Request #{view.id} for `{view.target}:{view.role}` "
        f"({format_duration(view.requested)}: “{inert(view.reason)[:200]}”)"
    )
    waiting = view.state == S.PENDING and view.extension is None
    if waiting:
        text = f"{asked} is with the {view.path} approvers. I'll message you when someone decides."
    else:
        text = f"{asked}: {outcome_line(view, zone)}"
    blocks: list[Block] = [SectionBlock(text=words(text))]
    if waiting:
        blocks.append(ContextBlock(elements=[words(outcome_line(view, zone))]))
        blocks.append(ActionsBlock(block_id=f"cancel:{view.id}", elements=[cancel_button(view)]))
    return text, blocks


def outcome_line(view: RequestView, zone: ZoneInfo) -> str:
    """One line saying where the request stands, for cards and DMs."""
    approvals = view.approvals
    names = ", ".join(d.approver for d in approvals)
    decided = clock_time(view.decided_at, zone)
    match view.state:
        case S.PENDING:
            progress = f"{len(approvals)} of {view.approvals_needed} approvals"
            escalated = (
                " · escalated: the approval is overdue" if view.escalation_level >= 2 else ""
            )
            sponsor = ""
            if view.sponsor is not None and view.extension is None:
                said = "approved" if view.sponsor_approved else "still to approve"
                sponsor = f" · vendor sponsor {escape(view.sponsor)} {said}"
            waiting = f"⏳ Waiting: {progress}" + (f" ({escape(names)})" if names else "")
            return waiting + sponsor + escalated
        case S.APPROVED | S.GRANTING:
            return f"✅ Approved by {escape(names)} at {decided}; access is being set up"
        case S.ACTIVE:
            by = f"Approved by {escape(names)} at {decided}" if names else "Break-glass"
            return f"✅ {by}; access active until {clock_time(view.expires_at, zone)}"
        case S.DENIED:
            denier = next((d for d in view.decisions if d.outcome == "deny"), None)
            who = escape(denier.approver) if denier else "an approver"
            why = inert(view.end_reason or "")
            return f"❌ Denied by {who} at {decided}: {why}"
        case S.CANCELLED:
            # WardKey, a retirement or a contract's end cancelled it: say why, as recorded.
            if view.end_reason and view.ended_by == "wardkey":
                return f"↩️ Cancelled by WardKey: {inert(view.end_reason)}"
            why = f": {inert(view.end_reason)}" if view.end_reason else ""
            if view.cancelled_by_requester:  # withdrawn, or replaced by their break-glass
                who = mention(view.requester_slack_id, view.requester)
                return f"↩️ Cancelled by {who} at {clock_time(view.ended_at, zone)}{why}"
            if view.end_reason:
                return f"↩️ Cancelled{why}"
            return "↩️ Cancelled by the requester"
        case S.TIMED_OUT:
            return (
                "⌛ Timed out: nobody decided in time. If you still need it, ask again with "
                "/jit request, or phone the on-call lead"
            )
        case S.GRANT_FAILED:
            by = f" by {escape(names)} at {decided}" if names else ""
            return f"⚠️ Approved{by}, but the target could not grant it; WardKey admins are told"
        case S.REVOKING | S.ENDED:
            why = inert(view.end_reason or "expired")
            return f"🔒 Ended at {clock_time(view.ended_at, zone)} ({why})"
        case S.REVOKE_FAILED:
            return "⚠️ Ending failed on the target; WardKey keeps trying and has alerted security"
    return view.state.value


def day_time(instant: datetime | None, zone: ZoneInfo) -> str:
    return "—" if instant is None else instant.astimezone(zone).strftime("%a %d %b %H:%M")


def review_line(view: RequestView, zone: ZoneInfo) -> str:
    review = view.review
    if review is None:
        return "No review"
    if review.state == ReviewState.OPEN:
        return f"⏳ Review due by {day_time(review.due_at, zone)}"
    mark = "✅ Justified" if review.state == ReviewState.JUSTIFIED else "❌ Not justified"
    who = escape(review.reviewer or "a reviewer")
    note = inert(review.note or "")
    return f"{mark}: {who} at {day_time(review.decided_at, zone)}: {note}"


def review_card(summary: BreakGlassSummary, zone: ZoneInfo) -> list[Block]:
    """The break-glass summary reviewers judge, with Justified / Not justified while open."""
    view = summary.view
    used = format_duration(summary.used_for) if summary.used_for is not None else "—"
    if summary.recorded:
        record = "The target logged every statement of the session (session recording)."
    else:
        record = "The target does not record sessions for this role."
    if summary.sessions_ended:
        record += f" {summary.sessions_ended} open session(s) were ended at revoke."
    for note in summary.target_notes:
        record += f" {escape(note)[:300]}."
    blocks: list[Block] = [
        HeaderBlock(text=PlainTextObject(text=f"Break-glass review #{view.id}")),
        SectionBlock(
            fields=[
                words(f"*Who*\n{mention(view.requester_slack_id, view.requester)}"),
                MarkdownTextObject(
                    text=f"*Access*\n`{view.target}:{view.role}` as `{escape(view.account)}`"
                ),
                MarkdownTextObject(
                    text=f"*When*\n{day_time(view.granted_at, zone)} to "
                    f"{clock_time(view.ended_at, zone)} ({used})"
                ),
                MarkdownTextObject(text=f"*Alerted*\n{alerted(summary.alerted)}"),
            ]
        ),
        SectionBlock(text=words(f"*Why*, in their words\n{quoted(view.reason)}")),
        SectionBlock(text=MarkdownTextObject(text=f"*On the target*\n{record[:2900]}")),
        ContextBlock(elements=[words(review_line(view, zone))]),
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


def _short(value: timedelta) -> str:
    seconds = value.total_seconds()
    return f"{seconds:.0f}s" if seconds < 60 else format_duration(value)


def digest_blocks(digest: Digest, zone: ZoneInfo) -> list[Block]:
    """The managers' daily summary: break-glass, overdue reviews, approval speed, failures,
    and who held access longest and most often."""

    def lines(items: list[str], empty: str) -> str:
        return "\n".join(f"• {i}" for i in items) if items else empty

    glass = [
        f"#{e.view.id} {escape(e.view.requester)} `{e.view.target}:{e.view.role}` "
        f"for {format_duration(e.held)}: “{inert(e.view.reason)[:150]}” · "
        f"{review_line(e.view, zone)}"
        for e in digest.break_glass
    ]
    overdue = [
        f"#{v.id} {escape(v.requester)} `{v.target}:{v.role}` (due "
        f"{day_time(v.review.due_at if v.review else None, zone)})"
        for v in digest.overdue_reviews
    ]
    latency = [
        f"{p.path}: p50 {_short(p.p50)}, p95 {_short(p.p95)} ({p.decisions} decided)"
        for p in digest.latency
    ]
    failures = [
        f"#{v.id} `{v.target}:{v.role}` for {escape(v.account)}: {v.revoke_attempts} attempt(s)"
        for v in digest.revoke_failures
    ]
    longest = [
        f"#{e.view.id} {escape(e.view.requester)} `{e.view.target}:{e.view.role}` "
        f"{format_duration(e.held)}"
        for e in digest.longest
    ]
    frequent = [f"{escape(who)}: {count}" for who, count in digest.most_frequent]
    window = f"{day_time(digest.since, zone)} to {day_time(digest.until, zone)}"
    sections = [
        ("Break-glass uses", lines(glass, "None.")),
        ("Overdue reviews", lines(overdue, "None.")),
        ("Approval latency per path", lines(latency, "No decisions.")),
        (
            "Revoke failures",
            lines(failures, "None outstanding.")
            + f"\n{digest.failed_revoke_attempts} failed revoke attempt(s) in the window.",
        ),
        ("Longest elevations", lines(longest, "None.")),
        ("Most frequent", lines(frequent, "None.")),
    ]
    blocks: list[Block] = [
        HeaderBlock(text=PlainTextObject(text=f"WardKey daily digest, {digest.day:%a %d %b}")),
        ContextBlock(
            elements=[MarkdownTextObject(text=f"{window} · {digest.granted} grant(s) given")]
        ),
    ]
    for title, body in sections:
        blocks.append(SectionBlock(text=words(f"*{title}*\n{body}"[:2990])))
    return blocks


def contract_line(policy: Policy, person: Person, now: datetime) -> str | None:
    """For a vendor: when their contract ends and how long is left (every grant ends by then)."""
    vendor = rules.vendor_of(policy, person)
    if vendor is None:
        return None
    left = rules.contract_end_instant(policy, vendor) - now
    if left <= timedelta(0):
        return f"Your {escape(vendor.company)} contract ended on {vendor.contract_end:%d %b %Y}."
    days = left.days
    remaining = f"{days} day(s)" if days >= 1 else format_duration(left)
    return (
        f"Your {escape(vendor.company)} contract ends on {vendor.contract_end:%d %b %Y}: "
        f"{remaining} left. No access can last beyond it."
    )


def attestation_card(view: AttestationView, zone: ZoneInfo) -> list[Block]:
    """The owner's card: is this service account still needed? Buttons while unanswered."""
    blocks: list[Block] = [
        HeaderBlock(text=PlainTextObject(text=f"Is {view.identity} still needed?")),
        SectionBlock(
            text=MarkdownTextObject(
                text=f"You own the service account `{escape(view.identity)}`: "
                f"{escape(view.purpose)}. Please confirm it is still needed by "
                f"{day_time(view.due_at, zone)}, or retire it (its elevations end at once)."
            )
        ),
    ]
    if view.outcome is None:
        blocks.append(
            ActionsBlock(
                block_id=f"attest:{view.identity}",
                elements=[
                    ButtonElement(
                        text="Still needed",
                        action_id=ATTEST_KEEP,
                        value=view.identity,
                        style="primary",
                    ),
                    ButtonElement(
                        text="Retire",
                        action_id=ATTEST_RETIRE,
                        value=view.identity,
                        style="danger",
                        confirm=ConfirmObject(
                            title=f"Retire {view.identity}?",
                            text="It can no longer be elevated, and any elevation now active ends.",
                            confirm="Retire",
                            deny="Back",
                        ),
                    ),
                ],
            )
        )
    else:
        said = {STILL_NEEDED: "✅ Confirmed still needed", RETIRED: "🗄 Retired"}[view.outcome]
        blocks.append(
            ContextBlock(
                elements=[MarkdownTextObject(text=f"{said} by {escape(view.decided_by or '')}")]
            )
        )
    return blocks
