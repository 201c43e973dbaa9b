"""Who may use WardKey at all, decided once per request before any listener runs.

A valid signature proves Slack sent a request, not that its sender belongs to the trust. The one
global middleware here reads who sent it (`Caller`) from the signed payload, in one way for every
kind of request, and refuses, with a short answer and before anything else happens, anyone whose
workspace is not the trust's own. Listeners take the caller from the context and nowhere else.

The second middleware (`PersonResolver`) puts an `Asker` in the context of every request the gate
lets through: the caller as a person of the trust, with their Slack account checked (guest, Slack
Connect stranger, another org), resolved once for the request and only when first asked for,
after the ack for commands and clicks, so a `users.info` call never delays it; and how to answer
them (`Asker.reply`: an ephemeral reply to a command, an ephemeral or DM to a clicker).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from slack_bolt import BoltContext, BoltRequest, BoltResponse
from slack_bolt.middleware import Middleware
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from app.directory import OUTSIDER, SlackDirectory, slack_unwell
from app.policy.people import Person

log = logging.getLogger(__name__)
CALLER = "wardkey_caller"
ASKER = "wardkey_asker"
_JSON: dict[str, str | Sequence[str]] = {"content-type": "application/json;charset=utf-8"}


@dataclass(frozen=True)
class Caller:
    """Who sent a signed request: their user ID, their own workspace and the workspace the
    request came from (they differ for a Slack Connect partner), and the org, if any."""

    user_id: str
    team_id: str | None
    request_team_id: str | None
    enterprise_id: str | None

    @property
    def teams(self) -> tuple[str | None, str | None]:
        return self.team_id, self.request_team_id


def _id(value: Any) -> str | None:
    """An ID from a field that Slack sends either as a string or as an object with an `id`."""
    if isinstance(value, dict):
        value = value.get("id")
    return str(value) if isinstance(value, str) and value else None


def caller_of(body: dict[str, Any]) -> Caller | None:
    """The sender of a command, an interaction (click, form, select) or an event."""
    event = body.get("event")
    if body.get("command"):  # slash command: flat form fields
        user, own_team = _id(body.get("user_id")), _id(body.get("user_team"))
        request_team = _id(body.get("team_id"))
    elif isinstance(body.get("user"), dict):  # interactivity
        user, own_team = _id(body["user"]), _id(body["user"].get("team_id"))
        request_team = _id(body.get("team"))
    elif isinstance(event, dict):  # Events API
        user, own_team = _id(event.get("user")), _id(event.get("user_team"))
        request_team = _id(body.get("team_id"))
    else:
        return None
    if user is None:
        return None
    enterprise = _id(body.get("enterprise")) or _id(body.get("enterprise_id"))
    return Caller(user, own_team or request_team, request_team, enterprise)


def caller(context: BoltContext) -> Caller:
    """The caller the gate let through (every listener runs behind it)."""
    found = context.get(CALLER)
    if not isinstance(found, Caller):
        raise RuntimeError("listener reached without passing the workspace gate")
    return found


def reply_to_clicker(client: WebClient, body: dict[str, Any]) -> Callable[..., None]:
    """Ephemeral where the click happened; a DM when it came from the App Home or a form."""
    channel = (body.get("channel") or {}).get("id")
    user_id = body["user"]["id"]

    def reply(text: str, **_: Any) -> None:
        if channel:
            client.chat_postEphemeral(channel=channel, user=user_id, text=text)
        else:
            client.chat_postMessage(channel=user_id, text=text)

    return reply


class WorkspaceGate(Middleware):
    """Lets through only requests from the trust's workspace(s); answers the rest itself."""

    def __init__(
        self, directory: SlackDirectory, later: Callable[[Callable[[], None]], None]
    ) -> None:
        self.directory = directory
        self.later = later

    @property
    def name(self) -> str:
        return "WorkspaceGate"

    def process(
        self, *, req: BoltRequest, resp: BoltResponse, next: Callable[[], BoltResponse]
    ) -> BoltResponse:
        body = req.body
        found = caller_of(body)
        workspace = self.directory.workspace()
        if found is not None and workspace.admits(found.teams, found.enterprise_id):
            req.context[CALLER] = found
            return next()
        log.warning(
            "event=outside_workspace_refused user=%s team=%s request_team=%s",
            found.user_id if found else "-",
            found.team_id if found else "-",
            found.request_team_id if found else "-",
        )
        return self._refuse(body, req.context.client)

    def _refuse(self, body: dict[str, Any], client: WebClient | None) -> BoltResponse:
        kind = body.get("type")
        if body.get("command"):
            said = {"response_type": "ephemeral", "text": OUTSIDER}
            return BoltResponse(status=200, body=json.dumps(said), headers=_JSON)
        if kind == "view_submission":
            view: dict[str, Any] = {
                "type": "modal",
                "title": {"type": "plain_text", "text": "WardKey"},
                "close": {"type": "plain_text", "text": "Close"},
                "blocks": [{"type": "section", "text": {"type": "plain_text", "text": OUTSIDER}}],
            }
            answer = {"response_action": "update", "view": view}
            return BoltResponse(status=200, body=json.dumps(answer), headers=_JSON)
        if kind == "block_actions" and client is not None and isinstance(body.get("user"), dict):
            tell = reply_to_clicker(client, body)
            self.later(lambda: tell(OUTSIDER))
        return BoltResponse(status=200, body="")  # an event, or nothing to answer on


