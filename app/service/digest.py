"""The daily digest for the managers' channel: what the last 24 hours of elevation looked like.

Sent once a day at the policy's `digest_at` (local time), by whichever worker gets there first:
the day is claimed by inserting a row keyed on it, in the same transaction as its audit event.
A worker that was down at that time sends it when it comes back.
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
from app.audit.chain import hashed_time
from app.lifecycle.transitions import announce
from app.policy.model import BREAK_GLASS_PATH
from app.service.base import S, ServiceBase
from app.service.views import RequestView
from app.store.models import AccessRequest, AuditEvent, Review, ReviewState, SweepRun

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
    view: RequestView
    held: timedelta


@dataclass(frozen=True)
class Digest:
    day: date
    since: datetime
    until: datetime
    break_glass: tuple[Elevation, ...]
    overdue_reviews: tuple[RequestView, ...]
    latency: tuple[PathLatency, ...]
    revoke_failures: tuple[RequestView, ...]
    failed_revoke_attempts: int
    longest: tuple[Elevation, ...]
    most_frequent: tuple[tuple[str, int], ...]
    granted: int


def _nearest_rank(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


class DigestCases(ServiceBase):
    def digest_due(self) -> Digest | None:
        """Today's digest if its time has come and no worker has sent it yet; claims the day."""
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
                        done_by=self.worker,
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
                    .where(AccessRequest.state == S.REVOKE_FAILED.value)
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
            granted_views = self._views(session, granted)
            overdue_views = self._views(session, overdue)
            failing_views = self._views(session, failing)

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
        )
