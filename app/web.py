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
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_sdk.signature import Clock as SignatureClock
from slack_sdk.signature import SignatureVerifier
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

from app.clock import Clock, SystemClock
from app.metrics import metrics_text
from app.priority import ACKS
from app.slack import intake
from app.slack.intake import Intake, NotRecorded, payload_of
from app.stepup.pages import StepUpPages
from app.store.db import Database, bounded

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


class ReplayGuard:
    """Refuses, at once and in memory, a signed request this instance saw before. Slack's
    signature stays valid for five minutes, so without this a captured click or command could
    be sent again within that window. Only requests whose signature is valid are remembered, so
    junk cannot fill it. Every instance's requests are also refused by the inbox, whose one
    upsert records a request and refuses one seen before (app/slack/intake.py)."""

    WINDOW = timedelta(minutes=5)
    FORGET_EVERY = timedelta(minutes=1)

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._seen: dict[str, datetime] = {}
        self._last_forget = self.clock.now()

    def first_time_here(self, signature: str) -> bool:
        now = self.clock.now()
        with self._lock:
            if now - self._last_forget >= self.FORGET_EVERY:
                self._last_forget = now
                self._seen = {k: until for k, until in self._seen.items() if until > now}
            new = self._seen.get(signature, now) <= now
            if new:
                self._seen[signature] = now + self.WINDOW
        return new


CATCHING_UP = "catching up"
DATABASE_DOWN = "database unreachable"


class Readiness:
    """Answers `/readyz` within a second, whatever the database does, and says what is not
    ready: the check runs on a thread and connection of its own (not one the work may be
    holding), at most one at a time and one a second; a probe waits for it at most
    ANSWER_WITHIN, and a check still out after that means the database is not answering.
    Start-up work (`waiting_for`) keeps it not ready until `done`, while /healthz answers."""

    TIMEOUT_SECONDS = 3
    ANSWER_WITHIN = 0.5
    REUSE_FOR = timedelta(seconds=1)

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock
        self._lock = threading.Lock()
        self._ready = False
        self._checked_at: datetime | None = None
        self._running: threading.Event | None = None  # set when the check under way ends
        self._waiting: set[str] = set()
        self._engine: Engine | None = None

    def waiting_for(self, what: str) -> None:
        with self._lock:
            self._waiting.add(what)

    def done(self, what: str) -> None:
        with self._lock:
            self._waiting.discard(what)

    def ready(self) -> bool:
        return not self.problems()

    def problems(self) -> list[str]:
        """What is not ready, in a few words each; empty when ready."""
        with self._lock:
            waiting = sorted(self._waiting)
            running = self._running
            now = self.clock.now()
            stale = self._checked_at is None or now - self._checked_at >= self.REUSE_FOR
            if running is None and stale:
                running = self._running = threading.Event()
                self._checked_at = now
                threading.Thread(target=self._check, args=(running,), daemon=True).start()
        if running is not None and not running.wait(self.ANSWER_WITHIN):
            return [DATABASE_DOWN, *waiting]  # no answer within the probe's time
        with self._lock:
            database = [] if self._ready else [DATABASE_DOWN]
        return database + waiting

    def _check(self, finished: threading.Event) -> None:
        began = self.db.outage.call_began()
        try:
            with self._connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            self.db.outage.failed("readiness", exc)  # logged once, not once a probe
            ready = False
        else:
            self.db.outage.answered(began)
            ready = True
        with self._lock:
            self._ready = ready
            self._running = None
        finished.set()

    def _connect(self) -> Any:
        if self.db.is_sqlite:  # a local file: no network to hang on
            return self.db.engine.connect()
        if self._engine is None:
            # A fresh connection each time proves the server answers now.
            self._engine = create_engine(
                bounded(self.db.url, self.TIMEOUT_SECONDS, self.TIMEOUT_SECONDS),
                poolclass=NullPool,
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
                bounded(db.url, self.TIMEOUT_SECONDS, self.TIMEOUT_SECONDS),
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
        *,
        intake_work: str = "local",
        metrics_public: bool = False,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        clock: Clock | None = None,
        step_up: StepUpPages | None = None,
    ) -> None:
        self.clock = clock or SystemClock()
        self.slack = SlackRequestHandler(bolt, path="/slack/events")
        self.db = db
        self.verifier = SignatureVerifier(signing_secret, clock=_ClockSeconds(self.clock))
        self.replays = ReplayGuard(self.clock)
        # "worker": this process records and acknowledges; `wardkey worker` does the work.
        self.intake = Intake(db, self.clock, hand_off=intake_work == "worker")
        self.readiness = Readiness(db, self.clock)
        self.scrapes = Scrapes(db)
        self.metrics_token = metrics_token
        self.metrics_public = metrics_public
        self.max_body_bytes = max_body_bytes
        # Step-up sign-in pages (app/stepup), when a path needs them.
        self.step_up = step_up

    def close(self) -> None:
        """After the server stops: the inbox's last beat, its heartbeat and connections."""
        self.intake.close()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            return _text(start_response, "200 OK", "ok")
        if path == "/readyz":
            problems = self.readiness.problems()
            if problems:
                return _text(start_response, "503 Service Unavailable", "; ".join(problems))
            return _text(start_response, "200 OK", "ready")
        if path == "/metrics":
            return self._metrics(environ, start_response)
        if path == "/slack/events":
            with ACKS.acking():
                return self._slack_events(environ, start_response)
        if self.step_up is not None and self.step_up.handles(path):
            return self.step_up(environ, start_response)
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
        # Acknowledged means recorded: the request is in the inbox before Bolt runs, in the
        # same write that refuses one any instance saw before.
        content_type = environ.get("CONTENT_TYPE", "")
        headers = {
            "content-type": content_type,
            "x-slack-request-timestamp": environ.get("HTTP_X_SLACK_REQUEST_TIMESTAMP", ""),
            "x-slack-signature": signature,
        }
        for name in ("x-slack-retry-num", "x-slack-retry-reason"):
            value = environ.get("HTTP_" + name.upper().replace("-", "_"))
            if value:
                headers[name] = value
        try:
            new = self.intake.record(signature, body, headers)
        except NotRecorded:
            return self._not_recorded(payload_of(body, content_type), start_response)
        if not new:
            log.warning("event=replayed_request_refused where=inbox")
            return _text(start_response, "409 Conflict", "replayed request")
        pending = intake.Pending(key=signature)
        pending.note = partial(self.intake.note_outcome, signature)
        with intake.handling(pending):
            answer = self.slack(environ, start_response)
        self.intake.start(pending)
        return answer

    def _not_recorded(
        self, payload: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        """Say at once that nothing was recorded: never an ack that looks like all is well."""
        said = intake.not_recorded_answer(payload)
        if said is not None:
            return _json(start_response, said)
        if payload.get("type") == "block_actions":
            intake.tell_clicker_not_recorded(payload)
            return _text(start_response, "200 OK", "")
        # An event, or anything else: a 503 makes Slack send it again later.
        return _text(start_response, "503 Service Unavailable", "not recorded; send again")

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
        # Compared as whole seconds: a far-future stamp is stale, never a date out of range.
        if abs(self.clock.now().timestamp() - int(stamp)) > STAMP_WINDOW.total_seconds():
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


def _json(start_response: StartResponse, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        "200 OK",
        [("Content-Type", "application/json;charset=utf-8"), ("Content-Length", str(len(data)))],
    )
    return [data]


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
