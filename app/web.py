"""HTTP: `/slack/events` for Slack, `/healthz` (alive), `/readyz` (database reachable) and
`/metrics` (Prometheus; behind a bearer token when `WARDKEY_METRICS_TOKEN` is set)."""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler

from app.metrics import metrics_text
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
    def __init__(self, bolt: App, db: Database, metrics_token: str | None = None) -> None:
        self.slack = SlackRequestHandler(bolt, path="/slack/events")
        self.db = db
        self.replays = ReplayGuard()
        self.metrics_token = metrics_token

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
        if path == "/metrics":
            return self._metrics(environ, start_response)
        if path == "/slack/events":
            signature = environ.get("HTTP_X_SLACK_SIGNATURE", "")
            stamp = environ.get("HTTP_X_SLACK_REQUEST_TIMESTAMP", "")
            if signature and not self.replays.first_time(stamp, signature):
                log.warning("event=replayed_request_refused")
                return _text(start_response, "409 Conflict", "replayed request")
            return self.slack(environ, start_response)
        return _text(start_response, "404 Not Found", "not found")

    def _metrics(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        if self.metrics_token:
            given = environ.get("HTTP_AUTHORIZATION", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.metrics_token}".encode()):
                return _text(start_response, "401 Unauthorized", "metrics need the bearer token")
        try:
            data = metrics_text(self.db)
        except Exception as exc:
            log.warning("event=metrics_failed error=%s", type(exc).__name__)
            return _text(start_response, "503 Service Unavailable", "database unreachable")
        start_response(
            "200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(data)))]
        )
        return [data]


def _text(start_response: StartResponse, status: str, body: str) -> list[bytes]:
    data = body.encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]
