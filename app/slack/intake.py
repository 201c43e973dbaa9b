"""Durable intake: acknowledged means recorded.

Every signed Slack request is written to the inbox (the `seen_requests` table) before WardKey
acknowledges it, in the one upsert that also refuses a replay. The request's raw body and the
headers needed to dispatch it again are kept until its work is done.

Listeners stay as they were: they parse and ack on the HTTP thread, and hand what comes after
the ack to `SlackDeps.after_ack`. While a request is being dispatched that work is collected on
its `Pending` (a context variable, as Bolt's lazy listeners collect theirs) instead of being
started; once Bolt has answered, the web process's own pool claims the row (a conditional
update, so only one process ever holds it), runs the work and marks the row done.

If that process dies first, the row stays `new` (or `working` with a lease that runs out) and
`Redelivery`, run by the intake sweep in any `wardkey serve` or `wardkey worker`, claims it and
dispatches the stored request again through an app that does not verify signatures (the
request was verified when it was recorded) and never opens dialogs (their trigger has expired):
the ack part runs again with its answer thrown away, and the work it collects runs there.

Each item is done exactly once in effect: the service's transitions are conditional, and work
that is run again knows it (`Pending.attempt`), so a retried approval that finds its own
decision already recorded redraws the card instead of telling the approver it was too late.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import httpx
from slack_bolt import App, BoltRequest
from sqlalchemy import Engine, bindparam, create_engine, text
from sqlalchemy.exc import DBAPIError

from app.clock import Clock, SystemClock
from app.store.db import Database

log = logging.getLogger(__name__)
Job = Callable[[], None]

# What Bolt needs to dispatch a stored request again; never the signature's secret parts.
KEPT_HEADERS = (
    "content-type",
    "x-slack-request-timestamp",
    "x-slack-signature",
    "x-slack-retry-num",
    "x-slack-retry-reason",
)
ATTEMPT_HEADER = "x-wardkey-attempt"
SOCKET_HEADER = "x-wardkey-socket-mode"

NOT_RECORDED = (
    "⚠️ WardKey could not record this, so nothing was done. Try again in a minute. "
    "For a patient-safety emergency, use the trust's fallback procedure now."
)
NOT_RECORDED_SHORT = "Not recorded: WardKey's database is unreachable. Try again in a minute."


class NotRecorded(Exception):
    """The inbox could not record the request: it must not be acknowledged as accepted."""


@dataclass
class Pending:
    """One request being handled: its inbox key and the work its listeners handed on."""

    key: str
    attempt: int = 1
    outcome: str | None = None
    jobs: list[Job] = field(default_factory=list)
    executor: Executor | None = None
    note: Callable[[str], None] | None = None

    @property
    def redelivered(self) -> bool:
        return self.attempt > 1


_current: ContextVar[Pending | None] = ContextVar("wardkey_pending_request", default=None)


@contextlib.contextmanager
def handling(pending: Pending) -> Iterator[Pending]:
    """While Bolt dispatches the request (listeners run on this thread), `current()` is it."""
    token = _current.set(pending)
    try:
        yield pending
    finally:
        _current.reset(token)


def current() -> Pending | None:
    return _current.get()


def kept_headers(headers: Mapping[str, Any]) -> dict[str, str]:
    """The headers worth storing, lower-cased, first value only."""
    kept: dict[str, str] = {}
    for name, value in headers.items():
        if name.lower() in KEPT_HEADERS:
            first = value[0] if isinstance(value, list | tuple) else value
            kept[name.lower()] = str(first)
    return kept


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{id(object())}"[:100]


# Recorded already claimed by the process that acks it (one write in the ack path); the
# process's heartbeat keeps its claims alive, so they run out only when it dies.
_RECORD = text(
    "INSERT INTO seen_requests (signature, seen_until, body, headers, state, received_at, "
    "lease_until, claimed_by, attempts) "
    "VALUES (:key, :until, :body, :headers, 'working', :now, :lease, :owner, 1) "
    "ON CONFLICT (signature) DO UPDATE SET seen_until = EXCLUDED.seen_until, "
    "body = EXCLUDED.body, headers = EXCLUDED.headers, state = 'working', "
    "received_at = EXCLUDED.received_at, lease_until = EXCLUDED.lease_until, "
    "claimed_by = EXCLUDED.claimed_by, attempts = 1, outcome = NULL "
    "WHERE seen_requests.seen_until <= :now AND seen_requests.state = 'done' RETURNING 1"
)
_RENEW = text(
    "UPDATE seen_requests SET lease_until = :lease "
    "WHERE claimed_by = :owner AND state = 'working' AND signature IN :keys"
).bindparams(bindparam("keys", expanding=True))
_DONE = text(
    "UPDATE seen_requests SET state = 'done', body = NULL, headers = NULL, lease_until = NULL "
    "WHERE signature = :key AND claimed_by = :owner AND state = 'working'"
)
_DONE_MANY = text(
    "UPDATE seen_requests SET state = 'done', body = NULL, headers = NULL, lease_until = NULL "
    "WHERE claimed_by = :owner AND state = 'working' AND signature IN :keys"
).bindparams(bindparam("keys", expanding=True))
_RETRY_LATER = text(
    "UPDATE seen_requests SET lease_until = :retry_at, claimed_by = NULL "
    "WHERE signature = :key AND claimed_by = :owner AND state = 'working'"
)
_OUTCOME = text("UPDATE seen_requests SET outcome = :outcome WHERE signature = :key")
_DUE = (
    "SELECT signature FROM seen_requests WHERE (state = 'new' AND received_at <= :grace) "
    "OR (state = 'working' AND lease_until <= :now) ORDER BY received_at LIMIT :limit"
)
_CLAIM_DUE = (
    "UPDATE seen_requests SET state = 'working', lease_until = :lease, claimed_by = :owner, "
    "attempts = attempts + 1 WHERE signature IN ({due}) "
    "RETURNING signature, body, headers, attempts, outcome"
)
_FORGET = text("DELETE FROM seen_requests WHERE state = 'done' AND seen_until <= :now")
_OLDEST = text("SELECT MIN(received_at) FROM seen_requests WHERE state IN ('new', 'working')")


class Intake:
    """The inbox table: record in the ack path, claim, finish, and hand back for a retry."""

    WINDOW = timedelta(minutes=5)  # how long Slack's signature stays valid
    # Rows are recorded claimed; a row still `new` after this (none are, today) is taken too.
    GRACE = timedelta(seconds=3)
    # Renewed every third of itself while the work runs (a heartbeat), so a dead process's
    # claim is taken over within this and a sweep tick.
    LEASE = timedelta(seconds=9)
    MAX_ATTEMPTS = 6  # then the failure is logged as given up, for an operator to look at
    TIMEOUT_SECONDS = 2  # an ack must leave within Slack's 3 s even when the database hangs

    def __init__(self, db: Database, clock: Clock | None = None) -> None:
        self.db = db
        self.clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._failures = 0  # recordings failed since the last that worked, to log an outage once
        self.owner = _owner()  # this process's claims
        self._finished: list[str] = []  # requests that caused no work, to mark done together
        self._beating = False
        # Requests this process recorded or claimed and has not finished: only these leases
        # are renewed, so one whose finishing write failed lapses and is done again.
        self._in_hand: set[str] = set()

    # ------------------------------------------------------------------ in the ack path

    def record(self, key: str, body: bytes | str, headers: Mapping[str, str]) -> bool:
        """True if the request is new and now recorded, False for a replay; NotRecorded when
        the database could not take it (the caller must then say so, not ack as usual)."""
        now = self.clock.now()
        params = {
            "key": key,
            "until": now + self.WINDOW,
            "body": body.decode("utf-8", "replace") if isinstance(body, bytes) else body,
            "headers": json.dumps(dict(headers)),
            "now": now,
            "lease": now + self.LEASE,
            "owner": self.owner,
        }
        for attempt in (1, 2):
            try:
                with self.engine().connect() as conn:
                    new = conn.execute(_RECORD, params).first() is not None
                    conn.commit()
                if new:
                    with self._lock:
                        self._in_hand.add(key)
                break
            except DBAPIError as exc:
                # A pooled connection the server closed (a restart): once more on a fresh one.
                if attempt == 1 and exc.connection_invalidated:
                    continue
                self._failed(exc)
                raise NotRecorded(type(exc).__name__) from exc
        self._recovered()
        return new

    def _failed(self, exc: Exception) -> None:
        with self._lock:
            self._failures += 1
            first = self._failures == 1
        if first:  # an outage is logged once, and its end once
            log.error(
                "event=intake_failed error=%s what=requests are answered 'not recorded' "
                "until the database takes writes again",
                type(exc).__name__,
            )

    def _recovered(self) -> None:
        if not self._failures:
            return
        with self._lock:
            failed, self._failures = self._failures, 0
        if failed:
            log.warning("event=intake_recovered not_recorded=%d", failed)

    # ------------------------------------------------------------------ after the ack

    def start(self, pending: Pending) -> None:
        """After Bolt answered: run the request's work on the pool its listeners named; a
        request that caused none is marked done with others on the next heartbeat."""
        self._ensure_heartbeat()
        if pending.jobs and pending.executor is not None:
            pending.executor.submit(self.run, pending, self.owner)
        else:
            with self._lock:
                self._finished.append(pending.key)

    def _ensure_heartbeat(self) -> None:
        with self._lock:
            if self._beating:
                return
            self._beating = True
        threading.Thread(target=self._heartbeat, name="inbox-heartbeat", daemon=True).start()

    def _heartbeat(self) -> None:
        """Every third of a lease: keep this process's claims alive (one statement for all of
        them) and mark done the requests that caused no work."""
        while True:
            time.sleep(self.LEASE.total_seconds() / 3)
            with self._lock:
                finished, self._finished = self._finished, []
                self._in_hand.difference_update(finished)
                in_hand = sorted(self._in_hand)
            try:
                with self.engine().connect() as conn:
                    lease = self.clock.now() + self.LEASE
                    if in_hand:
                        params = {"owner": self.owner, "lease": lease, "keys": in_hand}
                        conn.execute(_RENEW, params)
                    if finished:
                        conn.execute(_DONE_MANY, {"owner": self.owner, "keys": finished})
                    conn.commit()
            except DBAPIError as exc:  # the claims may lapse: another process then does them
                log.warning("event=intake_heartbeat_failed error=%s", type(exc).__name__)

    def run(self, pending: Pending, owner: str) -> bool:
        """Run the claimed request's work; done, or handed back for a later try. True if done.
        The process's heartbeat renews the lease while the work runs, so only a dead
        process's claim runs out."""
        self._ensure_heartbeat()
        with self._lock:
            self._in_hand.add(pending.key)
        try:
            return self._run_jobs(pending, owner)
        finally:
            with self._lock:
                self._in_hand.discard(pending.key)

    def _run_jobs(self, pending: Pending, owner: str) -> bool:
        for job in pending.jobs:
            try:
                job()
            except Exception as exc:
                if pending.attempt >= self.MAX_ATTEMPTS:
                    log.error(
                        "event=intake_gave_up job=%s attempts=%d error=%s",
                        getattr(job, "__name__", "job"),
                        pending.attempt,
                        type(exc).__name__,
                    )
                    break
                retry_in = min(self.LEASE, timedelta(seconds=2**pending.attempt))
                log.warning(
                    "event=intake_work_failed job=%s attempt=%d error=%s retry_in=%ds",
                    getattr(job, "__name__", "job"),
                    pending.attempt,
                    type(exc).__name__,
                    retry_in.total_seconds(),
                )
                self._quietly(
                    _RETRY_LATER, pending.key, owner=owner, retry_at=self.clock.now() + retry_in
                )
                return False
        self._quietly(_DONE, pending.key, owner=owner)
        return True

    def note_outcome(self, key: str, outcome: str) -> None:
        """Record what a form's synchronous part did, so a retry of its work does not do it
        again (written before the form is acknowledged)."""
        self._execute(_OUTCOME, key=key, outcome=outcome[:200])

    # ------------------------------------------------------------------ the sweep's side

    def claim_due(self, limit: int = 20) -> list[tuple[Pending, bytes, dict[str, str], str]]:
        """Rows whose process died before finishing: never claimed after the grace, or whose
        lease ran out. Claimed with SKIP LOCKED on PostgreSQL, so instances share them."""
        now = self.clock.now()
        owner = self.owner
        due = _DUE + ("" if self.db.is_sqlite else " FOR UPDATE SKIP LOCKED")
        statement = text(_CLAIM_DUE.format(due=due))
        params = {
            "grace": now - self.GRACE,
            "now": now,
            "limit": limit,
            "lease": now + self.LEASE,
            "owner": owner,
        }
        with self.db.engine.begin() as conn:
            rows = conn.execute(statement, params).all()
        claimed = []
        for key, body, headers, attempts, outcome in rows:
            pending = Pending(key=key, attempt=max(2, int(attempts)), outcome=outcome)
            claimed.append((pending, (body or "").encode(), json.loads(headers or "{}"), owner))
        return claimed

    def forget_done(self) -> int:
        """Delete done rows whose signature has expired (a replay would be refused as stale)."""
        with self.db.engine.begin() as conn:
            return conn.execute(_FORGET, {"now": self.clock.now()}).rowcount or 0

    def oldest_unfinished(self) -> datetime | None:
        """When the oldest request still waiting for its work was received, if any."""
        with self.db.read() as session:
            found: datetime | None = session.execute(_OLDEST).scalar()
        return found

    # ------------------------------------------------------------------ connections

    def _execute(self, statement: Any, **params: Any) -> int:
        with self.engine().connect() as conn:
            count = conn.execute(statement, params).rowcount or 0
            conn.commit()
        return int(count)

    def _quietly(self, statement: Any, key: str, **params: Any) -> None:
        try:
            self._execute(statement, key=key, **params)
        except DBAPIError as exc:  # the row is left for the sweep, which finishes it
            log.warning("event=intake_update_failed error=%s", type(exc).__name__)

    def engine(self) -> Engine:
        """Connections of the inbox's own, so recording never waits for one that work after
        other acks holds, and gives up within seconds when the server does not answer.
        Commits are durable (synchronous): an acknowledged request survives a database crash."""
        if self.db.is_sqlite:
            return self.db.engine
        with self._lock:
            if self._engine is None:
                seconds = self.TIMEOUT_SECONDS
                url = self.db.url
                options = f"{url.query.get('options', '')} -c statement_timeout={seconds * 1000}"
                self._engine = create_engine(
                    url.update_query_dict(
                        {"options": options.strip(), "connect_timeout": str(seconds)}
                    ),
                    pool_size=8,
                    max_overflow=8,
                    pool_timeout=seconds,
                    pool_pre_ping=False,
                    # One statement per write, so one round trip: in the ack path every wait
                    # on the network is a wait for the interpreter too.
                    isolation_level="AUTOCOMMIT",
                )
            return self._engine


