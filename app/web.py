"""HTTP: `/slack/events` for Slack, `/healthz` (alive), `/readyz` (database reachable) and
`/metrics` (Prometheus; behind a bearer token when `WARDKEY_METRICS_TOKEN` is set)."""

from __future__ import annotations

import hmac
import io
import json
import logging
import threading
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST
from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_sdk.signature import SignatureVerifier
from sqlalchemy import Engine, create_engine, delete, text
from sqlalchemy.exc import OperationalError

from app.clock import Clock, SystemClock
from app.metrics import metrics_text
from app.slack import replay_gate
from app.slack.replay_gate import Verdict
from app.store.db import Database
from app.store.models import SeenRequest

log = logging.getLogger(__name__)
StartResponse = Callable[..., Any]


_TAKE_SIGNATURE = text(
    "INSERT INTO seen_requests (signature, seen_until) VALUES (:signature, :until) "
    "ON CONFLICT (signature) DO UPDATE SET seen_until = EXCLUDED.seen_until "
    "WHERE seen_requests.seen_until <= :now RETURNING 1"
)


class ReplayGuard:
    """Refuses a signed request seen before. Slack's signature stays valid for five minutes, so
    without this a captured click or command could be sent again within that window. Only
    requests whose signature is valid are remembered, so junk cannot fill it.

    Every instance remembers what it saw in memory, and refuses a replay sent to it at once.
    Shared (the default on PostgreSQL, the set-up for more than one app instance), it also
    records each request in a table every instance shares, with one upsert made not in the ack
    path but by the work the request causes, before it acts (app/slack/replay_gate.py)."""

    WINDOW = timedelta(minutes=5)
    FORGET_EVERY = timedelta(minutes=1)

    def __init__(self, db: Database, clock: Clock | None = None, shared: bool = True) -> None:
        self.db = db
        self.shared = shared and not db.is_sqlite
        self.clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._seen: dict[str, datetime] = {}
        self._last_forget = self.clock.now()
        self._own_engine: Engine | None = None

    def first_time_here(self, signature: str) -> bool:
        """New to this instance: the check every mode makes, in memory, in the ack path."""
        now = self.clock.now()
        with self._lock:
            forget = now - self._last_forget >= self.FORGET_EVERY
            if forget:
                self._last_forget = now
                self._seen = {k: until for k, until in self._seen.items() if until > now}
            new = self._seen.get(signature, now) <= now
            if new:
                self._seen[signature] = now + self.WINDOW
        if forget and self.shared:
            threading.Thread(target=self._forget_shared, args=(now,), daemon=True).start()
        return new

    def verdict(self, signature: str) -> Verdict | None:
        """The check against every instance's requests, made when first asked; None when
        there is nothing shared to check (memory mode, or SQLite, which serves one instance)."""
        if not self.shared:
            return None
        seen_at = self.clock.now()
        return Verdict(lambda: self._first_time_anywhere(signature, seen_at))

    def _first_time_anywhere(self, signature: str, now: datetime) -> bool:
        # New, or seen so long ago that its signature has expired: take it; else a replay.
        params = {"signature": signature, "until": now + self.WINDOW, "now": now}
        for attempt in (1, 2):
            try:
                with self._engine().connect() as conn:
                    return conn.execute(_TAKE_SIGNATURE, params).first() is not None
            except OperationalError:  # a connection the server closed: try a fresh one
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _forget_shared(self, now: datetime) -> None:
        try:
            with self._engine().connect() as conn:
                conn.execute(delete(SeenRequest).where(SeenRequest.seen_until <= now))
        except OperationalError as exc:  # the next minute's pass tries again
            log.warning("event=replay_forget_failed error=%s", type(exc).__name__)

    def _engine(self) -> Engine:
        """Connections of the guard's own, so a check never waits for one that work after
        other acks holds. Autocommit, and commits do not wait for the disk: losing the last few
        records to a database crash only reopens a five-minute replay window."""
        with self._lock:
            if self._own_engine is not None:
                return self._own_engine
            url = self.db.url
            options = f"{url.query.get('options', '')} -c synchronous_commit=off".strip()
            self._own_engine = create_engine(
                url.update_query_dict({"options": options}),
                pool_size=4,
                max_overflow=8,
                isolation_level="AUTOCOMMIT",
            )
        return self._own_engine


class WardKeyWSGI:
    def __init__(
        self,
        bolt: App,
        db: Database,
        signing_secret: str,
        metrics_token: str | None = None,
        shared_replay_guard: bool = True,
    ) -> None:
        self.slack = SlackRequestHandler(bolt, path="/slack/events")
        self.db = db
        self.verifier = SignatureVerifier(signing_secret)
        self.replays = ReplayGuard(db, shared=shared_replay_guard)
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
            if not signature or not self.verifier.is_valid(body, stamp, signature):
                return self.slack(environ, start_response)  # Bolt answers 401
            if not self.replays.first_time_here(signature):
                log.warning("event=replayed_request_refused")
                return _text(start_response, "409 Conflict", "replayed request")
            verdict = self.replays.verdict(signature)
            # A form's answer carries the result of work done before the ack (errors on its
            # fields), so a submission is checked against every instance first; nothing else is.
            if verdict and _is_form_submission(body) and not replay_gate.is_new(verdict):
                return _text(start_response, "409 Conflict", "replayed request")
            with replay_gate.judging(verdict):
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


def _is_form_submission(body: bytes) -> bool:
    if not body.startswith(b"payload="):
        return False
    try:
        payload = json.loads(parse_qs(body.decode())["payload"][0])
    except (ValueError, KeyError, UnicodeDecodeError):
        return False
    return isinstance(payload, dict) and payload.get("type") == "view_submission"


def _text(start_response: StartResponse, status: str, body: str) -> list[bytes]:
    data = body.encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]
