"""`/metrics` in Prometheus text format, read from the database at each scrape.

The database is the source of truth shared by every worker, so any one `wardkey serve` gives
the whole picture, and a restart loses nothing. Only counts go out: no names, no reasons.
The one exception is the on-call sources (`wardkey_oncall_source_*`): each process reads them
itself, so these say how this process last read them.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any, cast

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import case, func, literal, select
from sqlalchemy.sql.elements import ColumnElement

from app.clock import Clock, SystemClock
from app.groups import groups_now
from app.oncall import sources_now
from app.store.db import Database
from app.store.models import (
    AccessRequest,
    AuditEvent,
    InboxState,
    Lockdown,
    OutboxItem,
    OutboxState,
    RequestState,
    Review,
    ReviewState,
    SeenRequest,
    StandingAccess,
    TicketNote,
)

# Approval latency buckets, in seconds: clinical approvals should land in the first few.
LATENCY_BUCKETS = (30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 4 * 3600.0, 24 * 3600.0)
BREAK_GLASS_PATH = "breakglass"


def _seconds_between(db: Database, start: Any, end: Any) -> ColumnElement[float]:
    if db.is_sqlite:
        return (func.julianday(end) - func.julianday(start)) * literal(86400.0)
    return cast(ColumnElement[float], func.extract("epoch", end - start))


class WardKeyCollector(Collector):
    def __init__(self, db: Database, clock: Clock | None = None) -> None:
        self.db = db
        self.clock = clock or SystemClock()

    def collect(self) -> Iterator[Metric]:
        now = self.clock.now()
        with self.db.read() as session:
            by_state = session.execute(
                select(AccessRequest.path, AccessRequest.state, func.count()).group_by(
                    AccessRequest.path, AccessRequest.state
                )
            ).all()
            active = session.execute(
                select(AccessRequest.target, AccessRequest.path, func.count())
                .where(AccessRequest.state == RequestState.ACTIVE.value)
                .group_by(AccessRequest.target, AccessRequest.path)
            ).all()
            waited = _seconds_between(self.db, AccessRequest.created_at, AccessRequest.decided_at)
            latency = session.execute(
                select(
                    AccessRequest.path,
                    func.count(),
                    func.coalesce(func.sum(waited), 0.0),
                    *[func.sum(case((waited <= b, 1), else_=0)) for b in LATENCY_BUCKETS],
                )
                .where(
                    AccessRequest.decided_at.is_not(None),
                    AccessRequest.path != BREAK_GLASS_PATH,
                )
                .group_by(AccessRequest.path)
            ).all()
            failed_attempts = session.scalar(
                select(func.count()).where(AuditEvent.action == "revoke.failed")
            )
            overdue = session.scalar(
                select(func.count()).where(
                    Review.state == ReviewState.OPEN.value, Review.due_at < now
                )
            )
            standing = session.execute(
                select(StandingAccess.target, func.count())
                .where(StandingAccess.cleared_at.is_(None))
                .group_by(StandingAccess.target)
            ).all()
            inbox_oldest = session.scalar(
                select(func.min(SeenRequest.received_at)).where(
                    SeenRequest.state.in_([InboxState.NEW.value, InboxState.WORKING.value])
                )
            )
            waiting = [OutboxState.NEW.value, OutboxState.WORKING.value]
            outbox_count, outbox_oldest = session.execute(
                select(func.count(), func.min(OutboxItem.created_at)).where(
                    OutboxItem.state.in_(waiting)
                )
            ).one()
            outbox_failed = session.scalar(
                select(func.count()).where(OutboxItem.state == OutboxState.FAILED.value)
            )

        requests = GaugeMetricFamily(
            "wardkey_requests", "Requests by access path and state.", labels=["path", "state"]
        )
        failing = 0
        for path, state, count in by_state:
            requests.add_metric([path, state], count)
            if state == RequestState.REVOKE_FAILED.value:
                failing += count
        yield requests

        grants = GaugeMetricFamily(
            "wardkey_active_grants", "Access active now.", labels=["target", "path"]
        )
        for target, path, count in active:
            grants.add_metric([target, path], count)
        yield grants

        histogram = HistogramMetricFamily(
            "wardkey_approval_latency_seconds",
            "Time from request to decision (approve or deny), per path.",
            labels=["path"],
        )
        for path, count, total, *cumulative in latency:
            buckets = [
                (_le(b), float(c or 0)) for b, c in zip(LATENCY_BUCKETS, cumulative, strict=True)
            ]
            buckets.append(("+Inf", float(count)))
            histogram.add_metric([path], buckets, sum_value=float(total or 0.0))
        yield histogram

        yield GaugeMetricFamily(
            "wardkey_revoke_failures",
            "Grants whose revoke failed and is still being retried (access may remain).",
            value=failing,
        )
        yield CounterMetricFamily(
            "wardkey_revoke_failed_attempts",
            "Revoke attempts that failed, ever.",
            value=int(failed_attempts or 0),
        )
        yield GaugeMetricFamily(
            "wardkey_overdue_reviews",
            "Break-glass reviews past their deadline and still undecided.",
            value=int(overdue or 0),
        )
        standing_gauge = GaugeMetricFamily(
            "wardkey_standing_access",
            "Access found on targets that no grant covers (last hourly look).",
            labels=["target"],
        )
        for target, count in standing:
            standing_gauge.add_metric([target], count)
        yield standing_gauge

        yield GaugeMetricFamily(
            "wardkey_inbox_oldest_seconds",
            "Age of the oldest acknowledged Slack request whose work is not done (0: none).",
            value=_age(now, inbox_oldest),
        )
        yield GaugeMetricFamily(
            "wardkey_outbox_backlog",
            "Slack messages and notices recorded and not yet sent.",
            value=int(outbox_count or 0),
        )
        yield GaugeMetricFamily(
            "wardkey_outbox_oldest_seconds",
            "Age of the oldest Slack message not yet sent (0: none): how late messages are.",
            value=_age(now, outbox_oldest),
        )
        yield CounterMetricFamily(
            "wardkey_outbox_refused",
            "Slack messages Slack refused for good (archived channel, removed user), ever.",
            value=int(outbox_failed or 0),
        )
        yield from _directory_groups(now)
        yield from _lockdowns(self.db, now)
        yield from _oncall_sources(now)
        yield from _ticket_notes(self.db, now)


def _lockdowns(db: Database, now: datetime) -> Iterator[Metric]:
    """Targets locked down now (app/lockdown), and for how long: a lockdown left in force
    after the incident keeps everyone off the target."""
    with db.read() as session:
        rows = session.execute(
            select(Lockdown.target, Lockdown.started_at).where(Lockdown.lifted_at.is_(None))
        ).all()
    seconds = GaugeMetricFamily(
        "wardkey_lockdown_seconds",
        "Targets locked down now (/jit lockdown), by how long they have been.",
        labels=["target"],
    )
    for target, started_at in rows:
        seconds.add_metric([target], _age(now, started_at))
    yield seconds


def _ticket_notes(db: Database, now: datetime) -> Iterator[Metric]:
    """Notes WardKey owes tickets (app/tickets): how many, and how late the oldest is."""
    with db.read() as session:
        waiting, oldest = session.execute(
            select(func.count(TicketNote.id), func.min(TicketNote.created_at)).where(
                TicketNote.delivered_at.is_(None)
            )
        ).one()
    yield GaugeMetricFamily(
        "wardkey_ticket_notes_waiting",
        "Work notes and comments for tickets recorded and not yet taken by the ticket system.",
        value=int(waiting or 0),
    )
    yield GaugeMetricFamily(
        "wardkey_ticket_notes_oldest_seconds",
        "Age of the oldest ticket note not yet taken (0: none): how late the notes are.",
        value=_age(now, oldest),
    )


def _oncall_sources(now: datetime) -> Iterator[Metric]:
    """The rotas read from a source, as this process last read them."""
    labels = ["rota", "kind"]
    up = GaugeMetricFamily(
        "wardkey_oncall_source_up",
        "1 when this process's last read of the rota's source succeeded, else 0.",
        labels=labels,
    )
    stale = GaugeMetricFamily(
        "wardkey_oncall_source_stale",
        "1 when the rota names nobody: its source has not been read within stale_after.",
        labels=labels,
    )
    age = GaugeMetricFamily(
        "wardkey_oncall_source_read_age_seconds",
        "Seconds since the rota's source was last read successfully (-1: never).",
        labels=labels,
    )
    for status in sources_now():
        at = [status.rota, status.kind]
        up.add_metric(at, 1.0 if status.readable else 0.0)
        stale.add_metric(at, 1.0 if status.stale else 0.0)
        age.add_metric(at, -1.0 if status.read_at is None else _age(now, status.read_at))
    yield up
    yield stale
    yield age


def _directory_groups(now: datetime) -> Iterator[Metric]:
    """The groups read from the directory, as this process last read them (each process
    reads them itself)."""
    labels = ["group", "kind"]
    up = GaugeMetricFamily(
        "wardkey_directory_group_up",
        "1 when this process's last read of the directory group succeeded, else 0.",
        labels=labels,
    )
    stale = GaugeMetricFamily(
        "wardkey_directory_group_stale",
        "1 when the group has nobody in it because it was not read within stale_after.",
        labels=labels,
    )
    age = GaugeMetricFamily(
        "wardkey_directory_group_read_age_seconds",
        "Seconds since the directory group was last read successfully (-1: never).",
        labels=labels,
    )
    people = GaugeMetricFamily(
        "wardkey_directory_group_members",
        "Enabled people in the directory group at its last good read.",
        labels=labels,
    )
    for status in groups_now():
        at = [status.group, status.kind]
        up.add_metric(at, 1.0 if status.up else 0.0)
        stale.add_metric(at, 0.0 if status.fresh else 1.0)
        age.add_metric(at, -1.0 if status.read_at is None else _age(now, status.read_at))
        people.add_metric(at, float(status.people))
    yield from (up, stale, age, people)


def _age(now: datetime, since: datetime | None) -> float:
    return max(0.0, (now - since).total_seconds()) if since is not None else 0.0


def _le(bound: float) -> str:
    return f"{bound:g}"


def metrics_text(db: Database, clock: Clock | None = None) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WardKeyCollector(db, clock))
    return generate_latest(registry)