class Redelivery:
    """Does the work of requests whose process died: claims due inbox rows and dispatches each
    stored request again through `app` (built on first need, so a worker asks nothing of
    Slack until there is work)."""

    def __init__(self, intake: Intake, app: Callable[[], App]) -> None:
        self.intake = intake
        self._build = app
        self._app: App | None = None
        self._forgot_at: datetime | None = None

    def redeliver_due(self) -> list[str]:
        """Redeliver what is due; returns the keys whose work finished."""
        finished = []
        for pending, body, headers, owner in self.intake.claim_due():
            pending.note = partial(self.intake.note_outcome, pending.key)
            log.warning("event=intake_redelivered attempt=%d", pending.attempt)
            if self._dispatch(pending, body, headers) and self.intake.run(pending, owner):
                finished.append(pending.key)
        self._forget()
        return finished

    def _dispatch(self, pending: Pending, body: bytes, headers: dict[str, str]) -> bool:
        """Run the stored request through the app: its listeners collect their work again."""
        if self._app is None:
            self._app = self._build()
        given: dict[str, str | Sequence[str]] = {**headers, ATTEMPT_HEADER: str(pending.attempt)}
        if given.pop(SOCKET_HEADER, None):
            request = BoltRequest(body=json.loads(body), headers=given, mode="socket_mode")
        else:
            request = BoltRequest(body=body.decode(), headers=given)
        try:
            with handling(pending):
                self._app.dispatch(request)
        except Exception:
            log.exception("event=intake_redispatch_failed")
            return False
        return True

    def _forget(self) -> None:
        now = self.intake.clock.now()
        if self._forgot_at is not None and now - self._forgot_at < timedelta(minutes=1):
            return
        self._forgot_at = now
        try:
            self.intake.forget_done()
        except DBAPIError as exc:
            log.warning("event=intake_forget_failed error=%s", type(exc).__name__)


