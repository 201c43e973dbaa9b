"""The Slack outbox: every message WardKey sends goes through the database.

A state change writes a notice (app/lifecycle/transitions.py) in its own transaction. The
deliverer claims rows the way the inbox and the expiry sweep do (`FOR UPDATE SKIP LOCKED` on
PostgreSQL, a conditional update on SQLite, with a lease): a notice is turned by the notifier
into the messages it causes, each stored as its own row with a key, and those are sent. Only the
first unfinished row of a lane (one request, one person's home, the security channel) is
claimable, so a request's messages go out in the order things happened.

Nothing is sent twice. Card updates and home redraws are idempotent. A post carries its key in
Slack's message metadata; its row is marked sent in the same write that records its ts. If a
try may have reached Slack (a 5xx, a lost answer, a process killed mid-call), the next try looks
for the key in the conversation first and records what it finds instead of posting again.

Nothing is lost. A Slack 5xx, 429 (Retry-After honoured) or outage puts the row back with a
back-off; the outage is logged once, its end once, and a backlog older than `alert_after` is
logged (event=outbox_backlog) and, once delivered, reported to the security channel with how
long messages were delayed.
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import socket
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy import Row, TextClause, TextualSelect, bindparam, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.clock import Clock
from app.outbox_records import (
    HOME,
    POST,
    UPDATE,
    Defer,
    Delivered,
    Notice,
    OutCall,
    call_row,
)
from app.priority import ACKS
from app.store.db import Database, is_database_error
from app.store.models import OutboxItem, OutboxState, RequestMessage, UTCDateTime

log = logging.getLogger(__name__)

METADATA_EVENT = "wardkey_outbox"
# Slack errors that say "try again later", not "this message can never be sent".
TRANSIENT_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
BACKOFF_FIRST = 1.0
BACKOFF_CAP = 10.0  # while Slack is down, each lane tries about this often
MAX_HISTORY = 200  # messages looked through for a key (Slack's page limit)


class Renderer(Protocol):
    """The notifier: turns a notice into the Slack calls it causes; draws a home."""

    def expand(self, notice: Notice) -> list[OutCall]: ...

    def draw_home(self, user_id: str) -> dict[str, Any] | None: ...

    def draw_late(self, call: OutCall, before: Sequence[Delivered]) -> OutCall | None: ...


class Transient(Exception):
    """Slack did not take the call this time (5xx, 429, unreachable)."""

    def __init__(self, error: str, *, retry_after: float | None = None, uncertain: bool) -> None:
        super().__init__(error)
        self.error = error
        self.retry_after = retry_after
        self.uncertain = uncertain


class Refused(Exception):
    """Slack refused the call for good (archived channel, unknown user, bad blocks)."""


@dataclass
class Claimed:
    id: int
    kind: str
    lane: str
    key: str | None
    action: str | None
    request_id: int | None
    version: int | None
    body: str
    attempts: int
    uncertain: bool
    created_at: datetime
    parent: int | None = None  # the notice this call came from, and its place among its calls
    step: int = 0


_TIMES = ("now", "lease", "due")


def _typed(statement: str) -> TextClause:
    """A statement whose time parameters are stored as the models store them (UTC; naive on
    SQLite), so comparisons with the columns hold on every backend."""
    clause = text(statement)
    names = [n for n in _TIMES if f":{n}" in statement]
    return clause.bindparams(*[bindparam(n, type_=UTCDateTime()) for n in names])


_SELECT_HEADS = (
    "SELECT o.id FROM outbox o WHERE o.state IN ('new', 'working') AND o.due_at <= :now "
    "AND (o.state = 'new' OR o.lease_until <= :now) "
    "AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.lane = o.lane "
    "AND p.state IN ('new', 'working') AND (COALESCE(p.parent, p.id) < COALESCE(o.parent, o.id) "
    "OR (COALESCE(p.parent, p.id) = COALESCE(o.parent, o.id) AND p.step < o.step))) "
    "ORDER BY o.id LIMIT :limit"
)
_CLAIMING = (
    "UPDATE outbox SET uncertain = (uncertain OR state = 'working'), state = 'working', "
    "claimed_by = :owner, lease_until = :lease, attempts = attempts + 1 "
    "WHERE {which} AND (state = 'new' OR (state = 'working' AND lease_until <= :now)) "
    "{due}RETURNING id, kind, lane, key, action, request_id, version, body, attempts, "
    "uncertain, created_at, parent, step"
)
_CLAIM = (
    _typed(_CLAIMING.format(which="id IN :ids", due=""))
    .bindparams(bindparam("ids", expanding=True))
    .columns(created_at=UTCDateTime())
)
# A lane's next row, claimed (if it is due) by the write that finishes the one before it, in one
# statement with finding it. On PostgreSQL a row another process is locking is skipped, as
# the claim of lane heads does.
_LANE_HEAD = (
    "SELECT id FROM outbox WHERE lane = :lane AND state IN ('new', 'working') "
    "ORDER BY COALESCE(parent, id), step LIMIT 1"
)


def _claiming_lane_head(locking: str) -> TextualSelect:
    which = f"id = ({_LANE_HEAD}{locking})"
    claim = _CLAIMING.format(which=which, due="AND due_at <= :now ")
    return _typed(claim).columns(created_at=UTCDateTime())


_CLAIM_LANE_HEAD = {
    False: _claiming_lane_head(" FOR UPDATE SKIP LOCKED"),
    True: _claiming_lane_head(""),  # SQLite: one writer at a time, and no row locks
}
_HELD = "id = :id AND state = 'working' AND claimed_by = :owner"
_DONE = _typed(
    "UPDATE outbox SET state = 'done', done_at = :now, lease_until = NULL, channel = :channel, "
    f"ts = :ts, last_error = NULL WHERE {_HELD}"
)
_AGAIN = _typed(
    "UPDATE outbox SET state = 'new', due_at = :due, lease_until = NULL, claimed_by = NULL, "
    f"uncertain = :uncertain, last_error = :error WHERE {_HELD}"
)
_FAILED = _typed(
    "UPDATE outbox SET state = 'failed', done_at = :now, lease_until = NULL, last_error = :error "
    f"WHERE {_HELD}"
)
_RENEW_HELD = _typed(
    "UPDATE outbox SET lease_until = :lease WHERE id IN :ids AND state = 'working' "
    "AND claimed_by = :owner"
).bindparams(bindparam("ids", expanding=True))
# Notices of these kinds waiting right behind one in its lane are rendered with it.
COALESCED = frozenset({"standing.found", "orphans.found", "lockdown.progress"})
_FOLLOWING = _typed(
    "SELECT id, kind, action, body FROM outbox WHERE lane = :lane AND state = 'new' "
    "AND id > :id ORDER BY id LIMIT 200"
)
_ABSORB = _typed(
    "UPDATE outbox SET state = 'done', done_at = :now, last_error = 'coalesced' "
    "WHERE id IN :ids AND state = 'new'"
).bindparams(bindparam("ids", expanding=True))
_SOON = _typed(
    "UPDATE outbox SET due_at = :now WHERE state = 'new' AND due_at > :now "
    "AND last_error IS NOT NULL AND last_error NOT LIKE 'ratelimited%'"
)


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"[:100]


class Outbox:
    """Claims and sends outbox rows. `background`: kicks wake this process's delivery threads
    (a running serve or worker), which send different lanes' messages at once; otherwise a
    kick delivers at once on the caller's thread (tests, the demo), so a test sees the
    messages as soon as the work is done. A heartbeat renews the claims on rows being worked
    on, so a living deliverer keeps them through a slow Slack call and a dead one's lapse
    within one lease."""

    LEASE = timedelta(seconds=10)
    BATCH = 50
    THREADS = 4  # Slack calls in flight at once from one process (different lanes)

    def __init__(
        self,
        db: Database,
        clock: Clock,
        client: WebClient,
        renderer: Renderer,
        *,
        background: bool = False,
        alert_after: timedelta = timedelta(seconds=60),
        security_channel: Callable[[], str] | None = None,
        lease: timedelta | None = None,
        threads: int | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.client = client
        self.renderer = renderer
        self.background = background
        self.alert_after = alert_after
        self.security_channel = security_channel
        self.lease = lease or self.LEASE
        self.threads = max(
            1, threads or int(os.environ.get("WARDKEY_OUTBOX_THREADS", "0") or 0) or self.THREADS
        )
        self.owner = _owner()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._kicks = 0  # kicks not yet seen by a delivery thread
        self._started = False
        self._closing = False
        self._threads: list[threading.Thread] = []
        self._held: set[int] = set()  # rows this process is working on (the heartbeat's)
        # A finished row's lane's next row, claimed in the write that finished it: the same
        # sender delivers it next (one transaction per message, not a claim and a finish).
        self._continued: dict[int, Claimed] = {}
        self._inline = threading.local()
        self._slack_down_since: datetime | None = None
        self._slack_failures = 0
        self._paused_until: dict[str, datetime] = {}  # a method Slack rate-limited
        self._backlog_since: datetime | None = None  # oldest waiting row when alerted

    # ------------------------------------------------------------------ entry points

    def kick(self) -> None:
        """Something was recorded: deliver it now (inline) or wake the delivery thread."""
        if self.background:
            self._ensure_thread()
            with self._wake:
                self._kicks += 1
                self._wake.notify_all()
            return
        if getattr(self._inline, "busy", False):
            return  # a message's rendering asked for delivery: the loop running picks it up
        self._inline.busy = True
        try:
            self.deliver_due()
        except Exception as exc:
            self._log_failure("outbox_delivery_failed", exc)
        finally:
            self._inline.busy = False

    def tick(self) -> int:
        """The deliver sweep: in a process, wake the dispatcher (its senders work in
        parallel); otherwise deliver here. Returns the rows finished here."""
        if self.background:
            self.kick()
            # The backlog check is the tick's own work here (it also tells the sweep that the
            # database answered: a kick alone would say so during an outage).
            self._watch_backlog()
            return 0
        return self.deliver_due()

    def enqueue(self, lane: str, calls: Sequence[OutCall], key: str | None = None) -> None:
        """Record calls that no request's transition caused (digest, alerts, homes) and kick.
        `key`: for a single call, refuse a second row with the same key (another process
        recorded the same message)."""
        if not calls:
            return
        now = self.clock.now()
        try:
            with self.db.transaction() as session:
                first = self._row(lane, calls[0], now, key=key)
                session.add(first)
                session.flush()
                for step, call in enumerate(calls[1:], start=1):
                    row = self._row(lane, call, now)
                    row.parent, row.step = first.id, step
                    session.add(row)
        except IntegrityError:
            return  # the same keyed message is already recorded
        self.kick()

    def enqueue_home(self, user_id: str) -> None:
        """A home redraw, unless one for this person is already waiting (it will draw the
        latest state anyway)."""
        lane = f"home:{user_id}"
        with self.db.read() as session:
            waiting = session.scalar(
                select(func.count())
                .select_from(OutboxItem)
                .where(OutboxItem.lane == lane, OutboxItem.state == OutboxState.NEW.value)
            )
        if waiting:
            self.kick()
            return
        self.enqueue(lane, [OutCall(HOME, {"user_id": user_id})])

    def deliver_due(self, batch: int | None = None) -> int:
        """Claim and send what is due, lane head by lane head, until nothing is left; returns
        the rows finished. Safe to run in many threads and processes at once."""
        finished = 0
        while True:
            claimed = self._claim(batch or self.BATCH)
            if not claimed:
                break
            self._hold(item.id for item in claimed)
            try:
                for item in claimed:
                    finished += self._deliver_lane(item)
            finally:
                self._release(item.id for item in claimed)
        self._watch_backlog()
        return finished

    # ------------------------------------------------------------------ claiming

    def _claim(self, batch: int | None = None) -> list[Claimed]:
        now = self.clock.now()
        heads = _SELECT_HEADS
        if not self.db.is_sqlite:  # rows another process is claiming are skipped, not waited for
            heads += " FOR UPDATE OF o SKIP LOCKED"
        with self.db.transaction() as session:
            ids = list(
                session.execute(_typed(heads), {"now": now, "limit": batch or self.BATCH}).scalars()
            )
            if not ids:
                return []
            rows = session.execute(
                _CLAIM, {"ids": ids, "owner": self.owner, "lease": now + self.lease, "now": now}
            ).all()
        return sorted((Claimed(*row) for row in rows), key=lambda c: c.id)

    def _take_next(self, session: Session, item: Claimed, now: datetime) -> None:
        """In the write that finished `item`: claim its lane's next row if it is due, for the
        same sender to deliver next."""
        params = {"lane": item.lane, "owner": self.owner, "lease": now + self.lease, "now": now}
        row = session.execute(_CLAIM_LANE_HEAD[self.db.is_sqlite], params).first()
        if row is not None:
            with self._lock:
                self._continued[item.id] = Claimed(*row)

    def _deliver_lane(self, item: Claimed, wait_turn: bool = False) -> int:
        """Deliver `item`, then each row of its lane that the write finishing the one before
        claimed; returns the rows finished. `wait_turn`: acks in flight go first, each time."""
        finished = 0
        current: Claimed | None = item
        while current is not None:
            self._hold([current.id])
            try:
                if wait_turn:
                    ACKS.wait_turn()
                finished += self._deliver(current)
            finally:
                self._release([current.id])
                # If delivery raised, the next row is dropped here: its claim lapses and any
                # deliverer takes it again.
                with self._lock:
                    following = self._continued.pop(current.id, None)
            current = following
        return finished

    def _hold(self, ids: Iterable[int]) -> None:
        with self._lock:
            self._held.update(ids)

    def _release(self, ids: Iterable[int]) -> None:
        with self._lock:
            self._held.difference_update(ids)

    def renew_held(self) -> int:
        """Push this process's claims on the rows it is still working on one lease further
        (one UPDATE for all), so a slow Slack call never lets another process take them."""
        with self._lock:
            ids = sorted(self._held)
        if not ids:
            return 0
        with self.db.transaction() as session:
            renewed = session.execute(
                _RENEW_HELD,
                {"ids": ids, "owner": self.owner, "lease": self.clock.now() + self.lease},
            )
        return int(renewed.rowcount)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ delivering

    def _deliver(self, item: Claimed) -> int:
        try:
            if item.kind == "notice":
                self._expand(item)
            else:
                self._send(item)
        except Defer:
            self._again(item, "deferred", 1.0, uncertain=False)
            return 0
        except Transient as exc:
            self._slack_failed(exc.error)
            wait = exc.retry_after if exc.retry_after is not None else self._backoff(item.attempts)
            self._again(item, exc.error, wait, uncertain=exc.uncertain or item.uncertain)
            return 0
        except Refused as exc:
            self._refused(item, str(exc))
            return 1
        except Exception as exc:
            if is_database_error(exc):
                self.db.outage.failed("outbox", exc)
            else:
                log.exception("event=outbox_item_failed id=%s lane=%s", item.id, item.lane)
            self._again(item, type(exc).__name__, self._backoff(item.attempts), uncertain=True)
            return 0
        return 1

    def _expand(self, item: Claimed) -> None:
        """A notice becomes the messages it causes, each its own row, in one write. Notices of
        a coalesced kind right behind it in its lane are rendered with it and marked done in
        that write (while this one is claimed, nothing behind it in its lane can be)."""
        assert item.action is not None
        absorbed: list[tuple[int, Mapping[str, Any]]] = []
        if item.action in COALESCED:
            with self.db.read() as session:
                for row_id, kind, action, body in session.execute(
                    _FOLLOWING, {"lane": item.lane, "id": item.id}
                ):
                    if kind != "notice" or action != item.action:
                        break
                    absorbed.append((int(row_id), json.loads(body)))
        notice = Notice(
            item.id,
            item.request_id,
            item.version or 0,
            item.action,
            json.loads(item.body),
            tuple(facts for _, facts in absorbed),
        )
        try:
            calls = self.renderer.expand(notice)
        except SlackApiError as exc:
            raise _classify(exc) from exc
        except (OSError, TimeoutError) as exc:
            raise Transient(f"unreachable: {type(exc).__name__}", uncertain=False) from exc
        now = self.clock.now()
        with self.db.transaction() as session:
            done = session.execute(
                _DONE, {"id": item.id, "owner": self.owner, "now": now, "channel": None, "ts": None}
            )
            if done.rowcount != 1:  # type: ignore[attr-defined]
                return  # the lease ran out and another process has it
            if absorbed:
                session.execute(_ABSORB, {"ids": [i for i, _ in absorbed], "now": now})
            for step, call in enumerate(calls, start=1):
                row = self._row(item.lane, call, now, key=f"n{item.id}.{step}")
                row.parent, row.step = item.id, step
                session.add(row)
            session.flush()
            self._take_next(session, item, now)

    def _send(self, item: Claimed) -> None:
        call = OutCall.from_json(item.body)
        if call.late:
            drawn = self._draw_late(item, call)
            if drawn is None:  # nothing to say after all
                now = self.clock.now()
                held = {"id": item.id, "owner": self.owner, "now": now}
                with self.db.transaction() as session:
                    done = session.execute(_DONE, {**held, "channel": None, "ts": None})
                    if done.rowcount == 1:  # type: ignore[attr-defined]
                        self._take_next(session, item, now)
                return
            call = drawn
        self._respect_rate_limit(call.method)
        channel: str | None = None
        ts: str | None = None
        if call.method == POST:
            found = self._already_posted(item, call) if item.uncertain else None
            if found is not None:
                channel, ts = found
            else:
                args = dict(call.args)
                args["metadata"] = {
                    "event_type": METADATA_EVENT,
                    "event_payload": {"key": item.key or f"o{item.id}"},
                }
                answer = self._call(lambda: self.client.chat_postMessage(**args))
                channel, ts = str(answer["channel"]), str(answer["ts"])
        elif call.method == UPDATE:
            self._call(lambda: self.client.chat_update(**call.args))
        elif call.method == HOME:
            user_id = str(call.args["user_id"])
            view = self.renderer.draw_home(user_id)
            if view is not None:
                self._call(lambda: self.client.views_publish(user_id=user_id, view=view))
        else:
            raise Refused(f"unknown method {call.method}")
        self._slack_answered()
        self._record_sent(item, call, channel, ts)

    def _draw_late(self, item: Claimed, call: OutCall) -> OutCall | None:
        """A late call drawn now, from the calls before it in its group (all done or refused:
        its lane sends them in order)."""
        rows: Sequence[Row[tuple[str, str, str | None]]] = ()
        if item.parent is not None:
            with self.db.read() as session:
                rows = session.execute(
                    select(OutboxItem.body, OutboxItem.state, OutboxItem.last_error)
                    .where(OutboxItem.parent == item.parent, OutboxItem.step < item.step)
                    .where(OutboxItem.kind == "call")
                    .order_by(OutboxItem.step)
                ).all()
        before = [
            Delivered(OutCall.from_json(body), state == OutboxState.DONE.value, error)
            for body, state, error in rows
        ]
        try:
            return self.renderer.draw_late(call, before)
        except SlackApiError as exc:
            raise _classify(exc) from exc

    def _record_sent(
        self, item: Claimed, call: OutCall, channel: str | None, ts: str | None
    ) -> None:
        """Sent: marked done in the same write that records where it went."""
        now = self.clock.now()
        with self.db.transaction() as session:
            done = session.execute(
                _DONE,
                {"id": item.id, "owner": self.owner, "now": now, "channel": channel, "ts": ts},
            )
            sent = done.rowcount == 1  # type: ignore[attr-defined]
            if sent and call.remember and channel and ts:
                request_id, purpose = call.remember
                if call.as_addressed:
                    channel = str(call.args["channel"])
                session.add(
                    RequestMessage(request_id=request_id, channel=channel, ts=ts, purpose=purpose)
                )
            if sent:
                self._take_next(session, item, now)

    def _already_posted(self, item: Claimed, call: OutCall) -> tuple[str, str] | None:
        """A try may have reached Slack: look for this post's key in the conversation."""
        key = item.key or f"o{item.id}"
        channel = str(call.args["channel"])
        if channel.startswith(("U", "W")):  # a post to a person lands in the DM with them
            opened = self._call(lambda: self.client.conversations_open(users=channel))
            channel = str(opened["channel"]["id"])
        thread = call.args.get("thread_ts")
        if thread:
            answer = self._call(
                lambda: self.client.conversations_replies(
                    channel=channel,
                    ts=str(thread),
                    limit=MAX_HISTORY,
                    include_all_metadata=True,
                )
            )
        else:
            answer = self._call(
                lambda: self.client.conversations_history(
                    channel=channel, limit=MAX_HISTORY, include_all_metadata=True
                )
            )
        for message in answer.get("messages") or []:
            payload = (message.get("metadata") or {}).get("event_payload") or {}
            if payload.get("key") == key:
                return channel, str(message["ts"])
        return None

    def _call(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except SlackApiError as exc:
            raise _classify(exc) from exc
        except (OSError, TimeoutError) as exc:  # refused, reset, timed out: it may have landed
            raise Transient(f"unreachable: {type(exc).__name__}", uncertain=True) from exc
        except Exception as exc:
            if type(exc).__module__.startswith(("http", "urllib")):
                raise Transient(f"unreachable: {type(exc).__name__}", uncertain=True) from exc
            raise

    def _respect_rate_limit(self, method: str) -> None:
        until = self._paused_until.get(method)
        if until is not None and self.clock.now() < until:
            wait = (until - self.clock.now()).total_seconds()
            raise Transient("ratelimited (waiting)", retry_after=wait, uncertain=False)

    # ------------------------------------------------------------------ outcomes

    def _again(self, item: Claimed, error: str, wait: float, *, uncertain: bool) -> None:
        now = self.clock.now()
        if error.startswith("ratelimited") and wait > 0:
            method = _method_of(item)
            if method:
                self._paused_until[method] = now + timedelta(seconds=wait)
        with self.db.transaction() as session:
            session.execute(
                _AGAIN,
                {
                    "id": item.id,
                    "owner": self.owner,
                    "due": now + timedelta(seconds=wait),
                    "uncertain": uncertain,
                    "error": error[:200],
                },
            )

    def _refused(self, item: Claimed, error: str) -> None:
        """Refused for good: logged, marked failed, and what was to go instead recorded (right
        after it in its lane) in the same write."""
        call = OutCall.from_json(item.body) if item.kind == "call" else None
        log.error(
            "event=message_failed about=%s channel=%s error=%s",
            call.about if call else item.action,
            call.args.get("channel") if call else None,
            error[:100],
        )
        now = self.clock.now()
        with self.db.transaction() as session:
            failed = session.execute(
                _FAILED, {"id": item.id, "owner": self.owner, "now": now, "error": error[:200]}
            )
            if failed.rowcount == 1 and call is not None:  # type: ignore[attr-defined]
                for n, other in enumerate(call.instead, start=1):
                    row = self._row(item.lane, other, now, key=f"{item.key or item.id}.i{n}")
                    # Right after the refused row in its lane (steps between calls are spaced).
                    row.parent = item.parent or item.id
                    row.step = item.step * 100 + n if item.parent else n
                    session.add(row)

    @staticmethod
    def _backoff(attempts: int) -> float:
        """1 s, 2 s, 4 s… up to BACKOFF_CAP, with jitter so lanes do not retry in step."""
        ceiling = min(BACKOFF_CAP, BACKOFF_FIRST * float(2 ** max(0, attempts - 1)))
        return ceiling * (0.5 + random.random() / 2)

    def _slack_failed(self, error: str) -> None:
        with self._lock:
            self._slack_failures += 1
            first = self._slack_down_since is None
            if first:
                self._slack_down_since = self.clock.now()
        if first:
            log.error("event=slack_unreachable error=%s what=messages wait in the outbox", error)

    def _slack_answered(self) -> None:
        if self._slack_down_since is None:
            return
        with self._lock:
            since, failures = self._slack_down_since, self._slack_failures
            self._slack_down_since, self._slack_failures = None, 0
        if since is None:
            return
        lasted = (self.clock.now() - since).total_seconds()
        log.warning("event=slack_back down_seconds=%.1f failed_calls=%d", lasted, failures)
        # Slack answers again: what waits for its back-off goes now, not in up to 10 s.
        with self.db.transaction() as session:
            session.execute(_SOON, {"now": self.clock.now()})

    # ------------------------------------------------------------------ backlog

    def backlog(self) -> tuple[int, datetime | None]:
        """Rows not yet sent, and when the oldest was recorded."""
        with self.db.read() as session:
            count, oldest = session.execute(
                select(func.count(), func.min(OutboxItem.created_at)).where(
                    OutboxItem.state.in_([OutboxState.NEW.value, OutboxState.WORKING.value])
                )
            ).one()
        return int(count or 0), oldest

    def _watch_backlog(self) -> None:
        """Past the threshold: log it once. Once delivered: tell security how long messages
        were delayed (one message, whichever process sees it first)."""
        count, oldest = self.backlog()
        now = self.clock.now()
        if oldest is not None and now - oldest >= self.alert_after:
            if self._backlog_since is None or oldest < self._backlog_since:
                first = self._backlog_since is None
                self._backlog_since = oldest if first else self._backlog_since
                if first:
                    log.error(
                        "event=outbox_backlog count=%d oldest_seconds=%.0f what=Slack messages "
                        "are delayed; they are kept and sent when Slack answers",
                        count,
                        (now - oldest).total_seconds(),
                    )
            return
        if self._backlog_since is None or count:
            return
        since, self._backlog_since = self._backlog_since, None
        delayed = (now - since).total_seconds()
        log.warning("event=outbox_backlog_cleared delayed_seconds=%.0f", delayed)
        if self.security_channel is not None:
            self.enqueue(
                "security",
                [
                    OutCall(
                        POST,
                        {
                            "channel": self.security_channel(),
                            "text": f"📨 Slack messages from WardKey were delayed by up to "
                            f"{_minutes(delayed)} (Slack did not take them). All have now been "
                            "delivered; grants and revokes went ahead on time meanwhile.",
                        },
                    )
                ],
                key=f"delayed:{since.isoformat()}"[:100],
            )

    # ------------------------------------------------------------------ helpers

    def _row(self, lane: str, call: OutCall, now: datetime, key: str | None = None) -> OutboxItem:
        return call_row(lane, call, now, key)

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._started or self._closing:
                return
            self._started = True
            self._threads = [
                threading.Thread(target=self._run, name="wardkey-outbox", daemon=True),
                threading.Thread(target=self._heartbeat, name="wardkey-outbox-lease", daemon=True),
            ]
        for thread in self._threads:
            thread.start()

    def close(self, wait_seconds: float = 10.0) -> None:
        """At shutdown: the dispatcher stops claiming, the messages being sent finish, and the
        heartbeat stops. What is still waiting stays in the table for another process."""
        with self._wake:
            self._closing = True
            self._wake.notify_all()
        for thread in self._threads:
            thread.join(wait_seconds)

    def _run(self) -> None:
        """The dispatcher: on a kick (or each second) claim as many lane heads as there are
        free senders and hand each to one, until nothing is due. Different lanes' messages go
        out at once; one lane's stay in order, as only its first unfinished row can be
        claimed (a finished row wakes the dispatcher to claim its lane's next)."""
        senders = ThreadPoolExecutor(self.threads, thread_name_prefix="wardkey-outbox-send")
        busy = 0
        seen = 0

        def send(item: Claimed) -> None:
            nonlocal busy
            try:
                self._deliver_lane(item, wait_turn=True)
            except Exception as exc:
                self._log_failure("outbox_delivery_failed", exc)
            finally:
                self._release([item.id])
                with self._wake:
                    busy -= 1
                    self._kicks += 1  # its lane's next row may be due
                    self._wake.notify_all()

        while True:
            with self._wake:
                while not self._closing and (
                    busy >= self.threads or (self._kicks == seen and not busy)
                ):
                    if not self._wake.wait(timeout=1.0):
                        break  # each second anyway: rows whose back-off is over
                if self._closing:
                    break
                seen = self._kicks
                free = self.threads - busy
            if free <= 0:
                continue
            began = self.db.outage.call_began()
            try:
                claimed = self._claim(free)
                self.db.outage.answered(began)
            except Exception as exc:
                self._log_failure("outbox_delivery_failed", exc)
                continue
            if not claimed:
                with self._wake:  # nothing due now: wait for a kick or a sender to finish
                    if self._kicks == seen:
                        self._wake.wait(timeout=1.0)
                continue
            self._hold(item.id for item in claimed)
            with self._wake:
                busy += len(claimed)
            try:
                for item in claimed:
                    senders.submit(send, item)
            except RuntimeError:  # the interpreter is exiting: claims not sent lapse, retaken
                break
        senders.shutdown(wait=True)

    def _heartbeat(self) -> None:
        every = max(self.lease.total_seconds() / 3, 0.05)
        while True:
            with self._wake:
                if self._wake.wait_for(lambda: self._closing, timeout=every):
                    return
            try:
                self.renew_held()
            except Exception as exc:
                self._log_failure("outbox_lease_renewal_failed", exc)

    def _log_failure(self, event: str, exc: Exception) -> None:
        if is_database_error(exc):
            self.db.outage.failed("outbox", exc)
        else:
            log.exception("event=%s", event)


def _classify(exc: SlackApiError) -> Exception:
    response = exc.response
    status = getattr(response, "status_code", 200)
    error = str(response.get("error") or f"http_{status}") if response is not None else "unknown"
    if status == 429 or error == "ratelimited":
        headers = getattr(response, "headers", {}) or {}
        retry = headers.get("Retry-After") or headers.get("retry-after") or "1"
        try:
            wait = float(retry[0] if isinstance(retry, list) else retry)
        except ValueError:
            wait = 1.0
        return Transient("ratelimited", retry_after=wait, uncertain=False)
    if status >= 500 or error in TRANSIENT_ERRORS:
        return Transient(f"{error} (HTTP {status})", uncertain=True)
    return Refused(error)


def _method_of(item: Claimed) -> str | None:
    if item.kind != "call":
        return None
    try:
        return str(json.loads(item.body)["method"])
    except (ValueError, KeyError):
        return None


def _minutes(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min"
