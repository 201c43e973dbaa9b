"""Standing privilege's job: on every sweep tick, look for access no grant covers if this
hour's look has not been taken (the hour is claimed in the database, so one worker looks)."""

from __future__ import annotations

from collections.abc import Callable, Sized
from typing import Protocol

from app.jobs import Job
from app.standing.service import StandingReport, StandingService


class Needs(Protocol):
    """What standing privilege's job is given (app/scheduler `JobDeps`)."""

    @property
    def standing(self) -> StandingService: ...

    @property
    def tell(self) -> Callable[[Sized], None]:
        """Ask the outbox to deliver what was recorded (security's alert of the findings)."""
        ...


def standing(given: Needs) -> StandingReport | None:
    """Once an hour, by one worker: access on the targets that no grant covers."""
    report = given.standing.standing_due()
    given.tell([report] if report is not None else [])
    return report


JOBS = (Job("standing", "sweep", standing),)
