"""The digest's job: on every sweep tick, send today's digest if its time has come and no
worker has sent it yet (the day is claimed in the database, so one worker sends it)."""

from __future__ import annotations

from collections.abc import Callable, Sized
from typing import Protocol

from app.digest.service import Digest, DigestService
from app.jobs import Job


class Needs(Protocol):
    """What the digest's job is given (app/scheduler `JobDeps`)."""

    @property
    def digests(self) -> DigestService: ...

    @property
    def tell(self) -> Callable[[Sized], None]:
        """Ask the outbox to deliver what was recorded (the digest's message)."""
        ...


def digest(given: Needs) -> Digest | None:
    """Once a day at the policy's time, by one worker: the managers' summary."""
    sent = given.digests.digest_due()
    given.tell([sent] if sent is not None else [])
    return sent


JOBS = (Job("digest", "sweep", digest),)
