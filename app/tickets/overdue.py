"""Notes WardKey owes a ticket system for too long: the security channel is told once when a
system has not taken a note for OVERDUE (the tickets lack WardKey's record of who had access),
and once when none is that late any more. The notes themselves are retried for ever
(app/tickets/service.py); this only makes a ticket system that keeps refusing them seen.

Every process that runs the sweeps looks; what security was last told of a system, by any
process, is in the outbox, and the alerts are numbered per system, so two processes that find
the same change at once write the same outbox key, which is kept once.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

from sqlalchemy import func, select

from app.access import AccessService
from app.blockkit import escape
from app.outbox_records import POST, OutCall, last_alert
from app.store.models import TicketNote
from app.wording import clock_time, plural

log = logging.getLogger(__name__)
LANE = "security"
# A note not taken for this long is told of (the retries reach one an hour by then).
OVERDUE = timedelta(hours=1)
# The systems this process last found late (so it looks for their end).
_SEEN_LATE: set[str] = set()


@runtime_checkable
class Alerts(Protocol):
    """Where the security channel's messages go (app/notify/outbox.py `Outbox`)."""

    def enqueue(self, lane: str, calls: list[OutCall], key: str | None = None) -> None: ...


def tell_overdue_notes(service: AccessService, alerts: Alerts) -> list[str]:
    """Tell the security channel of each ticket system that has owed a note for longer than
    OVERDUE (once), and of one that no longer does (once). Returns what was told, in words
    ('jira down', 'jira back')."""
    policy = service.policy
    now = service.clock.now()
    with service.db.read() as session:
        waiting = session.execute(
            select(TicketNote.system, func.count(), func.min(TicketNote.created_at))
            .where(TicketNote.delivered_at.is_(None))
            .group_by(TicketNote.system)
        ).all()
        late: dict[str, tuple[int, datetime, str]] = {}
        for system, count, oldest in waiting:
            if oldest is not None and now - oldest >= OVERDUE:
                error = session.scalar(
                    select(TicketNote.last_error)
                    .where(TicketNote.system == system, TicketNote.delivered_at.is_(None))
                    .order_by(TicketNote.created_at)
                    .limit(1)
                )
                late[system] = (count, oldest, error or "no answer yet")
    told: list[str] = []
    # The outbox is asked only about systems late now or late when this process last looked
    # (every process that runs the sweeps sees a late system, so one of them tells its end).
    for system in sorted(set(late) | _SEEN_LATE):
        kind = "down" if system in late else "back"
        last, count = last_alert(service.db, f"ticket-notes:{system}")
        if kind == "down":
            _SEEN_LATE.add(system)
        else:
            _SEEN_LATE.discard(system)
        if kind == last or (kind == "back" and last is None):
            continue
        label = _label(service, system)
        if kind == "down":
            notes, oldest, error = late[system]
            text = (
                f"📝 WardKey cannot write its notes on {label} tickets: "
                f"{plural(notes, 'note')} waiting, the oldest since "
                f"{clock_time(oldest, policy.zone)} ({escape(error)[:300]}). Until they are "
                "written, those tickets lack WardKey's record of who had access. WardKey keeps "
                "trying (at least once an hour) and says here when none is late."
            )
            log.error("event=ticket_notes_overdue system=%s notes=%s", system, notes)
        else:
            text = f"✅ WardKey writes its notes on {label} tickets again: none is an hour late."
            log.warning("event=ticket_notes_caught_up system=%s", system)
        alerts.enqueue(
            LANE,
            [OutCall(POST, {"channel": policy.channels.security_alerts, "text": text})],
            key=f"ticket-notes:{system}:{kind}:{count + 1}"[:100],
        )
        told.append(f"{system} {kind}")
    return told


def _label(service: AccessService, system: str) -> str:
    spec = service.policy.ticket_systems.get(system)
    kind = "Jira" if spec is not None and spec.jira is not None else "ServiceNow"
    return kind if spec is None or system.lower() == kind.lower() else f"{system} ({kind})"
