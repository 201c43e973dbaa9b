"""Who may use WardKey at all, decided once per request before any listener runs.

A valid signature proves Slack sent a request, not that its sender belongs to the trust. The one
global middleware here reads who sent it (`Caller`) from the signed payload, in one way for every
kind of request, and refuses, with a short answer and before anything else happens, anyone whose
workspace is not the trust's own. Listeners take the caller from the context and nowhere else;
turning the caller into a person (`SlackDeps.person`) checks their Slack account as well (guest,
Slack Connect stranger, another org), after the ack, so a `users.info` call never delays it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from slack_bolt import BoltContext, BoltRequest, BoltResponse
from slack_bolt.middleware import Middleware
from slack_sdk import WebClient

from app.slack.errors import reply_to_clicker
from app.slack.people import OUTSIDER, SlackDirectory

log = logging.getLogger(__name__)
CALLER = "wardkey_caller"
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


class WorkspaceGate(Middleware):
    """Lets through only requests from the trust's workspace(s); answers the rest itself."""

    def __init__(
        self, directory: SlackDirectory, after_ack: Callable[[Callable[[], None]], None]
    ) -> None:
        self.directory = directory
        self.after_ack = after_ack

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
            self.after_ack(lambda: tell(OUTSIDER))
        return BoltResponse(status=200, body="")  # an event, or nothing to answer on
