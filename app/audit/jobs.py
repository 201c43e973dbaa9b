"""The audit trail's job, on the checkpoint interval: write a signed checkpoint of the chain's
head off the box (to the directory and with the key the process was given), so a cut tail is
found later (`wardkey audit verify`). A process given no directory schedules no checkpoints.

It reaches the request core only through what `Trail` names (its database and clock), so this
package still imports no service code."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from app.audit.checkpoints import write_signed_checkpoint
from app.clock import Clock
from app.jobs import Job
from app.store.db import Database


class Trail(Protocol):
    """Where the trail is and what time it is (the request core's)."""

    @property
    def db(self) -> Database: ...

    @property
    def clock(self) -> Clock: ...


class Needs(Protocol):
    """What the audit trail's job is given (app/scheduler `JobDeps`)."""

    @property
    def core(self) -> Trail: ...

    @property
    def checkpoint_to(self) -> tuple[Path, bytes] | None:
        """(directory, key) for signed checkpoints; None: none are written."""
        ...


def checkpoint(given: Needs) -> Path | None:
    """Write a signed checkpoint of the audit chain's head off the box."""
    if given.checkpoint_to is None:
        return None
    directory, key = given.checkpoint_to
    return write_signed_checkpoint(given.core.db, directory, key, clock=given.core.clock)


JOBS = (Job("checkpoint", "checkpoint", checkpoint),)
