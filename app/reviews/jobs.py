"""Break-glass reviews' job: on every sweep tick, send ended uses for review, remind the
reviewers of those undecided, and escalate those past their deadline (each review row is
claimed, so two workers never take the same step twice)."""

from __future__ import annotations

from collections.abc import Callable, Sized
from typing import Protocol

from app.jobs import Job
from app.reviews.service import ReviewService, ReviewStep


class Needs(Protocol):
    """What the reviews' job is given (app/scheduler `JobDeps`)."""

    @property
    def reviews(self) -> ReviewService: ...

    @property
    def tell(self) -> Callable[[Sized], None]:
        """Ask the outbox to deliver what was recorded (the cards, reminders and alerts)."""
        ...


def review(given: Needs) -> list[tuple[int, ReviewStep]]:
    """Send ended break-glass uses for review, remind reviewers, escalate overdue reviews."""
    steps = given.reviews.review_follow_ups()
    given.tell(steps)
    return steps


JOBS = (Job("review", "sweep", review),)
