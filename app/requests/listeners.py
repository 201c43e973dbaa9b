"""Asking for access and deciding it, in Slack: `/jit` with no text (the request form), `/jit
request|status|targets|cancel|help`, the form itself, Approve and Deny on approver cards with
the deny-reason dialog, the requester's Cancel (on their DM about the request, the reply to
/jit request, and the App Home), and the App Home drawn when opened.

Commands parse and ack at once; the service is called after the ack. A valid signature proves
Slack sent a click, not that the clicker may decide: the service checks the clicker against the
approvers of the path at this instant (or, for Cancel, against the request's requester),
loading the request from the database. A button's value is only the request number.

The form: choosing a role narrows its durations; submitting asks for the access. Requesting
touches only the database, so it runs before the ack and any refusal is shown on the field it
concerns (by the error handler, app/slack/errors.py); the approvers are told after the ack.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from slack_bolt import Ack, App, BoltContext, Respond
from slack_sdk import WebClient
from slack_sdk.models.blocks import Block

from app.clock import Clock
from app.grants.messages import outcome_line
from app.lifecycle.errors import AlreadyDecided, InvalidRequest
from app.lifecycle.snapshots import RequestSnapshot
from app.policy import DurationError, Person, Policy, format_duration, parse_duration
from app.policy.rules import requestable
from app.requests.flows import request_received
from app.requests.messages import (
    ACCESS_ACTION,
    ACCESS_BLOCK,
    APPROVE_ACTION,
    CANCEL_ACTION,
    DENY_ACTION,
    DENY_BLOCK,
    DENY_INPUT,
    DENY_VIEW,
    DURATION_BLOCK,
    REQUEST_VIEW,
    contract_line,
    deny_modal,
    modal_values,
    no_access_modal,
    request_modal,
    requester_receipt,
)
from app.slack.commands import Slash
from app.slack.deps import APPLIED, NOTIFIED, OPENED, Progress, Shell
from app.slack.events import SeenEvents
from app.slack.gate import caller, person_of
from app.slack.parsing import REQUEST_EXAMPLE, UsageError, access, duration, request_id
from app.store.models import RequestState
from app.telling import Delivers, Teller

# A ticket at the end of a request: INC0012345 (bracketed or not), or a Jira key in brackets,
# [WARD-42] (bare, it could be the reason's last word: "COVID-19").
_TICKET = re.compile(
    r"^(\[?(?P<ticket>[A-Z]{2,10}[0-9]{4,12})\]?|\[(?P<key>[A-Z][A-Z0-9_]{1,9}-[0-9]{1,9})\])$"
)
CANCEL_EXAMPLE = "/jit cancel 42"
IDENTITY_EXAMPLE = (
    "/jit request lab-db:interface 1h replay stuck HL7 results INC0012345 for svc-lab-interface"
)
HELP = (
    "*WardKey: just-in-time access*\n"
    "• `/jit request target:role 30m reason… [TICKET]` ask for access\n"
    "• `/jit status` your requests and access\n"
    "• `/jit cancel 42` withdraw request 42 while it waits for approval\n"
    "• `/jit extend 42 30m` more time on request 42\n"
    "• `/jit revoke 42` end access now\n"
    "• `/jit targets` what you may ask for\n"
    "• `/jit request … for svc-name` elevate a service account you own\n"
    "• `/jit standing` (admins) access held without a grant\n"
    '• `/jit lockdown target "reason"` (security admins) remove all access to a target now '
    "and refuse new access until `/jit lockdown lift target`\n"
    "• `/breakglass target:role reason…` emergency access now, reviewed afterwards"
)
LIVE = (
    RequestState.PENDING,
    RequestState.APPROVED,
    RequestState.GRANTING,
    RequestState.ACTIVE,
    RequestState.REVOKING,
    RequestState.REVOKE_FAILED,
)


class Tells(Teller, Delivers, Protocol):
    """What these listeners have the notifier tell (app/notify/notifier.py), and the Teller
    the requester's receipt is recorded through (flows.py `request_received`)."""

    def home_opened(self, user_id: str) -> None: ...


class Core(Protocol):
    """What these listeners ask of the request core (app/access.py `AccessService`, which is
    built on this package's Requests, so importing it would be a cycle)."""

    @property
    def policy(self) -> Policy: ...

    @property
    def clock(self) -> Clock: ...

    def get(self, request_id: int) -> RequestSnapshot: ...

    def requests_of(
        self, person: Person, states: tuple[RequestState, ...] = ()
    ) -> list[RequestSnapshot]: ...

    def remember_home_opened(self, slack_user_id: str) -> None: ...

    def request(
        self,
        person: Person,
        target: str,
        role: str,
        duration: timedelta,
        reason: str,
        ticket: str | None = None,
        identity: str | None = None,
    ) -> RequestSnapshot: ...

    def approve(self, request_id: int, approver: Person) -> RequestSnapshot: ...

    def deny(self, request_id: int, approver: Person, reason: str) -> RequestSnapshot: ...

    def cancel(self, request_id: int, person: Person, reason: str = "") -> RequestSnapshot: ...


