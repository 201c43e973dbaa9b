"""Durable intake: acknowledged means recorded.

Every signed Slack request is written to the inbox (the `seen_requests` table) before WardKey
acknowledges it, in the one upsert that also refuses a replay. The request's raw body and the
headers needed to dispatch it again are kept until its work is done.

Listeners stay as they were: they parse and ack on the HTTP thread, and hand what comes after
the ack to `Shell.after_ack`. While a request is being dispatched that work is collected on
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
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import httpx
import psycopg
from slack_bolt import App, BoltRequest
from sqlalchemy import URL, Engine, bindparam, create_engine, func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from app import audit
from app.clock import Clock, SystemClock
from app.priority import ACKS
from app.store.db import Database, bounded
from app.store.models import InboxState, SeenRequest

log = logging.getLogger(__name__)
Job = Callable[[], None]

ATTEMPT_HEADER = "x-wardkey-attempt"
SOCKET_HEADER = "x-wardkey-socket-mode"

NOT_RECORDED = (
    "⚠️ WardKey could not record this, so nothing was done. Try again in a minute. "
    "For a patient-safety emergency, use the trust's fallback procedure now."
)
NOT_RECORDED_SHORT = "Not recorded: WardKey's database is unreachable. Try again in a minute."


class InboxWriteFailed(Exception):
    """The inbox's writer could not write a batch; the cause is the writer's error."""


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


def _owner() -> str:
    """This inbox's name on its claims: host, process and a random part, as one process may
    hold two inboxes (serve's and its sweep's), each with its own claims."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"[-100:]


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
# One round trip of the inbox's writer on PostgreSQL (group commit): every request waiting to
# be recorded, and the work of requests already acknowledged handed to the workers, which the
# hand-over wakes (LISTEN). Sent on the driver's connection, as SQLAlchemy's execution costs
# more of the interpreter than the statement itself. The result names the new requests (a
# replay's row is left as it was); the hand-over's notification adds an empty string.
_WRITE_PG = (
    "WITH handed AS ("
    "UPDATE seen_requests SET state = 'new', claimed_by = NULL, lease_until = NULL, "
    "attempts = 0 WHERE claimed_by = %(owner)s AND state = 'working' "
    "AND signature = ANY(CAST(%(handing)s AS text[])) RETURNING 1"
    "), recorded AS ("
    "INSERT INTO seen_requests (signature, seen_until, body, headers, state, received_at, "
    "lease_until, claimed_by, attempts) "
    "SELECT r.key, %(until)s, r.body, r.headers, 'working', %(now)s, %(lease)s, %(owner)s, 1 "
    "FROM unnest(CAST(%(keys)s AS text[]), CAST(%(bodies)s AS text[]), "
    "CAST(%(headers)s AS text[])) AS r(key, body, headers) "
    "ON CONFLICT (signature) DO UPDATE SET seen_until = EXCLUDED.seen_until, "
    "body = EXCLUDED.body, headers = EXCLUDED.headers, state = 'working', "
    "received_at = EXCLUDED.received_at, lease_until = EXCLUDED.lease_until, "
    "claimed_by = EXCLUDED.claimed_by, attempts = 1, outcome = NULL "
    "WHERE (seen_requests.seen_until <= %(now)s AND seen_requests.state = 'done') "
    # The same write tried again on a fresh connection after the first's answer was lost:
    # its rows are this writer's, received now, and new.
    "OR (seen_requests.claimed_by = %(owner)s AND seen_requests.received_at = %(now)s "
    "AND seen_requests.state = 'working') "
    "RETURNING signature"
    # `recorded` comes first: a key both recorded and handed over in one statement (a Socket
    # Mode retry beside its original) is then locked by the insert before the update.
    ") SELECT signature FROM recorded UNION ALL "
    "SELECT CAST(pg_notify(%(channel)s, '') AS text) FROM (SELECT 1 FROM handed LIMIT 1) AS h"
)
_ABANDON = text(
    "UPDATE seen_requests SET state = 'done', body = NULL, headers = NULL, lease_until = NULL, "
    "outcome = 'not recorded' "
    "WHERE claimed_by = :owner AND state = 'working' AND signature IN :keys"
).bindparams(bindparam("keys", expanding=True))
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
# Handed to the workers: unclaimed and `new` again, with its first try still to come.
_HAND_OVER = text(
    "UPDATE seen_requests SET state = 'new', claimed_by = NULL, lease_until = NULL, "
    "attempts = 0 WHERE claimed_by = :owner AND state = 'working' AND signature IN :keys"
).bindparams(bindparam("keys", expanding=True))
_DUE = (
    "SELECT signature FROM seen_requests WHERE (state = 'new' AND received_at <= :new_before) "
    "OR (state = 'working' AND lease_until <= :now) ORDER BY received_at LIMIT :limit"
)
_CLAIM_DUE = (
    "UPDATE seen_requests SET state = 'working', lease_until = :lease, claimed_by = :owner, "
    "attempts = attempts + 1 WHERE signature IN ({due}) "
    "RETURNING signature, body, headers, attempts, outcome"
)
_FORGET = text("DELETE FROM seen_requests WHERE state = 'done' AND seen_until <= :now")


