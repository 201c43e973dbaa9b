"""What a lockdown shows: the confirmation dialog, and the security channel's progress message
(one message, updated in place as grants are removed: "312 of 1,000 removed, 2 failed")."""

from __future__ import annotations

import json
from typing import Any
from zoneinfo import ZoneInfo

from slack_sdk.models.blocks import (
    Block,
    ContextBlock,
    InputBlock,
    MarkdownTextObject,
    PlainTextInputElement,
    SectionBlock,
)
from slack_sdk.models.views import View

from app.blockkit import Names, escape, inert
from app.lockdown.service import SHOWN_FAILURES, LockdownSnapshot, Preview, Progress
from app.wording import clock_time, plural

CONFIRM_VIEW = "lockdown_confirm"
REASON_BLOCK, REASON_ACTION = "reason", "reason_text"


def confirm_modal(preview: Preview, reason: str) -> dict[str, Any]:
    """Are you sure: what the lockdown will do, with the count of grants it removes now."""
    target = escape(preview.target)
    lines = [
        f"*Lock down `{target}` now?*",
        f"• {plural(preview.grants, 'active grant')} on it will be removed at once and "
        "their sessions ended; each holder is told.",
    ]
    if preview.waiting:
        lines.append(f"• {plural(preview.waiting, 'request')} waiting for it will be cancelled.")
    lines += [
        "• New requests, extensions and break-glass for it are refused until you run "
        f"`/jit lockdown lift {target}`.",
        "• The security channel sees the progress, and everything is audited.",
    ]
    return View(
        type="modal",
        callback_id=CONFIRM_VIEW,
        private_metadata=json.dumps({"target": preview.target}),
        title="Lockdown",
        submit="Lock down",
        close="Cancel",
        blocks=[
            SectionBlock(text=MarkdownTextObject(text="\n".join(lines)[:2900])),
            InputBlock(
                block_id=REASON_BLOCK,
                label="Reason (for the audit trail and the security channel)",
                element=PlainTextInputElement(
                    action_id=REASON_ACTION,
                    initial_value=reason[:1000],
                    multiline=True,
                    max_length=1000,
                ),
            ),
        ],
    ).to_dict()


def already_text(view: LockdownSnapshot, progress: Progress, zone: ZoneInfo, names: Names) -> str:
    """The answer to a lockdown of a target already locked down."""
    return (
        f"🔒 `{escape(view.target)}` is already locked down, since "
        f"{clock_time(view.started_at, zone)} by {names.person(view.started_by)}: "
        f"{inert(view.reason)}. {counts(progress)}. Lift it with "
        f"`/jit lockdown lift {escape(view.target)}`."
    )


def counts(progress: Progress) -> str:
    """ "312 of 1,000 removed, 2 failed"."""
    text = f"{progress.removed:,} of {progress.total:,} removed"
    if progress.failed:
        text += f", {len(progress.failed):,} failed"
    return text


def progress_message(progress: Progress, zone: ZoneInfo, names: Names) -> tuple[str, list[Block]]:
    """The security channel's message about a lockdown, as it stands."""
    view = progress.lockdown
    target = escape(view.target)
    who = names.person(view.started_by)
    head = (
        f"🔒 *Lockdown of `{target}`* by {who} at {clock_time(view.started_at, zone)}: "
        f"{inert(view.reason)[:1000]}"
    )
    if progress.done:
        state = f"✅ All {progress.total:,} removed and checked on the target."
        if not progress.total:
            state = "✅ No active grant to remove."
    elif progress.working:
        state = f"⏳ {counts(progress)}…"
    else:
        state = f"⚠️ {counts(progress)}; WardKey keeps retrying the failed ones."
    lines = [head, state]
    if progress.cancelled:
        lines.append(f"{plural(progress.cancelled, 'waiting request')} cancelled.")
    if progress.failed:
        shown = [
            f"• #{f.request_id} `{escape(f.account)}`: {escape(f.detail)[:200]} "
            f"({plural(f.attempts, 'attempt')})"
            for f in progress.failed[:SHOWN_FAILURES]
        ]
        more = len(progress.failed) - SHOWN_FAILURES
        if more > 0:
            shown.append(f"• and {more:,} more (`/jit status` shows each).")
        lines.append("*Failed, being retried:*\n" + "\n".join(shown))
    if view.lifted_at is not None:
        note = f": {inert(view.lift_reason)}" if view.lift_reason else ""
        lines.append(
            f"🔓 Lifted by {names.person(view.lifted_by or '')} at "
            f"{clock_time(view.lifted_at, zone)}{note}. People may ask for it again."
        )
    else:
        lines.append(
            "New requests, extensions and break-glass for it are refused until "
            f"`/jit lockdown lift {target}`."
        )
    text = f"Lockdown of {view.target}: {counts(progress)}"
    body = "\n".join(lines)
    blocks: list[Block] = [SectionBlock(text=MarkdownTextObject(text=body[:2900]))]
    if len(body) > 2900:
        blocks.append(ContextBlock(elements=[MarkdownTextObject(text="(shortened)")]))
    return text, blocks


def lifted_text(view: LockdownSnapshot, zone: ZoneInfo, names: Names) -> str:
    """Posted when a lockdown is lifted (its progress message says so too)."""
    note = f": {inert(view.lift_reason)}" if view.lift_reason else ""
    return (
        f"🔓 Lockdown of `{escape(view.target)}` lifted by {names.person(view.lifted_by or '')} "
        f"at {clock_time(view.lifted_at, zone)}{note}. People may ask for it again; access "
        "the lockdown removed is not given back."
    )
