"""The daily digest for the managers' channel: what the last 24 hours of elevation looked like.

Sent once a day at the policy's `digest_at` (local time), by whichever worker gets there first:
the day's turn is taken by inserting a row keyed on it (a once-per-period turn, as
`app.lifecycle.periods`), in the same transaction as its audit event.
A worker that was down at that time sends it when it comes back.

`DigestService` reads through the request core it is given (`AccessService`): its database,
clock and worker name, and the policy in force (a policy reload replaces the core's).
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app import audit
from app.access import FeatureService
from app.audit.chain import hashed_time
from app.lifecycle.snapshots import RequestSnapshot, snapshots
from app.lifecycle.transitions import announce
from app.policy import rules
from app.policy.model import BREAK_GLASS_PATH
from app.policy.people import Person
from app.store.models import AccessRequest, AuditEvent, RequestState, Review, ReviewState, SweepRun

DIGEST_JOB = "digest"
_DECIDED = ("request.approved", "request.denied")


@dataclass(frozen=True)
class PathLatency:
    path: str
    decisions: int
    p50: timedelta
    p95: timedelta


@dataclass(frozen=True)
class Elevation:
    view: RequestSnapshot
    held: timedelta


@dataclass(frozen=True)
class Digest:
    day: date
    since: datetime
    until: datetime
    break_glass: tuple[Elevation, ...]
    overdue_reviews: tuple[RequestSnapshot, ...]
    latency: tuple[PathLatency, ...]
    revoke_failures: tuple[RequestSnapshot, ...]
    failed_revoke_attempts: int
    longest: tuple[Elevation, ...]
    most_frequent: tuple[tuple[str, int], ...]
    granted: int
    # Break-glass budgets used in the window, per person and per limited group, and the flags
    # its uses raised (app/breakglass): see BreakGlassDay.
    break_glass_day: BreakGlassDay | None = None


@dataclass(frozen=True)
class BudgetUse:
    """One person's (or limited group's) break-glass in the window, against its daily limits."""

    who: str  # a person's key or a group's name
    slack_id: str | None
    group: bool
    uses: int
    held: timedelta
    uses_limit: int | None
    time_limit: timedelta | None


@dataclass(frozen=True)
class RaisedFlag:
    request_id: int
    requester: str
    slack_id: str | None
    code: str
    words: str


@dataclass(frozen=True)
class BreakGlassDay:
    budgets: tuple[BudgetUse, ...]
    flags: tuple[RaisedFlag, ...]
    held: int  # uses that needed a second person
    confirmed: int  # of those, confirmed (so granted)


def _nearest_rank(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


class DigestService(FeatureService):
    """The daily digest's use cases."""

    def digest_due(self) -> Digest | None:
        """Today's digest if its time has come and no worker has sent it yet (this worker takes
        the day's turn)."""
        at = self.policy.digest_at
        if at is None:
            return None
        now = self.clock.now()
        local = now.astimezone(self.policy.zone)
        scheduled = datetime.combine(local.date(), at, tzinfo=self.policy.zone)
        if local < scheduled:
            return None
        period = local.date().isoformat()
        with self.db.read() as session:  # cheap look first: after 08:00, every tick asks
            if session.get(SweepRun, (DIGEST_JOB, period)) is not None:
                return None
        since = scheduled - timedelta(days=1)
        digest = self.digest(since, now, local.date())
        try:
            with self.db.transaction() as session:
                announce(
                    session,
                    "digest",
                    "digest.sent",
                    {"since": since.isoformat(), "until": now.isoformat(), "day": period},
                    at=now,
                )
                session.add(
                    SweepRun(
                        job=DIGEST_JOB,
                        period=period,
                        done_at=now,
                        done_by=self.core.worker,
                    )
                )
                session.flush()
                audit.append(
                    session,
                    at=now,
                    action="digest.sent",
                    actor="wardkey",
                    data={
                        "day": local.date(),
                        "since": digest.since,
                        "break_glass_uses": len(digest.break_glass),
                        "overdue_reviews": len(digest.overdue_reviews),
                        "revoke_failures": len(digest.revoke_failures),
                        "granted": digest.granted,
                        **_break_glass_counts(digest.break_glass_day),
                    },
                )
        except IntegrityError:  # another worker sent today's
            return None
        return digest

    def digest(self, since: datetime, until: datetime, day: date) -> Digest:
        """What happened between `since` and `until`, and what is outstanding now."""
        now = self.clock.now()
        with self.db.read() as session:
            granted = list(
                session.scalars(
                    select(AccessRequest).where(
                        AccessRequest.granted_at >= since, AccessRequest.granted_at < until
                    )
                )
            )
            overdue = list(
                session.scalars(
                    select(AccessRequest)
                    .join(Review, Review.request_id == AccessRequest.id)
                    .where(Review.state == ReviewState.OPEN.value, Review.due_at < now)
                    .order_by(Review.due_at)
                )
            )
            failing = list(
                session.scalars(
                    select(AccessRequest)
                    .where(AccessRequest.state == RequestState.REVOKE_FAILED.value)
                    .order_by(AccessRequest.id)
                )
            )
            events = session.execute(
                select(AuditEvent.action, AuditEvent.body).where(
                    AuditEvent.at >= since,
                    AuditEvent.at < until,
                    AuditEvent.action.in_([*_DECIDED, "revoke.failed"]),
                )
            ).all()
            granted_views = snapshots(session, granted)
            overdue_views = snapshots(session, overdue)
            failing_views = snapshots(session, failing)

        waits: dict[str, list[float]] = {}
        failed_attempts = 0
        for action, body in events:
            # The indexed column finds the day's events; the hashed time decides, so an edited
            # column cannot slip an event into the count (`audit verify` names such an edit).
            at = hashed_time(body)
            if at is None or not since <= at < until:
                continue
            data: dict[str, Any] = json.loads(body).get("data") or {}
            if action == "revoke.failed":
                failed_attempts += 1
            elif "waited_seconds" in data:
                waits.setdefault(str(data.get("path")), []).append(float(data["waited_seconds"]))
        latency = tuple(
            PathLatency(
                path=path,
                decisions=len(values),
                p50=timedelta(seconds=statistics.median(values)),
                p95=timedelta(seconds=_nearest_rank(sorted(values), 0.95)),
            )
            for path, values in sorted(waits.items())
        )
        elevations = [
            Elevation(v, (v.ended_at or now) - v.granted_at)
            for v in granted_views
            if v.granted_at is not None
        ]
        frequent = Counter(v.requester for v in granted_views).most_common(3)
        return Digest(
            day=day,
            since=since,
            until=until,
            break_glass=tuple(e for e in elevations if e.view.path == BREAK_GLASS_PATH),
            overdue_reviews=tuple(overdue_views),
            latency=latency,
            revoke_failures=tuple(failing_views),
            failed_revoke_attempts=failed_attempts,
            longest=tuple(sorted(elevations, key=lambda e: e.held, reverse=True)[:3]),
            most_frequent=tuple(frequent),
            granted=len(granted_views),
            break_glass_day=self._break_glass_day(
                [e for e in elevations if e.view.path == BREAK_GLASS_PATH], since, until
            ),
        )

    def _break_glass_day(
        self, uses: list[Elevation], since: datetime, until: datetime
    ) -> BreakGlassDay:
        """Budgets used by each person (and limited group) who broke glass in the window,
        and the flags, holds and confirmations its uses' events recorded."""
        spec = self.policy.paths.get(BREAK_GLASS_PATH)
        limits = spec.limits if spec is not None else None
        mine = limits.per_person if limits is not None else None
        people: dict[str, list[Elevation]] = {}
        for e in uses:
            people.setdefault(e.view.requester, []).append(e)
        budgets = [
            BudgetUse(
                key,
                used[0].view.requester_slack_id,
                False,
                len(used),
                sum((e.held for e in used), timedelta(0)),
                mine.uses_per_day if mine else None,
                mine.time_per_day if mine else None,
            )
            for key, used in sorted(people.items())
        ]
        for group, group_limits in (limits.per_group if limits is not None else {}).items():
            members = rules.group_members(self.policy, group)
            theirs = [
                e
                for e in uses
                if rules.is_member(
                    self.policy,
                    Person(slack_user_id=e.view.requester_slack_id, email=e.view.requester_email),
                    members,
                )
            ]
            if theirs:
                budgets.append(
                    BudgetUse(
                        group,
                        None,
                        True,
                        len(theirs),
                        sum((e.held for e in theirs), timedelta(0)),
                        group_limits.uses_per_day,
                        group_limits.time_per_day,
                    )
                )
        with self.db.read() as session:
            events = session.execute(
                select(
                    AuditEvent.request_id,
                    AuditEvent.action,
                    AuditEvent.body,
                    AccessRequest.requester,
                    AccessRequest.requester_slack_id,
                )
                .join(AccessRequest, AccessRequest.id == AuditEvent.request_id)
                .where(
                    AuditEvent.at >= since,
                    AuditEvent.at < until,
                    AuditEvent.action.in_(["breakglass.held", "breakglass.started"]),
                )
                .order_by(AuditEvent.seq)
            ).all()
        flags: list[RaisedFlag] = []
        held = confirmed = 0
        for rid, action, body, requester, slack_id in events:
            at = hashed_time(body)
            if at is None or not since <= at < until or rid is None:
                continue
            data: dict[str, Any] = json.loads(body).get("data") or {}
            if action == "breakglass.held":
                held += 1
                continue
            confirmed += 1 if data.get("confirmed_by") else 0
            flags += [
                RaisedFlag(rid, requester, slack_id, str(f["code"]), str(f["words"]))
                for f in data.get("flags") or []
            ]
        return BreakGlassDay(tuple(budgets), tuple(flags), held, confirmed)


def _break_glass_counts(day: BreakGlassDay | None) -> dict[str, int]:
    if day is None:
        return {}
    return {
        "break_glass_flags": len(day.flags),
        "break_glass_held": day.held,
        "break_glass_confirmed": day.confirmed,
    }
