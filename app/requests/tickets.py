"""Tickets in a request: what is stored and audited of the ticket system's answer, and the check
again at the final approval. Access that ends when its ticket closes and the notes WardKey writes
on tickets are a feature of their own (app/tickets/service.py) that works through the request
core."""

from __future__ import annotations

import logging
from datetime import datetime

from app import audit
from app.lifecycle.deps import CoreDeps
from app.policy.tickets import TicketFacts, refusal
from app.store.models import AccessRequest
from app.ticket_systems import TicketNotFound, TicketUnreadable

log = logging.getLogger(__name__)
# Why a request ended, as a word (AccessRequest.end_cause): its ticket was resolved or closed.
TICKET_CLOSED = "ticket_closed"


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


def closed_since_asked(deps: CoreDeps, request_id: int) -> str | None:
    """At the final approval: why the request's ticket no longer allows it (resolved, closed,
    gone, or assigned elsewhere since it was asked for), or None. A ticket system that does not
    answer now leaves the check made when access was asked for standing (logged)."""
    with deps.db.read() as session:
        req = session.get(AccessRequest, request_id)
        if req is None or not req.ticket_system or not req.ticket:
            return None
        system, ticket, email = req.ticket_system, req.ticket, req.requester_email
        spec = deps.policy.paths.get(req.path)
    rule = spec.ticket if spec is not None else None
    if rule is None:
        return None
    try:
        facts = deps.tickets.find(
            deps.policy, system, ticket, email, need_group=rule.assigned == "requester_or_group"
        )
    except TicketNotFound:
        return f"{ticket} was no longer in the ticket system when the request was approved"
    except TicketUnreadable as exc:
        # The access is granted on the check made when it was asked for: the audit trail
        # says the ticket could not be checked again, and why.
        log.warning("ticket.recheck_unanswered request=%s ticket=%s", request_id, ticket)
        with deps.db.transaction() as session:
            audit.append(
                session,
                at=deps.clock.now(),
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
