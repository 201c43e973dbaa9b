"""The lockdown confirmation dialog's submission. (`/jit lockdown …` itself is parsed with the
other commands, app/slack/parsing.py, and opens the dialog: app/slack/listeners/commands.py.)

The lockdown is recorded before the ack, so a refusal (no longer a security admin, a reason
too short) is shown in the dialog; removing the grants runs after the ack, recorded in the
inbox, so a process that dies mid-way has it finished by another (and the sweep)."""

from __future__ import annotations

import json
from typing import Any

from slack_bolt import Ack, App, BoltContext

from app.lockdown.flows import LockdownFlows
from app.lockdown.messages import CONFIRM_VIEW, REASON_ACTION, REASON_BLOCK
from app.slack.deps import SlackDeps
from app.slack.gate import person_of


def flows(deps: SlackDeps) -> LockdownFlows:
    return LockdownFlows(deps.service, deps.notifier.outbox.kick)


def register(app: App, deps: SlackDeps) -> None:
    @app.view(CONFIRM_VIEW)
    def confirmed(ack: Ack, view: dict[str, Any], context: BoltContext) -> None:
        target = str(json.loads(view.get("private_metadata") or "{}").get("target", ""))
        values = (view.get("state") or {}).get("values") or {}
        reason = str((values.get(REASON_BLOCK, {}).get(REASON_ACTION) or {}).get("value") or "")
        lockdown = flows(deps).start(person_of(context), target, reason)
        ack()
        deps.after_ack(context, lambda: _run(deps, lockdown.id))


def _run(deps: SlackDeps, lockdown_id: int) -> None:
    flows(deps).run(lockdown_id)
