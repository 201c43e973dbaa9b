"""What a request says in Slack, as Block Kit built with slack_sdk.models: the approver card
with Approve and Deny, the requester's receipt with Cancel (both saying where the request
stands in app/grants/messages.py's `outcome_line`), a vendor's contract line, the /jit request
form, the deny dialog, and the App Home (the person's requests: their access, drawn with the
grants' Extend and Revoke now, what they wait for and what waits for them). Messages never
change state: they draw what the service returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    InputBlock,
    MarkdownTextObject,
    Option,
    PlainTextInputElement,
    PlainTextObject,
    SectionBlock,
    StaticSelectElement,
)
from slack_sdk.models.views import View

from app.blockkit import SLACK_SHOWS, Names, escape, inert, mention, quoted, why_modal, words
from app.grants.messages import holder_buttons, outcome_line
from app.lifecycle.snapshots import UNREACHABLE, RequestSnapshot
from app.policy import rules
from app.policy.durations import format_duration
from app.policy.model import Policy
from app.policy.people import Person
from app.policy.rules import RequestPlan
from app.store.models import RequestState
from app.wording import clock_time, listed, plural

APPROVE_ACTION = "request_approve"
DENY_ACTION = "request_deny"
CANCEL_ACTION = "request_cancel"
_RISK_ICON = {"low": "🟢", "medium": "🟡", "high": "🟠", "critical": "🔴"}


def ticket_field(view: RequestSnapshot, zone: ZoneInfo) -> str:
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


def _summary(view: RequestSnapshot, ctx: CardContext) -> list[Block]:
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


def approver_card(view: RequestSnapshot, ctx: CardContext) -> list[Block]:
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


def decision_buttons(view: RequestSnapshot, high_risk: bool) -> ActionsBlock:
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


def cancel_button(view: RequestSnapshot) -> ButtonElement:
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
    view: RequestSnapshot, zone: ZoneInfo, names: Names = SLACK_SHOWS
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


REQUEST_VIEW = "jit_request"
ACCESS_BLOCK, ACCESS_ACTION = "access", "access_choice"
DURATION_BLOCK, DURATION_ACTION = "duration", "duration_choice"
REASON_BLOCK, REASON_ACTION = "reason", "reason_text"
TICKET_BLOCK, TICKET_ACTION = "ticket", "ticket_text"
_DURATIONS = [timedelta(minutes=m) for m in (15, 30, 60, 120, 240, 480, 720, 1440)]


def duration_choices(cap: timedelta) -> list[timedelta]:
    choices = [d for d in _DURATIONS if d <= cap]
    if not choices or choices[-1] != cap:
        choices.append(cap)
    return choices


def request_modal(plans: Sequence[RequestPlan], chosen: str | None = None) -> dict[str, Any]:
    """The /jit form: only what this person may ask for, with each path and cap shown."""
    by_value = {f"{p.target}:{p.role}": p for p in plans}
    plan = by_value.get(chosen or "") or (plans[0] if len(plans) == 1 else None)
    options = [
        Option(value=value, text=f"{value} · {p.path}, up to {format_duration(p.cap)}"[:75])
        for value, p in by_value.items()
    ]
    initial = next((o for o in options if plan and o.value == f"{plan.target}:{plan.role}"), None)
    cap = plan.cap if plan else max(p.cap for p in plans)
    durations = [
        Option(value=format_duration(d), text=format_duration(d)) for d in duration_choices(cap)
    ]
    ticket_needed = bool(plan and plan.ticket_required)
    blocks: list[Block] = [
        InputBlock(
            block_id=ACCESS_BLOCK,
            label="Access",
            dispatch_action=True,  # choosing a role narrows the durations to its cap
            element=StaticSelectElement(
                action_id=ACCESS_ACTION,
                options=options[:100],
                initial_option=initial,
                placeholder="target:role",
            ),
        ),
        InputBlock(
            block_id=DURATION_BLOCK,
            label="For how long",
            element=StaticSelectElement(
                action_id=DURATION_ACTION, options=durations, placeholder="duration"
            ),
        ),
        InputBlock(
            block_id=REASON_BLOCK,
            label="Why (the task, in a few words)",
            element=PlainTextInputElement(action_id=REASON_ACTION, multiline=True, max_length=2000),
        ),
        InputBlock(
            block_id=TICKET_BLOCK,
            label="Ticket" + (" (required for this path)" if ticket_needed else ""),
            optional=not ticket_needed,
            element=PlainTextInputElement(
                action_id=TICKET_ACTION, max_length=40, placeholder="INC0012345"
            ),
        ),
    ]
    view = View(
        type="modal",
        callback_id=REQUEST_VIEW,
        title="Request access",
        submit="Request",
        close="Cancel",
        blocks=blocks,
    )
    return view.to_dict()


def no_access_modal() -> dict[str, Any]:
    return View(
        type="modal",
        title="Request access",
        close="Close",
        blocks=[
            SectionBlock(
                text="You are not eligible for any access yet. Ask your manager "
                "to add you to the right group in the WardKey policy."
            )
        ],
    ).to_dict()


DENY_VIEW, DENY_BLOCK, DENY_INPUT = "deny_reason", "reason", "reason_text"


def deny_modal(request_id: int, channel: str | None) -> dict[str, Any]:
    """Deny asks why; the requester sees it."""
    return why_modal(
        DENY_VIEW,
        {"id": request_id, "channel": channel},
        title="Deny request",
        submit="Deny",
        question="Why? The requester will see this.",
        block_id=DENY_BLOCK,
        action_id=DENY_INPUT,
    )


def modal_values(state: dict[str, Any]) -> dict[str, str]:
    """Pick the submitted values out of a view's state."""
    values = state.get("values", {})

    def pick(block: str, action: str) -> str:
        field = values.get(block, {}).get(action, {})
        if field.get("selected_option"):
            return str(field["selected_option"]["value"])
        return str(field.get("value") or "")

    return {
        "access": pick(ACCESS_BLOCK, ACCESS_ACTION),
        "duration": pick(DURATION_BLOCK, DURATION_ACTION),
        "reason": pick(REASON_BLOCK, REASON_ACTION),
        "ticket": pick(TICKET_BLOCK, TICKET_ACTION),
    }


