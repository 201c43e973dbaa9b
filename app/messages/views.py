"""Modals and the App Home, built with slack_sdk.models."""

from __future__ import annotations

import json
from collections.abc import Sequence
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
    SectionBlock,
    StaticSelectElement,
)
from slack_sdk.models.views import View

from app.lifecycle.snapshots import RequestView
from app.messages.blocks import (
    SLACK_SHOWS,
    Names,
    cancel_button,
    clock_time,
    decision_buttons,
    inert,
    outcome_line,
    words,
)
from app.policy.durations import format_duration
from app.policy.rules import RequestPlan
from app.store.models import RequestState

REQUEST_VIEW = "jit_request"
ACCESS_BLOCK, ACCESS_ACTION = "access", "access_choice"
DURATION_BLOCK, DURATION_ACTION = "duration", "duration_choice"
REASON_BLOCK, REASON_ACTION = "reason", "reason_text"
TICKET_BLOCK, TICKET_ACTION = "ticket", "ticket_text"
HOME_EXTEND, HOME_REVOKE = "home_extend", "home_revoke"
HOME_EXTEND_BY = timedelta(minutes=30)
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


def why_modal(
    callback_id: str,
    metadata: dict[str, Any],
    *,
    title: str,
    submit: str,
    question: str,
    block_id: str,
    action_id: str,
) -> dict[str, Any]:
    """A dialog that asks one thing in words (why a deny, why a review verdict) before acting."""
    return {
        "type": "modal",
        "callback_id": callback_id,
        "private_metadata": json.dumps(metadata),
        "title": {"type": "plain_text", "text": title},
        "submit": {"type": "plain_text", "text": submit},
        "close": {"type": "plain_text", "text": "Back"},
        "blocks": [
            {
                "type": "input",
                "block_id": block_id,
                "label": {"type": "plain_text", "text": question},
                "element": {
                    "type": "plain_text_input",
                    "action_id": action_id,
                    "multiline": True,
                    "max_length": 1000,
                },
            }
        ],
    }


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


def holder_buttons(v: RequestView, block_id: str) -> ActionsBlock:
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


def expiry_warning(v: RequestView, now: datetime, zone: ZoneInfo) -> list[Block]:
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


def home_view(
    active: Sequence[RequestView],
    pending: Sequence[RequestView],
    to_decide: Sequence[RequestView],
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
