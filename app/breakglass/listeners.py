"""Break-glass in Slack: `/breakglass target:role reason…`, and Confirm on a held use's card
(the second person of the two-person rule).

The command is parsed and acked at once (the ack says only what is true then: the request is
recorded); the service is called after the ack. On Confirm the service checks the clicker
against the confirmers at this instant (never the person who broke glass or another account of
theirs), loading the request from the database (the button's value is only its number), and the
first confirmation grants. A refusal is told to the clicker alone (app/slack/errors.py).

The request core (app/access.py) is built on this package's BreakGlass (service.py), so these
listeners reach it only through what `Core` names, never by importing it (as jobs.py's
`HeldUses`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from slack_bolt import Ack, App, BoltContext, Respond

from app.blockkit import Names, escape
from app.breakglass.messages import CONFIRM_ACTION
from app.grants.messages import outcome_line
from app.lifecycle.errors import AlreadyDecided
from app.lifecycle.snapshots import BreakGlassStart, RequestSnapshot
from app.policy import Person, Policy
from app.slack.deps import APPLIED, NOTIFIED, Shell
from app.slack.gate import person_of
from app.slack.parsing import UsageError, access, clean
from app.store.models import RequestState
from app.telling import Delivers
from app.wording import clock_time, listed

BREAKGLASS_EXAMPLE = "/breakglass pharmacy-db:read pharmacy system down in ED"
BREAK_GLASS_ACK = (
    "Break-glass request recorded. I'll answer here as soon as access is active, or say why not."
)


class Tells(Delivers, Protocol):
    """What these listeners have the notifier tell (app/notify/notifier.py), and how it names
    people."""

    @property
    def names(self) -> Names: ...


class Core(Protocol):
    """What these listeners ask of the request core (app/access.py `AccessService`)."""

    @property
    def policy(self) -> Policy: ...

    def get(self, request_id: int) -> RequestSnapshot: ...

    def break_glass(
        self, person: Person, target: str, role: str, reason: str
    ) -> RequestSnapshot: ...

    def confirm_break_glass(self, request_id: int, person: Person) -> RequestSnapshot: ...

    def break_glass_start(self, request_id: int) -> BreakGlassStart: ...

    def replaced_request(self, break_glass_id: int) -> tuple[int, datetime] | None: ...


class Needs(Protocol):
    """What the break-glass listeners are given (app/listeners.py's ListenerDeps is one)."""

    @property
    def shell(self) -> Shell: ...

    @property
    def service(self) -> Core: ...

    @property
    def notifier(self) -> Tells: ...


@dataclass(frozen=True)
class BreakGlass:
    target: str
    role: str
    reason: str


def parse_breakglass(text: str) -> BreakGlass:
    words = clean(text, BREAKGLASS_EXAMPLE).split()
    if len(words) < 2:
        raise UsageError("Say which target:role you need and why.", BREAKGLASS_EXAMPLE)
    target, role = access(words[0], BREAKGLASS_EXAMPLE)
    return BreakGlass(target, role, " ".join(words[1:]))


def register(app: App, deps: Needs) -> None:
    shell = deps.shell

    @app.command("/breakglass")
    def breakglass(
        ack: Ack, command: dict[str, Any], respond: Respond, context: BoltContext
    ) -> None:
        try:
            parsed = parse_breakglass(command.get("text", ""))
        except UsageError as exc:
            ack(response_type="ephemeral", text=exc.message)
            return
        # Only what is true now: the request is recorded (the inbox row), nothing decided.
        ack(response_type="ephemeral", text=BREAK_GLASS_ACK)
        shell.after_ack(context, lambda: _break_glass(deps, parsed, context, respond))

    @app.action(CONFIRM_ACTION)
    def confirm(ack: Ack, action: dict[str, Any], context: BoltContext) -> None:
        ack()
        progress = shell.progress()  # read here, on the thread that dispatches the request

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
            deps.notifier.deliver_now()
            progress.step(NOTIFIED)

        shell.after_ack(context, confirmed)


def _break_glass(deps: Needs, parsed: BreakGlass, context: BoltContext, respond: Respond) -> None:
    view = deps.service.break_glass(person_of(context), parsed.target, parsed.role, parsed.reason)
    zone = deps.service.policy.zone
    if view.state == RequestState.PENDING:  # held for a second person (service.py)
        respond(response_type="ephemeral", text=held_text(deps, view))
        deps.notifier.deliver_now()
        return
    text = f"Break-glass #{view.id}: {outcome_line(view, zone)}. This use will be reviewed."
    replaced = deps.service.replaced_request(view.id)
    if replaced is not None:
        text += (
            f" It replaces your request #{replaced[0]}, waiting since "
            f"{clock_time(replaced[1], zone)}, which is now cancelled; its approvers' "
            "cards will say so."
        )
    respond(response_type="ephemeral", text=text)
    deps.notifier.deliver_now()


def held_text(deps: Needs, view: RequestSnapshot) -> str:
    """What the person who broke glass is told at once when it needs a second person."""
    start = deps.service.break_glass_start(view.id)
    names = deps.notifier.names
    asked = listed([names.person(m, m) for m in start.confirmers], "or")
    return (
        f"Break-glass #{view.id} needs a second person before access is given: "
        f"{escape('; '.join(start.held_for))}. I have asked {asked} to confirm it in Slack; "
        "the first to confirm grants it at once, and I will message you the moment it is "
        "active. The security team can see the wait."
    )
