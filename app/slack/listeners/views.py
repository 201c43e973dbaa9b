"""The request form: choosing a role narrows its durations; submitting asks for the access.

Requesting touches only the database, so it runs before the ack and any refusal is shown on the
field it concerns (by the error handler, app/slack/errors.py); the approvers are told after the
ack.
"""

from __future__ import annotations

from typing import Any

from slack_bolt import Ack, App, BoltContext
from slack_sdk import WebClient

from app.messages.views import (
    ACCESS_ACTION,
    ACCESS_BLOCK,
    DURATION_BLOCK,
    REQUEST_VIEW,
    modal_values,
    request_modal,
)
from app.policy import DurationError, parse_duration
from app.policy.rules import requestable
from app.slack.deps import OPENED, SlackDeps
from app.slack.gate import person_of


def register(app: App, deps: SlackDeps) -> None:
    @app.action(ACCESS_ACTION)
    def access_chosen(
        ack: Ack,
        body: dict[str, Any],
        action: dict[str, Any],
        client: WebClient,
        context: BoltContext,
    ) -> None:
        ack()

        def narrow() -> None:
            plans = requestable(deps.service.policy, person_of(context), deps.service.clock.now())
            chosen = (action.get("selected_option") or {}).get("value")
            view = body["view"]
            client.views_update(
                view_id=view["id"], hash=view.get("hash"), view=request_modal(plans, chosen)
            )

        deps.after_ack(context, narrow)  # a refusal is told to the chooser (errors.py)

    @app.view(REQUEST_VIEW)
    def request_submitted(ack: Ack, view: dict[str, Any], context: BoltContext) -> None:
        values = modal_values(view["state"])
        if ":" not in values["access"]:
            ack(response_action="errors", errors={ACCESS_BLOCK: "Choose what you need."})
            return
        target, role = values["access"].split(":", 1)
        try:
            duration = parse_duration(values["duration"])
        except DurationError as exc:
            ack(response_action="errors", errors={DURATION_BLOCK: str(exc)})
            return
        progress = deps.progress()
        if progress.outcome and progress.outcome.startswith(OPENED):
            # Redelivered after a crash: the request was made before the first ack.
            opened = deps.service.get(int(progress.outcome.removeprefix(OPENED)))
        else:
            opened = deps.service.request(
                person_of(context),
                target,
                role,
                duration,
                values["reason"],
                values["ticket"] or None,
            )
            progress.step(f"{OPENED}{opened.id}")  # recorded before the ack
        ack()

        def tell() -> None:
            # The requester's DM about it, with Cancel while it waits, through the outbox
            # (recorded once, however often the form is redelivered).
            deps.notifier.request_received(opened)
            deps.notifier.request_opened(opened)

        deps.after_ack(context, tell)
