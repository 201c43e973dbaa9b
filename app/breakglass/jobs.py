"""Break-glass's job, on every sweep tick: each use held for a second person gets a notice, so
the security channel's line about it shows how long it has waited so far (updated in place).

It reaches the request core only through what `HeldUses` names (the facade's delegation to
service.py), so the job needs nothing of the service's own dependencies."""

from __future__ import annotations

from collections.abc import Callable, Sized
from typing import Protocol

from app.jobs import Job


class HeldUses(Protocol):
    """The request core's reading of held uses (service.py)."""

    def break_glass_waits(self) -> list[int]:
        """Held uses still waiting for a second person, each with a notice recorded."""
        ...


class Needs(Protocol):
    """What break-glass's job is given (app/scheduler `JobDeps`)."""

    @property
    def core(self) -> HeldUses: ...

    @property
    def tell(self) -> Callable[[Sized], None]:
        """Ask the outbox to deliver what was recorded (the security channel's lines)."""
        ...


def break_glass_waits(given: Needs) -> list[int]:
    """Break-glass held for a second person: the security channel's line about each shows how
    long it has waited so far (updated in place every sweep)."""
    ids = given.core.break_glass_waits()
    given.tell(ids)
    return ids


JOBS = (Job("break_glass_waits", "sweep", break_glass_waits),)