def first_input_block(view: Mapping[str, Any]) -> str | None:
    """The first input block of a submitted form: where a form-wide error can be shown."""
    values = (view.get("state") or {}).get("values") or {}
    return next(iter(values), None) if isinstance(values, dict) else None


def not_recorded_answer(payload: Mapping[str, Any]) -> dict[str, Any] | None:
    """What to answer a request that could not be recorded, in the ack itself: a command gets
    an ephemeral message, a form an error on its first field (or a page saying so); None for
    a click, which is told through its response_url."""
    if payload.get("command"):
        return {"response_type": "ephemeral", "text": NOT_RECORDED}
    if payload.get("type") == "view_submission":
        view = payload.get("view") or {}
        block = first_input_block(view)
        if block is not None:
            return {"response_action": "errors", "errors": {block: NOT_RECORDED_SHORT}}
        return {
            "response_action": "update",
            "view": {
                "type": "modal",
                "title": {"type": "plain_text", "text": "WardKey"},
                "close": {"type": "plain_text", "text": "Close"},
                "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": NOT_RECORDED}}],
            },
        }
    return None


def tell_not_recorded(
    post: Callable[[str, dict[str, Any]], object], payload: Mapping[str, Any]
) -> bool:
    """Tell a clicker their click was not recorded, through the click's response_url (posted
    by `post(url, json)`); False when the click carries none."""
    url = payload.get("response_url")
    if not isinstance(url, str) or not url.startswith("http"):
        return False
    post(url, {"response_type": "ephemeral", "replace_original": False, "text": NOT_RECORDED})
    return True


def payload_of(body: bytes, content_type: str) -> dict[str, Any]:
    """The request's payload: a command's form fields, an interaction's JSON, or an event."""
    from urllib.parse import parse_qs

    try:
        text_body = body.decode()
        if content_type.startswith("application/json"):
            found = json.loads(text_body)
            return found if isinstance(found, dict) else {}
        fields = {k: v[0] for k, v in parse_qs(text_body).items()}
        if "payload" in fields:
            found = json.loads(fields["payload"])
            return found if isinstance(found, dict) else {}
        return fields
    except (ValueError, UnicodeDecodeError):
        return {}


def tell_clicker_not_recorded(payload: Mapping[str, Any]) -> None:
    """Tell a clicker, on a thread of its own (never in the ack), that the click was not
    recorded."""

    def post(url: str, message: dict[str, Any]) -> object:
        return httpx.post(url, json=message, timeout=5)

    def tell() -> None:
        try:
            if not tell_not_recorded(post, payload):
                log.warning("event=not_recorded_untold reason=no_response_url")
        except httpx.HTTPError as exc:
            log.warning("event=not_recorded_untold error=%s", type(exc).__name__)

    threading.Thread(target=tell, name="not-recorded", daemon=True).start()
