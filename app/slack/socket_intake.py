"""Socket Mode through the same inbox as HTTP: each envelope is recorded before it is
acknowledged, keyed by its envelope ID (Slack sends a retried envelope with the same ID)."""

from __future__ import annotations

import json
import time
from functools import partial

from slack_bolt import App
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_bolt.adapter.socket_mode.internals import run_bolt_app, send_response
from slack_sdk.socket_mode.client import BaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse

from app.priority import ACKS
from app.slack import intake
from app.slack.intake import SOCKET_HEADER, Intake, NotRecorded


class RecordingSocketModeHandler(SocketModeHandler):
    def __init__(self, app: App, app_token: str, inbox: Intake) -> None:
        super().__init__(app, app_token)
        self.inbox = inbox

    def handle(self, client: BaseSocketModeClient, req: SocketModeRequest) -> None:
        with ACKS.acking():
            self._handle(client, req)

    def _handle(self, client: BaseSocketModeClient, req: SocketModeRequest) -> None:
        started = time.time()
        key = f"socket:{req.envelope_id}"[:100]
        headers = {SOCKET_HEADER: "1", "content-type": "application/json"}
        if req.retry_attempt is not None:
            headers["x-slack-retry-num"] = str(req.retry_attempt)
        try:
            new = self.inbox.record(key, json.dumps(req.payload), headers)
        except NotRecorded:
            self._not_recorded(client, req)
            return
        if not new:  # Slack sent the envelope again: it is recorded already
            client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))
            return
        pending = intake.Pending(key=key)
        pending.note = partial(self.inbox.note_outcome, key)
        with intake.handling(pending):
            answer = run_bolt_app(self.app, req)
        send_response(client, req, answer, started)
        self.inbox.start(pending)

    def _not_recorded(self, client: BaseSocketModeClient, req: SocketModeRequest) -> None:
        payload = req.payload if isinstance(req.payload, dict) else {}
        said = intake.not_recorded_answer(payload)
        if said is not None:
            client.send_socket_mode_response(
                SocketModeResponse(envelope_id=req.envelope_id, payload=said)
            )
        elif payload.get("type") == "block_actions":
            intake.tell_clicker_not_recorded(payload)
            client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))
        # An event is left unacknowledged: Slack sends it again.