class StepUp(Protocol):
    """Approving on a path with step_up (app/stepup/listeners.py `SignInOffers`)."""

    def needs_step_up(self, request_id: int) -> bool: ...

    def offer_sign_in(self, request_id: int, context: BoltContext) -> None:
        """Answer the Approve click with a sign-in link instead of approving."""


class Needs(Protocol):
    """What the requests' listeners are given (app/listeners.py's ListenerDeps is one)."""

    @property
    def shell(self) -> Shell: ...

    @property
    def service(self) -> Core: ...

    @property
    def notifier(self) -> Tells: ...

    @property
    def stepup(self) -> StepUp | None:
        """Step-up sign-ins for paths that need them; None: no path does."""


@dataclass(frozen=True)
class RequestAccess:
    target: str
    role: str
    duration: timedelta
    reason: str
    ticket: str | None
    # `… for svc-name`: the service account to elevate (its owner asks). Whether it names a
    # real service account is for the policy to say; otherwise it was part of the reason.
    for_identity: str | None = None


@dataclass(frozen=True)
class Cancel:
    """Withdraw a request still waiting for approval; the words after the number say why."""

    request_id: int
    reason: str


def parse_request(words: list[str]) -> RequestAccess:
    """`/jit request target:role duration reason… [TICKET] [for svc-name]`'s words after
    `request`."""
    if len(words) < 3:
        raise UsageError(
            "Say what you need, for how long and why: target:role, a duration, then a reason.",
            REQUEST_EXAMPLE,
        )
    target, role = access(words[0], REQUEST_EXAMPLE)
    how_long = duration(words[1], REQUEST_EXAMPLE)
    reason_words = words[2:]
    ticket, for_identity = None, None
    for _ in range(2):  # `[TICKET] for svc-x` or `for svc-x [TICKET]`, at the end
        if ticket is None and reason_words and (last := _TICKET.match(reason_words[-1])):
            ticket, reason_words = last["ticket"] or last["key"], reason_words[:-1]
        if for_identity is None and len(reason_words) >= 2 and reason_words[-2] == "for":
            for_identity, reason_words = reason_words[-1], reason_words[:-2]
    if not reason_words:
        raise UsageError("Add a reason after the duration.", REQUEST_EXAMPLE)
    return RequestAccess(target, role, how_long, " ".join(reason_words), ticket, for_identity)


def parse_cancel(words: list[str]) -> Cancel:
    if not words:
        raise UsageError("Give the number of the request to cancel.", CANCEL_EXAMPLE)
    return Cancel(request_id(words[0], CANCEL_EXAMPLE), " ".join(words[1:]))


