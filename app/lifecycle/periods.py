"""Once-per-period jobs (a day's digest, an hour's look at the targets): the first worker to
take a period's turn does the job, every other worker skips it. Not a lease: a turn is taken
for good (a `SweepRun` row) and never renewed or taken over."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.exc import IntegrityError

from app.store.db import Database
from app.store.models import SweepRun


def take_turn(db: Database, job: str, period: str, at: datetime, worker: str) -> bool:
    """Take this period's turn of a once-per-period job: True for exactly one worker, however
    many ask at once."""
    with db.read() as session:  # cheap look first: most ticks find it taken
        if session.get(SweepRun, (job, period)) is not None:
            return False
    try:
        with db.transaction() as session:
            session.add(SweepRun(job=job, period=period, done_at=at, done_by=worker))
    except IntegrityError:
        return False
    return True
