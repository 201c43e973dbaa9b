"""Still needed / Retire on a service account's attestation card: only its owner may answer."""

from __future__ import annotations

from typing import Any, Protocol

from slack_bolt import Ack, App, BoltContext

from app.access import AccessService
from app.identities.flows import attestation_answered
from app.identities.messages import ATTEST_KEEP, ATTEST_RETIRE
from app.identities.service import IdentityService
from app.slack.deps import Shell
from app.slack.gate import person_of
from app.telling import Delivers, Teller


class Tells(Teller, Delivers, Protocol):
    """The notifier, as the Teller that redraws the card, and what it tells of a request."""


class Needs(Protocol):
    """What the service accounts' listeners are given (app/listeners.py's ListenerDeps is one)."""

    @property
    def shell(self) -> Shell: ...

    @property
    def service(self) -> AccessService: ...

    @property
    def identities(self) -> IdentityService: ...

    @property
    def notifier(self) -> Tells: ...


def register(app: App, deps: Needs) -> None:
    def clicked(still_needed: bool) -> Any:
        def on_click(
            ack: Ack, body: dict[str, Any], action: dict[str, Any], context: BoltContext
        ) -> None:
            ack()

            def answer() -> None:
                name = str(action["value"])
                by = person_of(context)
                attested = deps.identities.attest(name, by, still_needed=still_needed)
                # Retiring cancels its waiting requests and ends its elevations: every
                # card and requester hears of each.
                if attested.changed_requests:
                    deps.notifier.deliver_now()
                message = body.get("message") or {}
                channel = (body.get("channel") or {}).get("id")
                if channel and message.get("ts"):
                    attestation_answered(
                        deps.notifier, deps.identities, channel, message["ts"], name
                    )

            deps.shell.after_ack(context, answer)

        return on_click

    app.action(ATTEST_KEEP)(clicked(still_needed=True))
    app.action(ATTEST_RETIRE)(clicked(still_needed=False))
