"""HTTP: `/slack/events` for Slack, `/healthz` (alive), `/readyz` (database reachable) and
`/metrics` (Prometheus; behind a bearer token when `WARDKEY_METRICS_TOKEN` is set)."""

from __future__ import annotations

import hmac
import io
import logging
import threading
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_sdk.signature import SignatureVerifier
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from app.clock import Clock, SystemClock
from app.metrics import metrics_text
from app.store.db import Database
from app.store.models import SeenRequest

log = logging.getLogger(__name__)
StartResponse = Callable[..., Any]


class ReplayGuard:
    """Refuses a signed request seen before, by this instance or any other sharing the
    database. Slack's signature stays valid for five minutes, so without this a captured click
    or command could be sent again within that window. Only requests whose signature is valid
    are recorded, so junk cannot fill the table."""

    WINDOW = timedelta(minutes=5)
    FORGET_EVERY = timedelta(minutes=1)

    def __init__(self, db: Database, clock: Clock | None = None) -> None:
        self.db = db
        self.clock = clock or SystemClock()
        self._last_forget = self.clock.now()
        self._lock = threading.Lock()

    def first_time(self, signature: str) -> bool:
        now = self.clock.now()
        self._forget_expired(now)
        try:
            with self.db.transaction() as session:
                seen = session.get(SeenRequest, signature)
                if seen is not None and seen.seen_until > now:
                    return False
                if seen is None:
                    session.add(SeenRequest(signature=signature, seen_until=now + self.WINDOW))
                else:
                    seen.seen_until = now + self.WINDOW
        except IntegrityError:  # the same request, at the same moment, on another instance
            return False
        return True

    def _forget_expired(self, now: datetime) -> None:
        with self._lock:
            if now - self._last_forget < self.FORGET_EVERY:
                return
            self._last_forget = now
        with self.db.transaction() as session:
            session.execute(delete(SeenRequest).where(SeenRequest.seen_until <= now))


class WardKeyWSGI:
    def __init__(
        self,
        bolt: App,
        db: Database,
        signing_secret: str,
        metrics_token: str | None = None,
    ) -> None:
        self.slack = SlackRequestHandler(bolt, path="/slack/events")
        self.db = db
        self.verifier = SignatureVerifier(signing_secret)
        self.replays = ReplayGuard(db)
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
            # Read the body once, check it is Slack's and new, then hand it on to Bolt (which
            # verifies the signature again and answers bad ones with 401).
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(body)
            signature = environ.get("HTTP_X_SLACK_SIGNATURE", "")
            stamp = environ.get("HTTP_X_SLACK_REQUEST_TIMESTAMP", "")
            signed = bool(signature) and self.verifier.is_valid(body, stamp, signature)
            if signed and not self.replays.first_time(signature):
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