def register(app: App, deps: Needs) -> None:
    shell = deps.shell
    _register_commands(deps)

    @app.action(APPROVE_ACTION)
    def approve(ack: Ack, action: dict[str, Any], context: BoltContext) -> None:
        ack()
        progress = shell.progress()  # read here, on the thread that dispatches the request

        def decide() -> None:
            request_id = int(action["value"])
            if progress.outcome == NOTIFIED:
                return  # a redelivery of a click whose work was all done
            if deps.stepup is not None and deps.stepup.needs_step_up(request_id):
                # Approving here needs a fresh sign-in: the click only sends the link.
                deps.stepup.offer_sign_in(request_id, context)
                progress.step(NOTIFIED)
                return
            if progress.outcome != APPLIED:
                try:
                    deps.service.approve(request_id, person_of(context))
                except AlreadyDecided:
                    if not progress.redelivered:
                        raise
                    # Its first try may have got this far before its process died: the
                    # card shows the request as it is, and the approver is not told
                    # "already decided" about their own click.
                    deps.notifier.deliver_now()
                    return
                progress.step(APPLIED)
            deps.notifier.deliver_now()
            progress.step(NOTIFIED)

        shell.after_ack(context, decide)

    @app.action(CANCEL_ACTION)
    def cancel(
        ack: Ack,
        body: dict[str, Any],
        action: dict[str, Any],
        context: BoltContext,
        respond: Respond,
    ) -> None:
        ack()
        progress = shell.progress()

        def withdraw() -> None:
            request_id = int(action["value"])
            if progress.outcome == NOTIFIED:
                return  # a redelivery of a click whose work was all done
            container = body.get("container") or {}
            if container.get("type") == "view":
                # Clicked on the App Home: the change redraws it (homes looked at lately
                # are redrawn with each change), once, after the cancel is recorded.
                deps.service.remember_home_opened(caller(context).user_id)
            if progress.outcome != APPLIED:
                try:
                    view = deps.service.cancel(request_id, person_of(context))
                except AlreadyDecided:
                    if not progress.redelivered:
                        raise  # a second click: told plainly what state it is in
                    view = deps.service.get(request_id)  # its first try got this far
                progress.step(APPLIED)
            else:
                view = deps.service.get(request_id)
            deps.notifier.deliver_now()  # cards, DM and home, from the outbox
            if container.get("is_ephemeral"):  # the reply to /jit request: replace it
                respond(replace_original=True, text=cancelled_text(view))
            progress.step(NOTIFIED)

        shell.after_ack(context, withdraw)

    @app.action(DENY_ACTION)
    def deny(
        ack: Ack,
        body: dict[str, Any],
        action: dict[str, Any],
        client: WebClient,
        context: BoltContext,
    ) -> None:
        ack()
        shell.open_dialog(context, lambda: _ask_why(client, body, action))

    @app.view(DENY_VIEW)
    def deny_submitted(ack: Ack, view: dict[str, Any], context: BoltContext) -> None:
        # Deciding touches only the database, so it runs before the ack and a refusal is
        # shown on the field itself (by the error handler, app/slack/errors.py).
        meta = json.loads(view.get("private_metadata") or "{}")
        reason = view["state"]["values"][DENY_BLOCK][DENY_INPUT].get("value") or ""
        progress = shell.progress()
        if progress.outcome != APPLIED:  # else redelivered: denied before the first ack
            deps.service.deny(int(meta["id"]), person_of(context), reason)
            progress.step(APPLIED)
        ack()
        shell.after_ack(context, deps.notifier.deliver_now)

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

        shell.after_ack(context, narrow)  # a refusal is told to the chooser (errors.py)

    @app.view(REQUEST_VIEW)
    def request_submitted(ack: Ack, view: dict[str, Any], context: BoltContext) -> None:
        values = modal_values(view["state"])
        if ":" not in values["access"]:
            ack(response_action="errors", errors={ACCESS_BLOCK: "Choose what you need."})
            return
        target, role = values["access"].split(":", 1)
        try:
            how_long = parse_duration(values["duration"])
        except DurationError as exc:
            ack(response_action="errors", errors={DURATION_BLOCK: str(exc)})
            return
        progress = shell.progress()
        if progress.outcome and progress.outcome.startswith(OPENED):
            # Redelivered after a crash: the request was made before the first ack.
            opened = deps.service.get(int(progress.outcome.removeprefix(OPENED)))
        else:
            opened = deps.service.request(
                person_of(context),
                target,
                role,
                how_long,
                values["reason"],
                values["ticket"] or None,
            )
            progress.step(f"{OPENED}{opened.id}")  # recorded before the ack
        ack()

        def tell() -> None:
            # The requester's DM about it, with Cancel while it waits, through the outbox
            # (recorded once, however often the form is redelivered).
            request_received(opened, deps.notifier)
            deps.notifier.deliver_now()

        shell.after_ack(context, tell)

    seen = SeenEvents()

    @app.event("app_home_opened")
    def home_opened(body: dict[str, Any], event: dict[str, Any], context: BoltContext) -> None:
        """The App Home: the person's requests and access, with Cancel, Extend and Revoke."""
        if event.get("tab", "home") != "home":
            return
        if not seen.first_time(str(body.get("event_id", ""))):
            return
        user_id = caller(context).user_id
        shell.after_ack(context, lambda: deps.notifier.home_opened(user_id))


def _register_commands(deps: Needs) -> None:
    jit, shell = deps.shell.jit, deps.shell

    def open_form(slash: Slash) -> None:
        slash.ack()
        trigger_id, context = slash.command["trigger_id"], slash.context

        def open_it() -> None:
            open_request_form(deps, slash.client, person_of(context), trigger_id)

        shell.open_dialog(context, open_it)

    def show_help(slash: Slash) -> None:
        slash.ack(response_type="ephemeral", text=HELP)

    def request(slash: Slash) -> None:
        parsed = parse_request(slash.words)
        slash.ack()
        progress = shell.progress()  # read here, on the dispatching thread
        shell.after_ack(slash.context, lambda: _request(deps, parsed, slash, progress))

    def status(slash: Slash) -> None:
        slash.ack()
        shell.after_ack(slash.context, lambda: _status(deps, slash))

    def targets(slash: Slash) -> None:
        slash.ack()
        shell.after_ack(slash.context, lambda: _targets(deps, slash))

    def cancel(slash: Slash) -> None:
        parsed = parse_cancel(slash.words)
        slash.ack()
        shell.after_ack(slash.context, lambda: _cancel(deps, parsed, slash))

    jit.add("", open_form)
    jit.add("help", show_help)
    jit.add("request", request)
    jit.add("status", status)
    jit.add("targets", targets)
    jit.add("cancel", cancel)