class Asker:
    """Who sent a request, as a person of the trust, and how to answer them.

    `person()` checks their Slack account once for the request, when first called (a refusal,
    NotAllowed, is not kept: a later call asks the directory again, which caches profiles).
    `reply` answers them where they asked: an ephemeral reply to a command (through its
    response_url), an ephemeral where a click happened or a DM for one on the App Home or a
    form; None for a form submission or an event, whose answer is the ack itself."""

    def __init__(
        self,
        who: Caller,
        directory: SlackDirectory,
        reply: Callable[[str], None] | None,
    ) -> None:
        self.caller = who
        self.reply = reply
        self._directory = directory
        self._lock = threading.Lock()
        self._person: Person | None = None

    def person(self) -> Person:
        with self._lock:
            if self._person is None:
                who = self.caller
                try:
                    self._person = self._directory.person(
                        who.user_id, who.request_team_id, who.enterprise_id
                    )
                except (SlackApiError, OSError) as exc:
                    if isinstance(exc, SlackApiError) and not slack_unwell(exc):
                        raise
                    raise WhoUnknown(type(exc).__name__) from exc
            return self._person


class WhoUnknown(Exception):
    """Slack's Web API failed (5xx, 429, no answer) while WardKey asked who is acting, and it
    kept no recent answer about them. Nothing was done yet: the work is tried again."""


class PersonResolver(Middleware):
    """After the gate: puts this request's `Asker` in the context (`asker(context)`)."""

    def __init__(self, directory: SlackDirectory) -> None:
        self.directory = directory

    @property
    def name(self) -> str:
        return "PersonResolver"

    def process(
        self, *, req: BoltRequest, resp: BoltResponse, next: Callable[[], BoltResponse]
    ) -> BoltResponse:
        req.context[ASKER] = Asker(caller(req.context), self.directory, _reply(req))
        return next()


def _reply(req: BoltRequest) -> Callable[[str], None] | None:
    body, context = req.body, req.context
    if body.get("command"):
        respond = context.respond
        if respond is None:
            return None

        def ephemeral(text: str) -> None:
            respond(response_type="ephemeral", replace_original=False, text=text)

        return ephemeral
    if body.get("type") == "block_actions" and context.client is not None:
        return reply_to_clicker(context.client, body)
    return None


def asker(context: BoltContext) -> Asker:
    """The asker the person middleware put in the context (every listener runs behind it)."""
    found = context.get(ASKER)
    if not isinstance(found, Asker):
        raise RuntimeError("listener reached without passing the person middleware")
    return found


def person_of(context: BoltContext) -> Person:
    """The person who sent this request (resolved once per request), or NotAllowed."""
    return asker(context).person()
