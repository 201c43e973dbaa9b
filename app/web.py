"""HTTP: `/slack/events` for Slack, `/healthz` (alive), `/readyz` (database reachable) and
`/metrics` (Prometheus; behind the bearer token `WARDKEY_METRICS_TOKEN`, or open only when
`WARDKEY_METRICS_PUBLIC` says so).

`/slack/events` is open to the internet, so what Slack did not sign is refused on its headers
alone where it can be (length, timestamp, signature present), the body is read only up to a
small limit, and a refusal is logged as one short line that never carries the body."""

from __future__ import annotations

import hmac
import io
import json
import logging
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST
from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_sdk.signature import Clock as SignatureClock
from slack_sdk.signature import SignatureVerifier
from sqlalchemy import URL, Engine, create_engine, delete, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from app.clock import Clock, SystemClock
from app.metrics import metrics_text
from app.slack import replay_gate
from app.slack.replay_gate import Verdict
from app.store.db import Database
from app.store.models import SeenRequest

log = logging.getLogger(__name__)
StartResponse = Callable[..., Any]

# Slack's own payloads are far smaller: the largest WardKey gets is a click in an App Home of
# at most 100 blocks, form-encoded; 1 MiB holds that with room while a thread's worst case
# stays 1 MiB of memory.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
# Slack signs the time it sent the request; older (or later) than this is refused, as Slack
# advises, so a captured request cannot be sent again later.
STAMP_WINDOW = timedelta(minutes=5)
METRICS_OFF = (
    "metrics are off: set WARDKEY_METRICS_TOKEN and scrape with 'Authorization: Bearer <token>' "
    "(or set WARDKEY_METRICS_PUBLIC=true to serve them to anyone)"
)


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


class Readiness:
    """Answers `/readyz` within a few seconds even when the database hangs, and without
    queueing: one check at a time on a connection of its own (not one the work may be holding),
    at most one a second; probes that come meanwhile get the last answer."""

    TIMEOUT_SECONDS = 3
    REUSE_FOR = timedelta(seconds=1)

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock
        self._lock = threading.Lock()
        self._ready = False
        self._checked_at: datetime | None = None
        self._engine: Engine | None = None

    def ready(self) -> bool:
        if not self._lock.acquire(blocking=False):
            return self._ready  # a check is under way: answer with the last one
        try:
            now = self.clock.now()
            if self._checked_at is None or now - self._checked_at >= self.REUSE_FOR:
                self._ready = self._check()
                self._checked_at = now
            return self._ready
        finally:
            self._lock.release()

    def _check(self) -> bool:
        try:
            with self._connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            log.warning("event=not_ready error=%s", type(exc).__name__)
            return False
        return True

    def _connect(self) -> Any:
        if self.db.is_sqlite:  # a local file: no network to hang on
            return self.db.engine.connect()
        if self._engine is None:
            # A fresh connection each time proves the server answers now.
            self._engine = create_engine(
                _bounded(self.db.url, self.TIMEOUT_SECONDS), poolclass=NullPool
            )
        return self._engine.connect()


class Scrapes:
    """Serves `/metrics` one scrape at a time, on a connection of its own that gives up within
    seconds, so scrapes (or a hung database) never hold more than one of the threads that
    answer Slack. A scrape that comes while one runs is told to come back."""

    TIMEOUT_SECONDS = 5

    def __init__(self, db: Database) -> None:
        self._lock = threading.Lock()
        self.db = (
            db
            if db.is_sqlite
            else Database(
                _bounded(db.url, self.TIMEOUT_SECONDS),
                pool_size=1,
                max_overflow=0,
                pool_timeout=self.TIMEOUT_SECONDS,
            )
        )

    def scrape(self) -> bytes | None:
        """The metrics, or None when another scrape is under way."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return metrics_text(self.db)
        finally:
            self._lock.release()


def _bounded(url: URL, seconds: int) -> URL:
    """The same database, on connections that give up when the server does not answer:
    the connect within `seconds`, each statement within as long."""
    options = f"{url.query.get('options', '')} -c statement_timeout={seconds * 1000}".strip()
    return url.update_query_dict({"options": options, "connect_timeout": str(seconds)})


class _Refused(Exception):
    """A request not from Slack (or not as Slack sends them), refused before it costs much."""

    def __init__(self, status: str, answer: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.answer = answer
        self.reason = reason


class _ClockSeconds(SignatureClock):
    """Our clock in the shape slack_sdk's signature checks want."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def now(self) -> float:
        return self.clock.now().timestamp()


