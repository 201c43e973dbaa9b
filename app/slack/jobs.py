"""The inbox's job, every second (the expiry cadence): do the work of Slack requests that were
acknowledged (so recorded) by a process that died before finishing it, so a crash delays a
click by seconds. Each inbox row is claimed, so two processes never do one request twice."""

from __future__ import annotations

from typing import Protocol

from app.jobs import Job


class Inbox(Protocol):
    """Slack requests acknowledged by a process that died before doing their work
    (app/slack/intake.py `Redelivery`)."""

    def redeliver_due(self) -> list[str]: ...


class Needs(Protocol):
    """What the inbox's job is given (app/scheduler `JobDeps`)."""

    @property
    def inbox(self) -> Inbox | None:
        """The requests to redeliver; None: this process redelivers none."""
        ...


def intake(given: Needs) -> list[str]:
    """Redeliver what is due; returns the keys whose work finished."""
    return given.inbox.redeliver_due() if given.inbox is not None else []


JOBS = (Job("intake", "expiry", intake),)
