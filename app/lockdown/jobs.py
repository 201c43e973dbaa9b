"""Lockdown's job, every second (the expiry cadence) on every serve and worker: every lockdown in
force is applied again (a grant that finished after its round, a round whose process died) and
its progress told when it changed (a failed revoke retried), so a lockdown holds within a second
on every instance. Grants are claimed in the database, so two processes never revoke one twice."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from app.jobs import Job
from app.lockdown.service import Lockdowns


class Needs(Protocol):
    """What lockdown's job is given (app/scheduler `JobDeps`)."""

    @property
    def lockdowns(self) -> Lockdowns: ...

    @property
    def kick(self) -> Callable[[], None] | None:
        """Ask the outbox to deliver now, as each round's revokes are recorded (the security
        channel's progress message, the holders told); None: nobody is told."""
        ...


def lockdowns(given: Needs) -> list[int]:
    """Every lockdown in force applied again and its progress told when it changed; returns
    the lockdowns that had work."""
    return given.lockdowns.enforce(on_progress=given.kick)


JOBS = (Job("lockdowns", "expiry", lockdowns),)