class WardKeyWSGI:
    def __init__(
        self,
        bolt: App,
        db: Database,
        signing_secret: str,
        metrics_token: str | None = None,
        shared_replay_guard: bool = True,
        *,
        metrics_public: bool = False,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        clock: Clock | None = None,
    ) -> None:
        self.clock = clock or SystemClock()
        self.slack = SlackRequestHandler(bolt, path="/slack/events")
        self.db = db
        self.verifier = SignatureVerifier(signing_secret, clock=_ClockSeconds(self.clock))
        self.replays = ReplayGuard(db, self.clock, shared=shared_replay_guard)
        self.readiness = Readiness(db, self.clock)
        self.scrapes = Scrapes(db)
        self.metrics_token = metrics_token
        self.metrics_public = metrics_public
        self.max_body_bytes = max_body_bytes

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            return _text(start_response, "200 OK", "ok")
        if path == "/readyz":
            if not self.readiness.ready():
                return _text(start_response, "503 Service Unavailable", "database unreachable")
            return _text(start_response, "200 OK", "ready")
        if path == "/metrics":
            return self._metrics(environ, start_response)
        if path == "/slack/events":
            return self._slack_events(environ, start_response)
        return _text(start_response, "404 Not Found", "not found")

    def _slack_events(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "POST":
            return _text(start_response, "405 Method Not Allowed", "POST only", [("Allow", "POST")])
        try:
            body, signature = self._signed_body(environ)
        except _Refused as refused:
            # One short line of fixed words: never the body or any header's text.
            log.warning(
                "event=slack_request_refused reason=%s length=%s",
                refused.reason,
                _declared_length(environ),
            )
            return _text(start_response, refused.status, refused.answer)
        # Checked here and by Bolt again (it answers nothing more: the request is Slack's).
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
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

    def _signed_body(self, environ: dict[str, Any]) -> tuple[bytes, str]:
        """The body, if Slack signed it; the headers are checked before a byte is read."""
        declared = environ.get("CONTENT_LENGTH") or ""
        if not declared:
            raise _Refused("411 Length Required", "send a Content-Length", "no_length")
        if not (declared.isascii() and declared.isdigit()):
            raise _Refused("400 Bad Request", "bad Content-Length", "bad_length")
        length = int(declared)
        if length > self.max_body_bytes:
            raise _Refused("413 Content Too Large", "request too large", "too_large")
        stamp = environ.get("HTTP_X_SLACK_REQUEST_TIMESTAMP", "")
        signature = environ.get("HTTP_X_SLACK_SIGNATURE", "")
        if not stamp or not signature:
            raise _Refused("401 Unauthorized", "signed requests only", "unsigned")
        if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
            raise _Refused(
                "400 Bad Request", "X-Slack-Request-Timestamp must be whole seconds", "bad_stamp"
            )
        sent = datetime.fromtimestamp(int(stamp), UTC)
        if abs(self.clock.now() - sent) > STAMP_WINDOW:
            raise _Refused(
                "401 Unauthorized", "request too old (or this server's clock is wrong)", "stale"
            )
        body: bytes = environ["wsgi.input"].read(length)
        expected = self.verifier.generate_signature(timestamp=stamp, body=body) or ""
        if not hmac.compare_digest(expected.encode(), signature.encode("latin-1")):
            raise _Refused("401 Unauthorized", "invalid signature", "bad_signature")
        return body, signature

    def _metrics(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        if self.metrics_token:
            given = environ.get("HTTP_AUTHORIZATION", "")
            if not hmac.compare_digest(
                given.encode("latin-1"), f"Bearer {self.metrics_token}".encode()
            ):
                return _text(start_response, "401 Unauthorized", "metrics need the bearer token")
        elif not self.metrics_public:
            return _text(start_response, "403 Forbidden", METRICS_OFF)
        try:
            data = self.scrapes.scrape()
        except Exception as exc:
            log.warning("event=metrics_failed error=%s", type(exc).__name__)
            return _text(start_response, "503 Service Unavailable", "database unreachable")
        if data is None:
            return _text(
                start_response,
                "503 Service Unavailable",
                "another scrape is under way; try again shortly",
                [("Retry-After", "5")],
            )
        start_response(
            "200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(data)))]
        )
        return [data]


def _declared_length(environ: dict[str, Any]) -> str:
    declared = environ.get("CONTENT_LENGTH") or ""
    return declared if declared.isascii() and declared.isdigit() and len(declared) < 20 else "-"


def _is_form_submission(body: bytes) -> bool:
    if not body.startswith(b"payload="):
        return False
    try:
        payload = json.loads(parse_qs(body.decode())["payload"][0])
    except (ValueError, KeyError, UnicodeDecodeError):
        return False
    return isinstance(payload, dict) and payload.get("type") == "view_submission"


def _text(
    start_response: StartResponse,
    status: str,
    body: str,
    extra: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    data = body.encode()
    headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))]
    start_response(status, headers + (extra or []))
    return [data]
