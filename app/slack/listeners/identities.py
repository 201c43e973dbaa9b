"""Still needed / Retire on a service account's attestation card: only its owner may answer."""

from __future__ import annotations

from typing import Any

from slack_bolt import Ack, App, BoltContext
from slack_sdk import WebClient

from app.notify.blocks import ATTEST_KEEP, ATTEST_RETIRE
from app.slack.deps import SlackDeps
from app.slack.errors import reply_to_clicker, replying_on_error


def register(app: App, deps: SlackDeps) -> None:
    def clicked(still_needed: bool) -> Any:
        def on_click(
            ack: Ack,
            body: dict[str, Any],
            action: dict[str, Any],
            client: WebClient,
            context: BoltContext,
        ) -> None:
            ack()

            def answer() -> None:
                reply = reply_to_clicker(client, body)
                with replying_on_error(reply):
                    person = deps.person(context)
                    name = str(action["value"])
                    attested = deps.service.attest(name, person, still_needed=still_needed)
                    # Retiring cancels its waiting requests and ends its elevations: every
                    # card and requester hears of each.
                    for request_id in attested.changed_requests:
                        deps.notifier.request_changed(deps.service.get(request_id))
                    message = body.get("message") or {}
                    channel = (body.get("channel") or {}).get("id")
                    if channel and message.get("ts"):
                        deps.notifier.attestation_answered(channel, message["ts"], name)

            deps.after_ack(answer)

        return on_click

    app.action(ATTEST_KEEP)(clicked(still_needed=True))
    app.action(ATTEST_RETIRE)(clicked(still_needed=False))
