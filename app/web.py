"""HTTP: `/slack/events` for Slack, `/healthz` (alive) and `/readyz` (database reachable)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler

from app.store.db import Database

log = logging.getLogger(__name__)
StartResponse = Callable[..., Any]


class ReplayGuard:
    """Refuses a signed request seen before. Slack's signature stays valid for five minutes, so
    without this a captured click or command could be sent again within that window."""

    WINDOW_SECONDS = 5 * 60

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._seen: dict[tuple[str, str], float] = {}
        self._now = monotonic
        self._lock = threading.Lock()

    def first_time(self, timestamp: str, signature: str) -> bool:
        now = self._now()
        with self._lock:
            if len(self._seen) > 10_000:
                self._seen = {k: t for k, t in self._seen.items() if t > now}
            key = (timestamp, signature)
            if self._seen.get(key, 0.0) > now:
                return False
            self._seen[key] = now + self.WINDOW_SECONDS
            return True


class WardKeyWSGI:
    def __init__(self, bolt: App, db: Database) -> None:
        self.slack = SlackRequestHandler(bolt, path="/slack/events")
        self.db = db
        self.replays = ReplayGuard()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            return _text(start_response, "200 OK", "ok")
        if path == "/readyz":
            try:
                self.db.ping()
            except Exception as exc:
                log.warning("event=not_ready error=%s", type(exc).__name__)
                return _text(start_response, "503 Service Unavailable", "database unreachable")
            return _text(start_response, "200 OK", "ready")
        if path == "/slack/events":
            signature = environ.get("HTTP_X_SLACK_SIGNATURE", "")
            stamp = environ.get("HTTP_X_SLACK_REQUEST_TIMESTAMP", "")
            if signature and not self.replays.first_time(stamp, signature):
                log.warning("event=replayed_request_refused")
                return _text(start_response, "409 Conflict", "replayed request")
            return self.slack(environ, start_response)
        return _text(start_response, "404 Not Found", "not found")


def _text(start_response: StartResponse, status: str, body: str) -> list[bytes]:
    data = body.encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]