def _request(deps: Needs, parsed: RequestAccess, slash: Slash, progress: Progress) -> None:
    service = deps.service
    if progress.outcome and progress.outcome.startswith(OPENED):
        # Redelivered after a crash: the request was made by the first try (its cards are in
        # the outbox with it); answer about it, not "already open".
        view = service.get(int(progress.outcome.removeprefix(OPENED)))
    else:
        identity, reason = _identity_and_reason(service.policy, parsed)
        view = service.request(
            person_of(slash.context),
            parsed.target,
            parsed.role,
            parsed.duration,
            reason,
            parsed.ticket,
            identity=identity,
        )
        progress.step(f"{OPENED}{view.id}")
    text, blocks = requester_receipt(view, service.policy.zone)  # with Cancel while it waits
    slash.respond(response_type="ephemeral", text=text, blocks=_json(blocks))
    deps.notifier.deliver_now()


def _status(deps: Needs, slash: Slash) -> None:
    person = person_of(slash.context)
    views = deps.service.requests_of(person, LIVE)
    zone = deps.service.policy.zone
    text = (
        "\n".join(f"• #{v.id} `{v.target}:{v.role}`: {outcome_line(v, zone)}" for v in views)
        or "You have no open requests and no active access."
    )
    slash.respond(response_type="ephemeral", text=_with_contract(deps, person, text))


def _targets(deps: Needs, slash: Slash) -> None:
    person = person_of(slash.context)
    plans = requestable(deps.service.policy, person, deps.service.clock.now())
    lines = [
        f"• `{p.target}:{p.role}` ({p.path}, up to "
        f"{format_duration(p.cap)}{', ticket' if p.ticket_required else ''})"
        for p in plans
    ]
    text = "\n".join(lines) or "You are not eligible for any access yet; ask your manager."
    slash.respond(response_type="ephemeral", text=_with_contract(deps, person, text))


def _cancel(deps: Needs, parsed: Cancel, slash: Slash) -> None:
    view = deps.service.cancel(parsed.request_id, person_of(slash.context), parsed.reason)
    slash.respond(response_type="ephemeral", text=cancelled_text(view))
    deps.notifier.deliver_now()


def open_request_form(deps: Needs, client: WebClient, person: Person, trigger_id: str) -> None:
    plans = requestable(deps.service.policy, person, deps.service.clock.now())
    view = request_modal(plans) if plans else no_access_modal()
    client.views_open(trigger_id=trigger_id, view=view)


def _identity_and_reason(policy: Policy, parsed: RequestAccess) -> tuple[str | None, str]:
    """`… for svc-x` names a service account when the policy has one by that name; a name
    that looks like one but is not is refused rather than read as part of the reason."""
    name = parsed.for_identity
    if name is None:
        return None, parsed.reason
    if name in policy.identities:
        return name, parsed.reason
    if name.lower().startswith("svc"):
        raise InvalidRequest(
            f"There is no service account called '{name[:60]}'. For example: `{IDENTITY_EXAMPLE}`"
        )
    return None, f"{parsed.reason} for {name}"


def _with_contract(deps: Needs, person: Person, text: str) -> str:
    line = contract_line(deps.service.policy, person, deps.service.clock.now())
    return f"{text}\n{line}" if line else text


def cancelled_text(view: RequestSnapshot) -> str:
    """What the requester is told when their cancel went through."""
    return (
        f"Request #{view.id} for `{view.target}:{view.role}` is cancelled: nothing was granted, "
        "and its approvers' cards will show that you cancelled it."
    )


def _json(blocks: Sequence[Block]) -> list[dict[str, Any]]:
    return [b.to_dict() for b in blocks]


def _ask_why(client: WebClient, body: dict[str, Any], action: dict[str, Any]) -> None:
    """Deny opens a dialog for the reason; the requester sees it."""
    channel = (body.get("channel") or {}).get("id")
    client.views_open(trigger_id=body["trigger_id"], view=deny_modal(int(action["value"]), channel))
