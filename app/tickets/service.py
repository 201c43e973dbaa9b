"""Tickets after the request: access that ends when its ticket is resolved or closed, and the
notes WardKey writes on tickets when access is granted and when it ends.

`TicketService` works through the request core it is given (`AccessService`): its database,
clock, ticket desk (app/tickets reads and writes the systems), the ending of access
through the normal revoke, and the policy in force (a policy reload replaces the core's). What
the core itself does with tickets (the check when access is asked for and again at the final
approval) is the requests' (app/requests/tickets.py).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.access import FeatureService
from app.lifecycle.leases import skip_locked
from app.requests.tickets import TICKET_CLOSED
from app.store.models import AccessRequest, Decision, RequestState, TicketNote
from app.ticket_systems import TicketNotFound, TicketUnreadable

log = logging.getLogger(__name__)
# How often an active grant's ticket is asked about again (paths with ticket.ends_access).
TICKET_RECHECK = timedelta(minutes=1)
# Notes are queued for grants and ends this recent (older ones are history, not news).
NOTES_LOOK_BACK = timedelta(days=7)
# A note being sent is held for this long; a worker that dies mid-send leaves it to the next.
NOTE_LEASE = timedelta(minutes=5)
NOTE_RETRY_FIRST = timedelta(seconds=30)
NOTE_RETRY_MAX = timedelta(hours=1)


class TicketService(FeatureService):
    """Tickets after the request: access that ends when its ticket closes, and the notes
    WardKey writes on tickets (app/ticket_systems reads and writes the systems)."""

    def end_with_closed_tickets(self, limit: int = 200) -> list[int]:
        """Active grants on paths with `ticket.ends_access` whose ticket was checked more
        than TICKET_RECHECK ago: ask the ticket system again, and end those whose ticket is
        resolved or closed through the normal revoke (audited; the requester is told why). A
        system that does not answer ends nothing (the grant still ends at its expiry) and is
        asked again next time. Returns the requests ended."""
        now = self.clock.now()
        paths = [n for n, p in self.policy.paths.items() if p.ticket and p.ticket.ends_access]
        if not paths:
            return []
        with self.db.read() as session:
            rows = session.execute(
                select(AccessRequest.id, AccessRequest.ticket_system, AccessRequest.ticket)
                .where(
                    AccessRequest.state == RequestState.ACTIVE.value,
                    AccessRequest.path.in_(paths),
                    AccessRequest.ticket_system.is_not(None),
                    AccessRequest.ticket.is_not(None),
                    AccessRequest.ticket_checked_at.is_(None)  # not checked when asked for
                    | (AccessRequest.ticket_checked_at <= now - TICKET_RECHECK),
                )
                .order_by(
                    AccessRequest.ticket_checked_at.is_not(None), AccessRequest.ticket_checked_at
                )
                .limit(limit)
            ).all()
        by_ticket: dict[tuple[str, str], list[int]] = {}
        for rid, system, ticket in rows:
            by_ticket.setdefault((str(system), str(ticket)), []).append(rid)
        ended: list[int] = []
        for (system, ticket), ids in by_ticket.items():
            try:
                facts = self.core.tickets.find(self.policy, system, ticket)
            except TicketNotFound:
                facts = None
            except TicketUnreadable:
                continue  # logged by the desk; asked again at the next sweep
            with self.db.transaction() as session:
                session.execute(
                    update(AccessRequest)
                    .where(
                        AccessRequest.id.in_(ids), AccessRequest.state == RequestState.ACTIVE.value
                    )
                    .values(
                        ticket_checked_at=now,
                        **({"ticket_state": facts.state[:100]} if facts is not None else {}),
                    )
                )
            if facts is not None and facts.open:
                continue
            label = facts.label if facts is not None else system
            why = (
                f"{ticket} was {facts.state} in {label}"
                if facts is not None
                else f"{ticket} is no longer in {label}"
            )
            for rid in ids:
                if self.core.end_access(rid, why, TICKET_CLOSED):
                    ended.append(rid)
        return ended

    # ------------------------------------------------------------------------------ notes

    def queue_ticket_notes(self, limit: int = 200) -> int:
        """Write the note due on each ticket of a path with `ticket.notes`: one when access
        was granted, one when it ended (who, what, until when), from what the database
        records, so a note is never lost to a crash and a grant never waits for it. Returns
        how many were queued (each once: the table's unique key refuses a second)."""
        now = self.clock.now()
        paths = [n for n, p in self.policy.paths.items() if p.ticket and p.ticket.notes]
        if not paths:
            return 0
        since = now - NOTES_LOOK_BACK
        queued = 0
        for event, when in (
            ("granted", AccessRequest.granted_at),
            ("ended", AccessRequest.ended_at),
        ):
            noted = select(TicketNote.id).where(
                TicketNote.request_id == AccessRequest.id, TicketNote.event == event
            )
            query = (
                select(AccessRequest)
                .where(
                    AccessRequest.path.in_(paths),
                    AccessRequest.ticket_system.is_not(None),
                    AccessRequest.ticket.is_not(None),
                    when.is_not(None),
                    when >= since,
                    ~noted.exists(),
                )
                .order_by(AccessRequest.id)
                .limit(limit)
            )
            if event == "ended":
                query = query.where(AccessRequest.state == RequestState.ENDED.value)
            with self.db.read() as session:
                rows = session.scalars(query).all()
                notes = [(req, self._note_text(session, req, event)) for req in rows]
            for req, text in notes:
                try:
                    with self.db.transaction() as session:
                        session.add(
                            TicketNote(
                                request_id=req.id,
                                event=event,
                                system=str(req.ticket_system),
                                ticket=str(req.ticket),
                                body=text,
                                created_at=now,
                                due_at=now,
                                attempts=0,
                            )
                        )
                    queued += 1
                except IntegrityError:
                    continue  # another worker queued it first
        return queued

    def _note_text(self, session: Session, req: AccessRequest, event: str) -> str:
        zone = self.policy.zone
        who = req.requester_email or req.requester

        def at(instant: datetime | None) -> str:
            return "—" if instant is None else f"{instant.astimezone(zone):%H:%M %d %b %Y %Z}"

        what = f"{req.target}:{req.role}" + (f" as {req.account}" if req.account != who else "")
        if event == "granted":
            approvers = session.scalars(
                select(Decision.approver)
                .where(Decision.request_id == req.id, Decision.outcome == "approve")
                .order_by(Decision.id)
            ).all()
            by = f", approved by {', '.join(approvers)}" if approvers else ""
            return (
                f"WardKey request #{req.id}: {what} granted to {who} at {at(req.granted_at)}"
                f"{by}, until {at(req.expires_at)}. Reason: {req.reason}"
            )
        why = f" ({req.end_reason})" if req.end_reason else ""
        return f"WardKey request #{req.id}: {what} for {who} ended at {at(req.ended_at)}{why}."

    def deliver_ticket_notes(self, limit: int = 50) -> list[int]:
        """Send the notes that are due, each claimed for NOTE_LEASE so two workers never send
        one twice; a note the system does not take is tried again after 30 s, 1 min, 2 min…
        (at most an hour apart, longer if the system asks with Retry-After), for ever, each
        failure logged: never dropped. Returns the notes delivered."""
        now = self.clock.now()
        with self.db.transaction() as session:
            due = session.scalars(
                skip_locked(
                    select(TicketNote)
                    .where(TicketNote.delivered_at.is_(None), TicketNote.due_at <= now)
                    .order_by(TicketNote.due_at)
                    .limit(limit)
                )
            ).all()
            claimed = [(n.id, n.system, n.ticket, n.body, n.attempts) for n in due]
            for note in due:
                note.due_at = now + NOTE_LEASE
        delivered: list[int] = []
        for note_id, system, ticket, body, attempts in claimed:
            try:
                facts = self.core.tickets.find(self.policy, system, ticket)
                self.core.tickets.add_note(self.policy, facts, body)
            except (TicketUnreadable, TicketNotFound) as exc:
                wait = note_retry_wait(attempts + 1)
                asked = getattr(exc, "retry_after", None)
                if asked is not None and asked > wait:
                    wait = asked
                log.warning(
                    "ticket.note_failed note=%s system=%s ticket=%s attempts=%s retry_in=%ss "
                    "reason=%s",
                    note_id,
                    system,
                    ticket,
                    attempts + 1,
                    int(wait.total_seconds()),
                    exc,
                )
                with self.db.transaction() as session:
                    session.execute(
                        update(TicketNote)
                        .where(TicketNote.id == note_id)
                        .values(
                            attempts=attempts + 1,
                            due_at=self.clock.now() + wait,
                            last_error=str(exc)[:300],
                        )
                    )
                continue
            with self.db.transaction() as session:
                session.execute(
                    update(TicketNote)
                    .where(TicketNote.id == note_id)
                    .values(delivered_at=self.clock.now(), attempts=attempts + 1, last_error=None)
                )
            delivered.append(note_id)
        return delivered


def note_retry_wait(attempts: int) -> timedelta:
    """30 s, 1 min, 2 min, 4 min… at most NOTE_RETRY_MAX."""
    wait: timedelta = NOTE_RETRY_FIRST * (2 ** max(0, attempts - 1))
    return min(wait, NOTE_RETRY_MAX)
