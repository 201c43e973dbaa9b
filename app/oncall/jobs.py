"""On-call sources' job, on every sweep tick: read the rotas' sources that are due, so an outage
is seen (and security told, once per outage by any process) while nobody asks for access; then a
request waiting on a path that now names nobody (its rota's source unread past stale_after) goes
at once to the escalation group (recorded once, so two workers never escalate it twice)."""

from __future__ import annotations

from collections.abc import Callable, Sized
from typing import Protocol

from app.access import AccessService
from app.jobs import Job
from app.oncall.cache import unread_sources


class Needs(Protocol):
    """What the on-call sources' job is given (app/scheduler `JobDeps`)."""

    @property
    def core(self) -> AccessService:
        """The request core: its policy in force, and the escalation of requests nobody may
        approve."""
        ...

    @property
    def oncall(self) -> Callable[[], Sized] | None:
        """Read the rotas' sources that are due and tell security of one that stopped answering
        or answers again (flows.py `read_sources`); None: not read here."""
        ...

    @property
    def tell(self) -> Callable[[Sized], None]:
        """Ask the outbox to deliver what was recorded (the escalation group's cards)."""
        ...


def oncall_sources(given: Needs) -> int:
    """Read the rotas' sources that are due, then escalate at once the requests waiting on a
    path that now names nobody. Returns how many changes were told and requests escalated."""
    core = given.core
    told = 0 if given.oncall is None else len(given.oncall())
    escalated = core.nobody_to_approve(
        lambda path: "; ".join(
            [
                f"nobody is on duty to approve the {path} path",
                *unread_sources(core.policy, path),
            ]
        )
    )
    given.tell(escalated)
    return told + len(escalated)


JOBS = (Job("oncall_sources", "sweep", oncall_sources),)
