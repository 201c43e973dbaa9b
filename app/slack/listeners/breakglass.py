"""Confirm on a held break-glass use's card: the second person of the two-person rule.

The click is acked at once; the service checks the clicker against the confirmers at this
instant (never the person who broke glass or another account of theirs), loading the request
from the database (the button's value is only its number), and the first confirmation grants.
A refusal is told to the clicker alone (app/slack/errors.py)."""

from __future__ import annotations

from typing import Any

from slack_bolt import Ack, App, BoltContext

from app.lifecycle.errors import AlreadyDecided
from app.messages.breakglass import CONFIRM_ACTION
from app.slack.deps import APPLIED, NOTIFIED, SlackDeps
from app.slack.gate import person_of


def register(app: App, deps: SlackDeps) -> None:
    @app.action(CONFIRM_ACTION)
    def confirm(ack: Ack, action: dict[str, Any], context: BoltContext) -> None:
        ack()
        progress = deps.progress()  # read here, on the thread that dispatches the request

        def confirmed() -> None:
            request_id = int(action["value"])
            if progress.outcome == NOTIFIED:
                return  # a redelivery of a click whose work was all done
            if progress.outcome != APPLIED:
                try:
                    deps.service.confirm_break_glass(request_id, person_of(context))
                except AlreadyDecided:
                    if not progress.redelivered:
                        raise
                progress.step(APPLIED)
            deps.notifier.request_changed(deps.service.get(request_id))
            progress.step(NOTIFIED)

        deps.after_ack(context, confirmed)
