"""Slack's side of Socket Mode, on loopback: the WebSocket that `apps.connections.open` hands
out. It greets the client with `hello`, sends envelopes as Slack does (a slash command, an
interaction, an event) and records what the client sends back: the acks, matched by
envelope_id, with any response payload."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve

JSON = dict[str, Any]


class SocketModeServer:
    def __init__(self) -> None:
        self.acks: dict[str, JSON] = {}
        self.connections = 0
        self._client: ServerConnection | None = None
        self._changed = threading.Condition()
        self._server: Server | None = None

    def start(self) -> SocketModeServer:
        self._server = serve(self._handle, "127.0.0.1", 0, compression=None)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.socket.getsockname()[1]
        return f"ws://127.0.0.1:{port}/link/?ticket=fake"

    def _handle(self, connection: ServerConnection) -> None:
        connection.send(json.dumps({"type": "hello", "num_connections": 1}))
        with self._changed:
            self._client = connection
            self.connections += 1
            self._changed.notify_all()
        try:
            for message in connection:
                ack = json.loads(message)
                with self._changed:
                    self.acks[ack["envelope_id"]] = ack
                    self._changed.notify_all()
        except ConnectionClosed:
            pass

    def wait_connected(self, timeout: float = 15.0) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: self._client is not None, timeout):
                raise AssertionError("the Socket Mode client never connected")

    def send(self, kind: str, payload: JSON, accepts_response_payload: bool = True) -> str:
        """Send an envelope (kind: slash_commands, interactive or events_api); its id."""
        envelope_id = str(uuid.uuid4())
        envelope = {
            "envelope_id": envelope_id,
            "type": kind,
            "payload": payload,
            "accepts_response_payload": accepts_response_payload,
            "retry_attempt": 0,
            "retry_reason": "",
        }
        assert self._client is not None
        self._client.send(json.dumps(envelope))
        return envelope_id

    def ack_of(self, envelope_id: str, timeout: float = 5.0) -> JSON:
        with self._changed:
            if not self._changed.wait_for(lambda: envelope_id in self.acks, timeout):
                raise AssertionError(f"no ack for envelope {envelope_id} in {timeout} s")
            return self.acks[envelope_id]