# Acknowledged and not done: waiting to be taken, being done, or waiting for a try again.
_UNFINISHED = SeenRequest.state.in_([InboxState.NEW.value, InboxState.WORKING.value])


def _nobody_doing(now: datetime) -> Any:
    """Not held by a process under a live lease (new, waiting for a try again, or its
    process's lease lapsed)."""
    return SeenRequest.claimed_by.is_(None) | (SeenRequest.lease_until <= now)


def _backlog(now: datetime) -> Any:
    """Acknowledged requests whose work nobody is doing now (work running under a live lease,
    however long, is not a backlog)."""
    return select(func.count(), func.min(SeenRequest.received_at)).where(
        _UNFINISHED, _nobody_doing(now)
    )


@dataclass
class _Row:
    """A request to record: its key, raw body and kept headers (JSON)."""

    key: str
    body: str
    headers: str


def _held() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclass
class _Slot:
    """One ack waiting for its request to be recorded. `answer` is held until the writer has
    answered: a bare lock is the cheapest thing one thread can wait on with a time-out and
    another release, and every ack waits on one."""

    row: _Row
    answer: threading.Lock = field(default_factory=_held)
    answered: bool = False
    new: bool = False
    error: BaseException | None = None
    gave_up: bool = False


@dataclass
class _Stop:
    """Put in the writer's queue by `GroupCommit.close`: the writer writes what came before
    it, releases `done` and ends."""

    done: threading.Lock = field(default_factory=_held)