def home_view(
    active: Sequence[RequestSnapshot],
    pending: Sequence[RequestSnapshot],
    to_decide: Sequence[RequestSnapshot],
    now: datetime,
    zone: ZoneInfo,
    high_risk_paths: frozenset[str] = frozenset(),
    names: Names = SLACK_SHOWS,
) -> dict[str, Any]:
    blocks: list[Block] = [HeaderBlock(text="Your access")]
    if not active:
        blocks.append(ContextBlock(elements=[MarkdownTextObject(text="No active access.")]))
    for v in active:
        left = max(timedelta(0), (v.expires_at or now) - now)
        blocks.append(
            SectionBlock(
                text=MarkdownTextObject(
                    text=f"*#{v.id}* `{v.target}:{v.role}` · {format_duration(left)} left "
                    f"(until {clock_time(v.expires_at, zone)})"
                )
            )
        )
        blocks.append(holder_buttons(v, block_id=f"home:{v.id}"))
    blocks += [DividerBlock(), HeaderBlock(text="Your pending requests")]
    if not pending:
        blocks.append(ContextBlock(elements=[MarkdownTextObject(text="Nothing waiting.")]))
    for v in pending:
        line = f"*#{v.id}* `{v.target}:{v.role}` · {outcome_line(v, zone, names)}"
        blocks.append(SectionBlock(text=words(line)))
        if (
            v.state == RequestState.PENDING and v.extension is None
        ):  # still waiting: it can be withdrawn
            blocks.append(ActionsBlock(block_id=f"home_cancel:{v.id}", elements=[cancel_button(v)]))
    blocks += [DividerBlock(), HeaderBlock(text="Waiting for your approval")]
    if not to_decide:
        blocks.append(ContextBlock(elements=[MarkdownTextObject(text="Nothing to decide.")]))
    for v in to_decide[:10]:
        what = "extension of " if v.extension else ""
        who = names.person(v.requester, v.requester_slack_id)
        blocks.append(
            SectionBlock(
                text=words(
                    f"*#{v.id}* {what}`{v.target}:{v.role}` for {who} "
                    f"({format_duration(v.extension or v.requested)}, {v.path}): "
                    f"“{inert(v.reason)[:300]}”"
                )
            )
        )
        blocks.append(decision_buttons(v, high_risk=v.path in high_risk_paths))
    return View(type="home", blocks=blocks[:100]).to_dict()
