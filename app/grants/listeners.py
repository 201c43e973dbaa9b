"""More time and ending access, in Slack: `/jit extend` and `/jit revoke`, and the App Home's
Extend and Revoke buttons. Commands parse and ack at once, clicks ack at once; the service is
called after the ack and checks the person against the request loaded from the database (a
button's value is only the request number)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from slack_bolt import Ack, App, BoltContext
from slack_sdk import WebClient

from app.grants.messages import HOME_EXTEND, HOME_EXTEND_BY, HOME_REVOKE, outcome_line
from app.lifecycle.snapshots import RequestSnapshot
from app.policy import Person, Policy, format_duration
from app.slack.commands import Slash
from app.slack.deps import APPLIED, NOTIFIED, Progress, Shell
from app.slack.gate import caller, person_of, reply_to_clicker
from app.slack.parsing import UsageError, duration, request_id
from app.telling import Delivers
from app.wording import clock_time

EXTEND_EXAMPLE = "/jit extend 42 30m"
REVOKE_EXAMPLE = "/jit revoke 42"


class Tells(Delivers, Protocol):
    """What these listeners have the notifier tell (app/notify/notifier.py)."""

    def publish_home(self, user_id: str) -> None: ...


class Core(Protocol):
    """What these listeners ask of the request core (app/access.py `AccessService`, which is
    built on this package's Grants, so importing it would be a cycle)."""

    @property
    def policy(self) -> Policy: ...

    def extend(self, request_id: int, person: Person, duration: timedelta) -> RequestSnapshot: ...

    def get(self, request_id: int) -> RequestSnapshot: ...

    def revoke(self, request_id: int, person: Person, reason: str = "") -> RequestSnapshot: ...


class Needs(Protocol):
    """What the grants' listeners are given (app/listeners.py's ListenerDeps is one)."""

    @property
    def shell(self) -> Shell: ...

    @property
    def service(self) -> Core: ...

    @property
    def notifier(self) -> Tells: ...


@dataclass(frozen=True)
class Extend:
    request_id: int
    duration: timedelta


@dataclass(frozen=True)
class Revoke:
    request_id: int
    reason: str


def parse_extend(words: list[str]) -> Extend:
    if len(words) != 2:
        raise UsageError("Give the request number and how much longer.", EXTEND_EXAMPLE)
    return Extend(request_id(words[0], EXTEND_EXAMPLE), duration(words[1], EXTEND_EXAMPLE))


def parse_revoke(words: list[str]) -> Revoke:
    if not words:
        raise UsageError("Give the number of the request to end.", REVOKE_EXAMPLE)
    return Revoke(request_id(words[0], REVOKE_EXAMPLE), " ".join(words[1:]))


def register(app: App, deps: Needs) -> None:
    shell = deps.shell

    def extend_command(slash: Slash) -> None:
        parsed = parse_extend(slash.words)
        slash.ack()
        progress = shell.progress()  # read here, on the thread that dispatches the request
        shell.after_ack(slash.context, lambda: _extend(deps, parsed, slash, progress))

    def revoke_command(slash: Slash) -> None:
        parsed = parse_revoke(slash.words)
        slash.ack()
        shell.after_ack(slash.context, lambda: _revoke(deps, parsed, slash))

    shell.jit.add("extend", extend_command)
    shell.jit.add("revoke", revoke_command)

    @app.action(HOME_EXTEND)
    def home_extend(
        ack: Ack,
        body: dict[str, Any],
        action: dict[str, Any],
        client: WebClient,
        context: BoltContext,
    ) -> None:
        ack()
        progress = shell.progress()

        def extend() -> None:
            if progress.outcome == NOTIFIED:
                return  # a redelivery of a click whose work was all done
            view = _extended_once(deps, progress, int(action["value"]), context, HOME_EXTEND_BY)
            if view.extension is not None:
                deps.notifier.deliver_now()
            else:
                ends = clock_time(view.expires_at, deps.service.policy.zone)
                reply_to_clicker(client, body)(f"#{view.id} now ends at {ends}.")
                deps.notifier.publish_home(caller(context).user_id)
            progress.step(NOTIFIED)

        shell.after_ack(context, extend)

    @app.action(HOME_REVOKE)
    def home_revoke(ack: Ack, action: dict[str, Any], context: BoltContext) -> None:
        ack()

        def revoke() -> None:
            by = person_of(context)
            deps.service.revoke(int(action["value"]), by, "revoked from App Home")
            deps.notifier.deliver_now()

        shell.after_ack(context, revoke)


def _extended_once(
    deps: Needs, progress: Progress, request_id: int, context: BoltContext, by: timedelta
) -> RequestSnapshot:
    """Extend, unless an earlier try of this click or command did (its step is on the inbox
    row): a try again after the extension committed must not extend a second time."""
    if progress.outcome == APPLIED:
        return deps.service.get(request_id)
    view = deps.service.extend(request_id, person_of(context), by)
    progress.step(APPLIED)
    return view


def _extend(deps: Needs, parsed: Extend, slash: Slash, progress: Progress) -> None:
    if progress.outcome == NOTIFIED:
        return  # a redelivery of a command whose work was all done
    view = _extended_once(deps, progress, parsed.request_id, slash.context, parsed.duration)
    if view.extension is not None:
        slash.respond(
            response_type="ephemeral",
            text=(
                f"Extension of #{view.id} by {format_duration(view.extension)} is "
                f"with the {view.path} approvers; your access carries on meanwhile."
            ),
        )
        deps.notifier.deliver_now()
    else:
        ends = clock_time(view.expires_at, deps.service.policy.zone)
        slash.respond(response_type="ephemeral", text=f"#{view.id} now ends at {ends}.")
    progress.step(NOTIFIED)


def _revoke(deps: Needs, parsed: Revoke, slash: Slash) -> None:
    view = deps.service.revoke(parsed.request_id, person_of(slash.context), parsed.reason)
    zone = deps.service.policy.zone
    slash.respond(response_type="ephemeral", text=f"#{view.id}: {outcome_line(view, zone)}")
    deps.notifier.deliver_now()
