"""Standing privilege in Slack: `/jit standing` (admins) lists access held on targets that no
grant covers, and the targets not yet checked. Acked at once; the service is asked after."""

from __future__ import annotations

from typing import Protocol

from slack_bolt import App

from app.access import AccessService
from app.slack.commands import Slash
from app.slack.deps import Shell
from app.slack.gate import person_of
from app.standing.messages import holders_text
from app.standing.service import StandingService


class Needs(Protocol):
    """What the standing privilege listeners are given (app/listeners.py's ListenerDeps is one)."""

    @property
    def shell(self) -> Shell: ...

    @property
    def service(self) -> AccessService: ...

    @property
    def standing(self) -> StandingService: ...


def register(app: App, deps: Needs) -> None:
    def standing(slash: Slash) -> None:
        slash.ack()
        deps.shell.after_ack(slash.context, lambda: _standing(deps, slash))

    deps.shell.jit.add("standing", standing)


def _standing(deps: Needs, slash: Slash) -> None:
    holders = deps.standing.standing_holders(person_of(slash.context))
    unchecked = deps.standing.unchecked_targets()
    text = holders_text(holders, unchecked, deps.service.policy.zone)
    slash.respond(response_type="ephemeral", text=text)