class GroupCommit:
    """The inbox's one writer thread. It takes every request waiting to be recorded and every
    acknowledged request whose work is to be handed to the workers, writes them in one
    statement (`write`), and answers each ack. Fewer round trips, commits and statements than
    one per ack, and each ack waits at most `wait` seconds: a database that does not answer is
    "not recorded" in time. A request recorded after its ack gave up is handed to `abandon`,
    which undoes it (True) or could not (False). Hand-overs a failed write left, and undos that
    failed, are tried again with the next write, or after `retry_seconds`."""

    def __init__(
        self,
        write: Callable[[list[_Row], list[str]], set[str]],
        abandon: Callable[[list[str]], bool],
        wait: float,
        handed: Callable[[list[str]], None] = lambda keys: None,
        retry_seconds: float = 3.0,
    ) -> None:
        self._write = write
        self._abandon = abandon
        self._handed = handed
        self._wait = wait
        self._retry_seconds = retry_seconds
        self._hand_over_failing = False  # (the writer's own)
        self._undoing: list[str] = []  # requests recorded after their ack gave up, to undo
        self._lock = threading.Lock()  # an ack giving up, against the writer answering it
        # A queue written in C: putting a request in costs an ack less than a Condition.
        self._queue: queue.SimpleQueue[_Slot | _Stop | str] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._writer, name="inbox-writer", daemon=True)
        self._thread.start()

    def record(self, row: _Row) -> bool:
        """True if new and now recorded, False for a replay; the database's error, or
        TimeoutError when it did not answer in time."""
        slot = _Slot(row)
        self._queue.put(slot)
        if not slot.answer.acquire(timeout=self._wait):
            with self._lock:
                if not slot.answered:
                    slot.gave_up = True
                    raise TimeoutError("the inbox did not answer in time")
        if slot.error is not None:  # each ack its own exception: they run on many threads
            raise InboxWriteFailed(type(slot.error).__name__) from slot.error
        return slot.new

    def hand_over(self, key: str) -> None:
        """Hand the acknowledged request's work to the workers with the next write."""
        self._queue.put(key)

    def close(self, wait_seconds: float) -> bool:
        """Write what is waiting (hand-overs included), then stop the writer; False if it
        did not stop in time (a write that hangs)."""
        stop = _Stop()
        self._queue.put(stop)
        if stop.done.acquire(timeout=wait_seconds):
            self._thread.join(wait_seconds)
        return not self._thread.is_alive()

    def _writer(self) -> None:
        retrying: list[str] = []  # hand-overs a failed write left
        while True:
            try:
                waiting = retrying or self._undoing  # something to try again
                item = self._queue.get(timeout=self._retry_seconds if waiting else None)
            except queue.Empty:
                item = None
            slots: list[_Slot] = []
            handing, retrying = retrying, []
            stop: _Stop | None = None
            while item is not None:  # all that waits, up to a stop
                if isinstance(item, _Slot):
                    slots.append(item)
                elif isinstance(item, _Stop):
                    stop = item
                    break
                else:
                    handing.append(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            try:
                retrying = self._settle(slots, handing)
            except Exception:  # never leave the acks after it without a writer
                log.exception("event=intake_writer_failed")
                retrying = handing  # a hand-over is never dropped (a second one changes nothing)
            if stop is not None:
                stop.done.release()
                return

    def _undo(self) -> None:
        """Undo the requests recorded after their ack said "not recorded"; kept and tried
        again until it works, or their leases would lapse and a sweep would do them."""
        if self._undoing and self._abandon(self._undoing):
            self._undoing = []

    def _settle(self, slots: list[_Slot], handing: list[str]) -> list[str]:
        """Write; answer every ack; return the hand-overs to try again."""
        with self._lock:  # an ack that gave up already said "not recorded": do not write it
            for slot in slots:
                slot.answered = slot.answered or slot.gave_up
            slots = [slot for slot in slots if not slot.gave_up]
        if not (slots or handing):
            self._undo()
            return []
        first: dict[str, _Slot] = {}
        for slot in slots:  # the same request twice at once: the second is a replay
            first.setdefault(slot.row.key, slot)
        error: Exception | None = None
        try:
            new = self._write([slot.row for slot in first.values()], handing)
        except Exception as exc:  # every ack of the batch says "not recorded"
            new, error = set(), exc
            if handing and not self._hand_over_failing:  # logged once until one works
                log.warning(
                    "event=intake_hand_over_failed error=%s what=the work stays this "
                    "process's and is handed over when the database takes writes again",
                    type(exc).__name__,
                )
                self._hand_over_failing = True
        with self._lock:
            abandoned = [s.row.key for s in first.values() if s.gave_up and s.row.key in new]
            for slot in slots:
                slot.error = error
                slot.new = first.get(slot.row.key) is slot and slot.row.key in new
                slot.answered = True
                slot.answer.release()
        self._undoing.extend(abandoned)
        self._undo()
        if error is not None:
            return handing
        if handing:
            if self._hand_over_failing:
                log.warning("event=intake_hand_over_recovered handed=%d", len(handing))
                self._hand_over_failing = False
            self._handed(handing)
        return []


@dataclass(frozen=True)
class Unfinished:
    """An acknowledged request whose work is not done, as an operator sees it."""

    key: str
    what: str  # the command, the action or the form: never its text
    waited: timedelta
    attempts: int
    state: str
    running: bool  # a process holds it under a live lease

    @classmethod
    def of(cls, row: SeenRequest, now: datetime) -> Unfinished:
        received = row.received_at or now
        running = row.claimed_by is not None and (row.lease_until or now) > now
        return cls(
            row.signature,
            _what(row.body or "", row.headers or ""),
            now - received,
            row.attempts or 0,
            row.state,
            running,
        )


def _what(body: str, headers: str) -> str:
    """What a stored request was, by kind and name, without what the person wrote."""
    content_type = str(json.loads(headers or "{}").get("content-type", ""))
    payload = payload_of(body.encode(), content_type)
    if not payload:
        return "unreadable"
    if "command" in payload:  # and its first word ("request", "extend"), not the rest
        verb = str(payload.get("text") or "").split(" ", 1)[0]
        return f"{payload['command']} {verb} by {payload.get('user_id', '?')}"
    kind = str(payload.get("type", "?"))
    user = (payload.get("user") or {}).get("id", "?")
    named = [str(a.get("action_id")) for a in payload.get("actions") or []]
    named += [str((payload.get("view") or {}).get("callback_id") or "")]
    named += [str((payload.get("event") or {}).get("type") or "")]
    return " ".join([kind, *[n for n in named if n], f"by {user}"])


class Intake:
    """The inbox table: record in the ack path, claim, finish, and hand back for a retry."""

    WINDOW = timedelta(minutes=5)  # how long Slack's signature stays valid
    # A request handed to the workers (`hand_off`) that none has taken within this is taken
    # by any process's intake sweep: late, never lost, when no worker runs.
    STEP_IN = timedelta(seconds=10)
    # Renewed every third of itself while the work runs (a heartbeat), so a dead process's
    # claim is taken over within this and a sweep tick.
    LEASE = timedelta(seconds=9)
    # Tries a few seconds apart (2, 4, 8 s, then a lease); after that, work that still fails is
    # logged as stuck and tried once a minute until it works: acknowledged work is never
    # dropped, and it stays in `wardkey_inbox_oldest_seconds` while it waits.
    MAX_ATTEMPTS = 6
    STUCK_RETRY = timedelta(minutes=1)
    TIMEOUT_SECONDS = 2  # an ack must leave within Slack's 3 s even when the database hangs
    CHANNEL = "wardkey_intake"  # PostgreSQL NOTIFY channel: work handed to the workers
    # Acknowledged requests whose work has waited this long are logged as a backlog (once, and
    # its end once), looked at every BACKLOG_BEATS heartbeats: no process doing the work (no
    # worker, no serve with sweeps), or work that keeps failing.
    BACKLOG_ALERT = timedelta(minutes=1)
    BACKLOG_BEATS = 10

    def __init__(self, db: Database, clock: Clock | None = None, *, hand_off: bool = False) -> None:
        self.db = db
        self.clock = clock or SystemClock()
        # True: this process records and acknowledges, and hands each request's work to the
        # `wardkey worker` processes (WARDKEY_INTAKE_WORK=worker) instead of doing it.
        self.hand_off = hand_off
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._failures = 0  # recordings failed since the last that worked, to log an outage once
        self._gather: GroupCommit | None = None
        self.owner = _owner()  # this process's claims
        self._finished: list[str] = []  # requests that caused no work, to mark done together
        self._writing_on: Any = None  # the writer's connection (PostgreSQL)
        self._stop = threading.Event()  # the heartbeat's end
        self._beating: threading.Thread | None = None
        self._closing = False
        # Requests this process recorded or claimed and has not finished: only these leases
        # are renewed, so one whose finishing write failed lapses and is done again.
        self._in_hand: set[str] = set()
        self._backlog_since: datetime | None = None  # the oldest waiting when last alerted

    # ------------------------------------------------------------------ in the ack path

    def record(self, key: str, body: bytes | str, headers: Mapping[str, str]) -> bool:
        """True if the request is new and now recorded, False for a replay; NotRecorded when
        the database could not take it (the caller must then say so, not ack as usual)."""
        row = _Row(
            key,
            body.decode("utf-8", "replace") if isinstance(body, bytes) else body,
            json.dumps(dict(headers)),
        )
        writer = self._group()
        if writer is None:  # shutting down: say so rather than start a writer again
            raise NotRecorded("closing")
        try:
            new = writer.record(row)
        except (InboxWriteFailed, TimeoutError) as exc:
            self._failed(exc.__cause__ or exc)
            raise NotRecorded(type(exc.__cause__ or exc).__name__) from exc
        if new:
            with self._lock:
                self._in_hand.add(key)
        self._recovered()
        return new

    def _group(self) -> GroupCommit | None:
        """The inbox's writer, started on first need; None once the inbox is closing."""
        with self._lock:
            if self._closing:
                return None
            if self._gather is None:
                # Time for the write, a retry on a fresh connection, and a margin: then the
                # ack says "not recorded" (within Slack's 3 s), whatever the database does.
                wait = self.TIMEOUT_SECONDS + 0.5
                write = self._write_sqlite if self.db.is_sqlite else self._write_postgres
                retry = self.LEASE.total_seconds() / 3
                self._gather = GroupCommit(write, self._abandon, wait, self._handed, retry)
            return self._gather

    def _params(self) -> dict[str, Any]:
        now = self.clock.now()
        return {
            "until": now + self.WINDOW,
            "now": now,
            "lease": now + self.LEASE,
            "owner": self.owner,
        }

    def _write_postgres(self, rows: list[_Row], handing: list[str]) -> set[str]:
        """Record `rows` and hand `handing` over in one statement, committed; returns the keys
        that were new. A connection the server closed (a restart) is tried once more on a
        fresh one."""
        params = {
            **self._params(),
            "keys": [row.key for row in rows],
            "bodies": [row.body for row in rows],
            "headers": [row.headers for row in rows],
            "handing": handing,
            "channel": self.CHANNEL,
        }
        for attempt in (1, 2):
            connection = self._writer_connection()
            try:
                with connection.driver_connection.cursor() as cursor:
                    cursor.execute(_WRITE_PG, params)
                    return {key for (key,) in cursor.fetchall() if key}
            except psycopg.Error:
                broken = getattr(connection.driver_connection, "broken", True)
                self._drop_writer_connection()
                if attempt == 1 and broken:
                    continue
                raise
        raise AssertionError("unreachable")

    def _write_sqlite(self, rows: list[_Row], handing: list[str]) -> set[str]:
        """The same on SQLite (one writer at a time anyway), in one transaction."""
        params = self._params()
        new = set()
        with self.engine().begin() as conn:
            for row in rows:
                one = {**params, "key": row.key, "body": row.body, "headers": row.headers}
                if conn.execute(_RECORD, one).first() is not None:
                    new.add(row.key)
            if handing:
                conn.execute(_HAND_OVER, {"owner": self.owner, "keys": handing})
        return new

    def _writer_connection(self) -> Any:
        """The writer's own connection, kept while it works: one thread writes on it."""
        connection = self._writing_on
        if connection is None:  # connected outside the lock: the acks take it too
            connection = self.engine().raw_connection()
            with self._lock:
                self._writing_on = connection
        return connection

    def _drop_writer_connection(self) -> None:
        with self._lock:
            connection, self._writing_on = self._writing_on, None
        if connection is not None:
            connection.invalidate()

    def _handed(self, keys: list[str]) -> None:
        with self._lock:
            self._in_hand.difference_update(keys)

    def _abandon(self, keys: list[str]) -> bool:
        """Requests whose ack gave up waiting (and said "not recorded") but which the database
        recorded after all: done, with nothing done, as the person was told. False if the
        database did not take it (the writer tries again)."""
        return self._quietly_many(_ABANDON, keys)

    def _failed(self, exc: BaseException) -> None:
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
        """After Bolt answered: run the request's work on the pool its listeners named, or hand
        it to the workers (with the writer's next statement); a request that caused none is
        marked done with others on the next heartbeat."""
        self._ensure_heartbeat()
        if pending.jobs and self.hand_off:
            writer = self._group()
            if writer is not None:
                writer.hand_over(pending.key)
            else:  # its lease lapses (no heartbeat renews it) and a sweep takes it over
                log.warning("event=intake_hand_over_after_close")
        elif pending.jobs and pending.executor is not None:
            pending.executor.submit(self.run, pending, self.owner)
        else:
            with self._lock:
                self._finished.append(pending.key)

    def _ensure_heartbeat(self) -> None:
        with self._lock:
            if self._beating is not None or self._closing:
                return
            self._beating = threading.Thread(
                target=self._heartbeat, name="inbox-heartbeat", daemon=True
            )
            self._beating.start()

    def close(self, wait_seconds: float = 5.0) -> None:
        """At shutdown: write what waits (hand-overs too) and stop the writer, mark done what
        finished (one last beat), stop the heartbeat and close the inbox's connections. Leases
        of work still running lapse, so another process takes it over; a heartbeat left
        running would renew them for ever."""
        with self._lock:
            self._closing = True
            beating, gather, self._gather = self._beating, self._gather, None
        stopped = gather is None or gather.close(wait_seconds)
        self._stop.set()
        if beating is not None:
            beating.join(wait_seconds)
        if not stopped:  # a write hangs on the connection: leave both to the process's end
            log.warning("event=intake_writer_still_busy at=close")
            return
        self._drop_writer_connection()
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.dispose()

    def _heartbeat(self) -> None:
        """Every third of a lease, keep this process's claims alive (one statement for all of
        them) and mark done the requests that caused no work."""
        every = self.LEASE.total_seconds() / 3
        beats = 0
        while not self._stop.wait(every):
            beats += 1
            # Never let one failure end the thread: every claim of this process would lapse.
            try:
                self._beat()
                if beats % self.BACKLOG_BEATS == 0:
                    self.watch_backlog()
            except Exception:
                log.exception("event=intake_heartbeat_failed")
        self._beat(renew=False)

    def watch_backlog(self) -> None:
        """Log acknowledged work that has waited past BACKLOG_ALERT (once), and its end."""
        now = self.clock.now()
        try:
            with self.engine().connect() as conn:
                count, oldest = conn.execute(_backlog(now)).one()
        except SQLAlchemyError:  # the outage is logged by what failed first
            return
        if oldest is not None and now - oldest >= self.BACKLOG_ALERT:
            if self._backlog_since is None:
                self._backlog_since = oldest
                log.error(
                    "event=inbox_backlog count=%d oldest_seconds=%.0f what=acknowledged Slack "
                    "requests are waiting for their work: is a wardkey worker (or a serve with "
                    "the sweeps) running? See intake_work_stuck in the log",
                    count,
                    (now - oldest).total_seconds(),
                )
            return
        if self._backlog_since is not None:
            delayed = (now - self._backlog_since).total_seconds()
            self._backlog_since = None
            log.warning("event=inbox_backlog_cleared delayed_seconds=%.0f", delayed)

    def _beat(self, renew: bool = True) -> None:
        with self._lock:
            finished, self._finished = self._finished, []
            self._in_hand.difference_update(finished)
            in_hand = sorted(self._in_hand) if renew else []
        if not (in_hand or finished):
            return
        try:
            with self.engine().connect() as conn:
                lease = self.clock.now() + self.LEASE
                if in_hand:
                    params = {"owner": self.owner, "lease": lease, "keys": in_hand}
                    conn.execute(_RENEW, params)
                if finished:
                    conn.execute(_DONE_MANY, {"owner": self.owner, "keys": finished})
                conn.commit()
        except SQLAlchemyError as exc:  # the claims may lapse: another process then does them
            log.warning("event=intake_heartbeat_failed error=%s", type(exc).__name__)

    def run(self, pending: Pending, owner: str) -> bool:
        """Run the claimed request's work; done, or handed back for a later try. True if done.
        The process's heartbeat renews the lease while the work runs, so only a dead
        process's claim runs out."""
        self._ensure_heartbeat()
        with self._lock:
            self._in_hand.add(pending.key)
        try:
            ACKS.wait_turn()
            return self._run_jobs(pending, owner)
        finally:
            with self._lock:
                self._in_hand.discard(pending.key)

    def _run_jobs(self, pending: Pending, owner: str) -> bool:
        for job in pending.jobs:
            try:
                job()
            except Exception as exc:
                self._failed_try(pending, owner, getattr(job, "__name__", "job"), exc)
                return False
        if pending.attempt > self.MAX_ATTEMPTS:  # its end, as its start was logged
            log.warning("event=intake_work_unstuck attempts=%d", pending.attempt)
        self._quietly(_DONE, pending.key, owner=owner)
        return True

    def _failed_try(self, pending: Pending, owner: str, job: str, exc: Exception) -> None:
        """Hand the request back for a later try: never done while its work fails."""
        stuck = pending.attempt >= self.MAX_ATTEMPTS
        retry_in = (
            self.STUCK_RETRY if stuck else min(self.LEASE, timedelta(seconds=2**pending.attempt))
        )
        if pending.attempt == self.MAX_ATTEMPTS:
            log.error(
                "event=intake_work_stuck job=%s attempts=%d error=%s retry_every=%ds "
                "what=acknowledged work keeps failing; it is kept and tried again until it "
                "works (wardkey_inbox_oldest_seconds grows meanwhile)",
                job,
                pending.attempt,
                type(exc).__name__,
                retry_in.total_seconds(),
            )
        else:
            log.warning(
                "event=intake_work_failed job=%s attempt=%d error=%s retry_in=%ds",
                job,
                pending.attempt,
                type(exc).__name__,
                retry_in.total_seconds(),
            )
        self._quietly(_RETRY_LATER, pending.key, owner=owner, retry_at=self.clock.now() + retry_in)

    def note_outcome(self, key: str, outcome: str) -> None:
        """Record what a form's synchronous part did, so a retry of its work does not do it
        again (written before the form is acknowledged)."""
        self._execute(_OUTCOME, key=key, outcome=outcome[:200])

    # ------------------------------------------------------------------ the sweep's side

    def claim_due(
        self, limit: int = 20, new_after: timedelta | None = None
    ) -> list[tuple[Pending, bytes, dict[str, str], str]]:
        """Rows whose process died before finishing (their lease ran out), and rows handed to
        the workers: at once by a worker (`new_after` zero), after STEP_IN by any other
        process. Claimed with SKIP LOCKED on PostgreSQL, so instances share them."""
        now = self.clock.now()
        owner = self.owner
        due = _DUE + ("" if self.db.is_sqlite else " FOR UPDATE SKIP LOCKED")
        statement = text(_CLAIM_DUE.format(due=due))
        params = {
            "new_before": now - (self.STEP_IN if new_after is None else new_after),
            "now": now,
            "limit": limit,
            "lease": now + self.LEASE,
            "owner": owner,
        }
        with self.db.engine.begin() as conn:
            rows = conn.execute(statement, params).all()
        claimed = []
        for key, body, headers, attempts, outcome in rows:
            # attempts counts this try: 1 for a request handed over (its first try), more
            # for one a dead process or a failed try left.
            pending = Pending(key=key, attempt=max(1, int(attempts)), outcome=outcome)
            claimed.append((pending, (body or "").encode(), json.loads(headers or "{}"), owner))
        return claimed

    def unfinished(self) -> list[Unfinished]:
        """Acknowledged requests whose work is not done, oldest first (`wardkey inbox list`)."""
        now = self.clock.now()
        with self.db.read() as session:
            rows = session.execute(
                select(SeenRequest).where(_UNFINISHED).order_by(SeenRequest.received_at)
            ).scalars()
            return [Unfinished.of(row, now) for row in rows]

    def give_up(self, key: str, actor: str, note: str) -> Unfinished | None:
        """An operator ends acknowledged work that cannot be done (it fails on every try): done,
        with `note` as its outcome, in the transaction of its audit event (`inbox.given_up`).
        None when there is no such unfinished request, or a process is doing it right now."""
        now = self.clock.now()
        with self.db.transaction() as session:
            row = session.execute(
                select(SeenRequest)
                .where(SeenRequest.signature == key, _UNFINISHED, _nobody_doing(now))
                .with_for_update()
            ).scalar_one_or_none()
            if row is None:
                return None
            given_up = Unfinished.of(row, now)
            row.state, row.body, row.headers = InboxState.DONE.value, None, None
            row.lease_until, row.outcome = None, f"given up: {note}"[:200]
            audit.append(
                session,
                at=now,
                action="inbox.given_up",
                actor=actor,
                data={"request": given_up.what, "attempts": given_up.attempts, "note": note},
            )
        log.warning("event=intake_given_up by=%s attempts=%d", actor, given_up.attempts)
        return given_up

    def forget_done(self) -> int:
        """Delete done rows whose signature has expired (a replay would be refused as stale)."""
        with self.db.engine.begin() as conn:
            return conn.execute(_FORGET, {"now": self.clock.now()}).rowcount or 0

    # ------------------------------------------------------------------ connections

    def _execute(self, statement: Any, **params: Any) -> int:
        with self.engine().connect() as conn:
            count = conn.execute(statement, params).rowcount or 0
            conn.commit()
        return int(count)

    def _quietly_many(self, statement: Any, keys: list[str]) -> bool:
        try:
            with self.engine().connect() as conn:
                conn.execute(statement, {"owner": self.owner, "keys": keys})
                conn.commit()
        except SQLAlchemyError as exc:
            log.warning("event=intake_update_failed error=%s", type(exc).__name__)
            return False
        return True

    def _quietly(self, statement: Any, key: str, **params: Any) -> None:
        try:
            self._execute(statement, key=key, **params)
        except SQLAlchemyError as exc:  # the row is left for the sweep, which finishes it
            log.warning("event=intake_update_failed error=%s", type(exc).__name__)

    @contextlib.contextmanager
    def listener(self) -> Iterator[Any]:
        """The driver's own connection (PostgreSQL, autocommit), for LISTEN: not pooled, as
        it stays with its listener."""
        engine = create_engine(
            bounded(self.db.url, self.TIMEOUT_SECONDS, 0),
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
        )
        try:
            with engine.connect() as conn:
                try:
                    yield conn.connection.driver_connection
                except BaseException:
                    # A connection the server dropped: close it without the pool's reset,
                    # which would log a traceback per outage for what the caller already logs.
                    conn.invalidate()
                    raise
        finally:
            engine.dispose()

    def engine(self) -> Engine:
        """Connections of the inbox's own, so recording never waits for one that work after
        other acks holds, and gives up within seconds when the server does not answer.
        Commits are durable (synchronous): an acknowledged request survives a database crash."""
        if self.db.is_sqlite:
            return self.db.engine
        with self._lock:
            if self._engine is None:
                self._engine = create_engine(
                    ack_bounded(self.db.url, self.TIMEOUT_SECONDS),
                    # The writer's connection, each HTTP thread's form step before its ack (16
                    # by default), the work pool's updates and the heartbeat: 24 at most.
                    pool_size=8,
                    max_overflow=16,
                    pool_timeout=self.TIMEOUT_SECONDS,
                    pool_pre_ping=False,
                    # One statement per write, so one round trip: in the ack path every wait
                    # on the network is a wait for the interpreter too.
                    isolation_level="AUTOCOMMIT",
                )
            return self._engine


def ack_bounded(url: URL, seconds: int) -> URL:
    """The database on connections fit for the ack path: connecting and each statement give
    up within `seconds` whatever the URL says (the last -c wins), and data the server does not
    acknowledge (a host gone from the network) closes the connection within as long."""
    url = bounded(url, seconds, 0)
    options = f"{url.query.get('options', '')} -c statement_timeout={seconds * 1000}".strip()
    return url.update_query_dict(
        {
            "options": options,
            "connect_timeout": str(seconds),
            "tcp_user_timeout": str(seconds * 1000),
        }
    )


class Redelivery:
    """Does the work of requests handed to the workers, and of those whose process died:
    claims due inbox rows and dispatches each stored request again through `app` (built on
    first need, so a worker asks nothing of Slack until there is work); the work each
    collects runs on the app's own work pool."""

    BATCH = 20  # requests claimed at a time
    POLL_SECONDS = 0.5  # how often a worker on SQLite (no NOTIFY) looks for handed-over work

    def __init__(self, intake: Intake, app: Callable[[], App]) -> None:
        self.intake = intake
        self._build = app
        self._app: App | None = None
        self._forgot_at: datetime | None = None

    def redeliver_due(self, new_after: timedelta | None = None) -> list[str]:
        """Redeliver what is due; returns the keys whose work finished. `new_after`: how long
        a request handed to the workers waits before this takes it (None: Intake.STEP_IN)."""
        return self._redeliver(new_after)[1]

    def _redeliver(self, new_after: timedelta | None) -> tuple[int, list[str]]:
        """(how many were claimed, the keys whose work finished)."""
        finished = []
        running: list[tuple[str, Future[bool]]] = []
        claimed = self.intake.claim_due(self.BATCH, new_after)
        for pending, body, headers, owner in claimed:
            pending.note = partial(self.intake.note_outcome, pending.key)
            if pending.redelivered:
                log.warning("event=intake_redelivered attempt=%d", pending.attempt)
            if not self._dispatch(pending, body, headers):
                continue
            if pending.executor is None:  # no work, or only a dialog: nothing to wait for
                if self.intake.run(pending, owner):
                    finished.append(pending.key)
                continue
            running.append((pending.key, pending.executor.submit(self.intake.run, pending, owner)))
        for key, done in running:
            if done.result():
                finished.append(key)
        self._forget()
        return len(claimed), finished

    def follow(self) -> threading.Thread:
        """In a worker: take each request handed over as soon as it is (LISTEN on PostgreSQL,
        a short poll on SQLite), on a thread of its own."""
        thread = threading.Thread(target=self._follow, name="inbox-follower", daemon=True)
        thread.start()
        return thread

    def _follow(self) -> None:
        how = "poll" if self.intake.db.is_sqlite else "listen"
        log.info("event=intake_following how=%s", how)
        while True:
            try:
                if self.intake.db.is_sqlite:
                    self._drain()
                    time.sleep(self.POLL_SECONDS)
                else:
                    self._listen()
            except Exception as exc:  # the database is down: the sweep logs that; look again
                log.warning("event=intake_follow_failed error=%s", type(exc).__name__)
                time.sleep(1)

    def _listen(self) -> None:
        with self.intake.listener() as conn:
            conn.execute(f"LISTEN {self.intake.CHANNEL}")
            while True:
                self._drain()
                # Woken by a hand-over; a second's wait at most, so nothing is missed.
                for _ in conn.notifies(timeout=1.0, stop_after=1):
                    pass

    def _drain(self) -> None:
        while self._redeliver(timedelta(0))[0] >= self.BATCH:
            pass

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
        except SQLAlchemyError as exc:
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
