"""Tickets in a request: what is stored and audited of the ticket system's answer; access that
ends when its ticket closes; the notes WardKey writes on tickets."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import audit
from app.policy.tickets import TicketFacts, refusal
from app.service.grants import GrantCases
from app.store.models import AccessRequest, Decision, RequestState, TicketNote
from app.tickets import TicketNotFound, TicketUnreadable

log = logging.getLogger(__name__)
# Why a request ended, as a word (AccessRequest.end_cause): its ticket was resolved or closed.
TICKET_CLOSED = "ticket_closed"
# How often an active grant's ticket is asked about again (paths with ticket.ends_access).
TICKET_RECHECK = timedelta(minutes=1)
# Notes are queued for grants and ends this recent (older ones are history, not news).
NOTES_LOOK_BACK = timedelta(days=7)
# A note being sent is held for this long; a worker that dies mid-send leaves it to the next.
NOTE_LEASE = timedelta(minutes=5)
NOTE_RETRY_FIRST = timedelta(seconds=30)
NOTE_RETRY_MAX = timedelta(hours=1)


def ticket_fields(facts: TicketFacts | None, now: datetime) -> dict[str, object]:
    """The request's columns for what the ticket system said (none when nothing was checked)."""
    if facts is None:
        return {}
    return {
        "ticket": facts.key,
        "ticket_system": facts.system,
        "ticket_title": facts.title[:300],
        "ticket_state": facts.state[:100],
        "ticket_url": facts.url[:500],
        "ticket_checked_at": now if facts.answered else None,
    }


def ticket_audit(facts: TicketFacts | None) -> dict[str, object]:
    """What the audit event records of the ticket check."""
    if facts is None:
        return {}
    return {
        "ticket_check": {
            "system": facts.system,
            "ticket": facts.key,
            "state": facts.state,
            "open": facts.open,
            "answered": facts.answered,
            "assignee": facts.assignee_email,
            "group": facts.group,
        }
    }


class TicketCases(GrantCases):
    """Tickets after the request: access that ends when its ticket closes, and the notes
    WardKey writes on tickets (app/tickets reads and writes the systems)."""

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
                facts = self.tickets.find(self.policy, system, ticket)
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
                if self._end_for(rid, "wardkey", why, TICKET_CLOSED):
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
                self._claim(
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
                facts = self.tickets.find(self.policy, system, ticket)
                self.tickets.add_note(self.policy, facts, body)
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


def closed_since_asked(service: GrantCases, request_id: int) -> str | None:
    """At the final approval: why the request's ticket no longer allows it (resolved, closed,
    gone, or assigned elsewhere since it was asked for), or None. A ticket system that does not
    answer now leaves the check made when access was asked for standing (logged)."""
    with service.db.read() as session:
        req = session.get(AccessRequest, request_id)
        if req is None or not req.ticket_system or not req.ticket:
            return None
        system, ticket, email = req.ticket_system, req.ticket, req.requester_email
        spec = service.policy.paths.get(req.path)
    rule = spec.ticket if spec is not None else None
    if rule is None:
        return None
    try:
        facts = service.tickets.find(
            service.policy, system, ticket, email, need_group=rule.assigned == "requester_or_group"
        )
    except TicketNotFound:
        return f"{ticket} was no longer in the ticket system when the request was approved"
    except TicketUnreadable as exc:
        # The access is granted on the check made when it was asked for: the audit trail
        # says the ticket could not be checked again, and why.
        log.warning("ticket.recheck_unanswered request=%s ticket=%s", request_id, ticket)
        with service.db.transaction() as session:
            audit.append(
                session,
                at=service.clock.now(),
                action="ticket.recheck_unanswered",
                actor="wardkey",
                request_id=request_id,
                data={"system": system, "ticket": ticket, "reason": str(exc)[:300]},
            )
        return None
    if not facts.open:
        return f"{facts.key} was {facts.state} in {facts.label} when the request was approved"
    if refusal(rule, facts, email) is not None:
        return (
            f"{facts.key} was no longer assigned to the requester in {facts.label} when the "
            "request was approved"
        )
    return None
