"""Requests' jobs, on every sweep tick: remind approvers of a request at half its path's approval
SLA and escalate it at the SLA (`escalate`), and time out requests nobody decided in time
(`time_out`). Each change is a conditional transition, so two workers never make it twice."""

from __future__ import annotations

from collections.abc import Callable, Sized
from typing import Protocol

from app.jobs import Job
from app.requests.service import Requests


class Core(Protocol):
    """The part of the request core (app/access.py `AccessService`) the requests' jobs call."""

    @property
    def requests(self) -> Requests: ...


class Needs(Protocol):
    """What the requests' jobs are given (app/scheduler `JobDeps`)."""

    @property
    def core(self) -> Core: ...

    @property
    def tell(self) -> Callable[[Sized], None]:
        """Ask the outbox to deliver what was recorded (approvers reminded, requesters told)."""
        ...


def escalate(given: Needs) -> list[tuple[int, int]]:
    """Remind approvers at half the approval SLA; escalate at the SLA."""
    reached = given.core.requests.escalate_overdue()
    given.tell(reached)
    return reached


def time_out(given: Needs) -> list[int]:
    """Requests still waiting for a decision past their path's time-out end as timed out."""
    ids = given.core.requests.time_out_overdue()
    given.tell(ids)
    return ids


JOBS = (
    Job("escalate", "sweep", escalate),
    Job("time_out", "sweep", time_out),
)
