"""Tickets' jobs, on every sweep tick: end the access whose ticket was resolved or closed, and
write and send the notes due on tickets (telling security of a ticket system that keeps refusing
them). Rows are claimed in the database, so every serve and worker may run them."""

from __future__ import annotations

from collections.abc import Callable, Sized
from typing import Protocol

from app.jobs import Job
from app.tickets.overdue import Alerts, tell_overdue_notes
from app.tickets.service import TicketService


class Needs(Protocol):
    """What tickets' jobs are given (app/scheduler `JobDeps`)."""

    @property
    def tickets(self) -> TicketService: ...

    @property
    def tell(self) -> Callable[[Sized], None]:
        """Ask the outbox to deliver what was recorded (the holders told why access ended,
        security told of a ticket system that takes no notes)."""
        ...

    @property
    def alerts(self) -> Alerts | None:
        """Where security's alerts are recorded (the outbox; None: nobody is told)."""
        ...


def tickets(given: Needs) -> list[int]:
    """Access on paths with `ticket.ends_access` ends when its ticket is resolved or closed in
    the ticket system (each requester is told why)."""
    ids = given.tickets.end_with_closed_tickets()
    given.tell(ids)
    return ids


def ticket_notes(given: Needs) -> list[int]:
    """Write the notes due on tickets (access granted, access ended) and send those due,
    retrying those the ticket system did not take."""
    given.tickets.queue_ticket_notes()
    delivered = given.tickets.deliver_ticket_notes()
    if given.alerts is not None:
        # A system that has not taken a note for an hour is told of once (and its end).
        given.tell(tell_overdue_notes(given.tickets.core, given.alerts))
    return delivered


JOBS = (Job("tickets", "sweep", tickets), Job("ticket_notes", "sweep", ticket_notes))
