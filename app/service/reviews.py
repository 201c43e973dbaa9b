"""The review every break-glass use gets."""

from __future__ import annotations

from sqlalchemy import select

from app.policy import rules
from app.policy.people import Person, person_key
from app.service import transitions
from app.service.base import (
    MIN_REASON_WORDS,
    WORD,
    ServiceBase,
)
from app.service.errors import (
    AlreadyDecided,
    InvalidRequest,
    NotAllowed,
    NotFound,
    SelfApproval,
)
from app.service.transitions import StaleState
from app.service.views import RequestView
from app.store.models import (
    Review,
    ReviewState,
)


class ReviewCases(ServiceBase):
    # ------------------------------------------------------------------------------ reviews

    def decide_review(
        self, request_id: int, reviewer: Person, *, justified: bool, note: str
    ) -> RequestView:
        """A manager records whether a break-glass use was justified."""
        now = self.clock.now()
        cleaned = " ".join(note.split())
        if len(WORD.findall(cleaned)) < MIN_REASON_WORDS:
            raise InvalidRequest("Add a short note (a few words) on why, for the record.")
        with self.db.transaction() as session:
            req = self._load(session, request_id)
            review = session.scalars(select(Review).where(Review.request_id == req.id)).first()
            if review is None:
                raise NotFound(f"Request #{req.id} is not a break-glass use; it has no review.")
            if self._is_requester(reviewer, req):
                raise SelfApproval("You cannot review your own break-glass use.")
            if not rules.is_reviewer(self.policy, reviewer, now):
                raise NotAllowed("Only the policy's break-glass reviewers can decide this review.")
            if review.state != ReviewState.OPEN:
                raise AlreadyDecided(f"The review of request #{req.id} was already decided.")
            try:
                transitions.decide_review(
                    session,
                    review,
                    ReviewState.JUSTIFIED if justified else ReviewState.NOT_JUSTIFIED,
                    at=now,
                    actor=person_key(self.policy, reviewer),
                    note=cleaned,
                    data={
                        "requester": req.requester,
                        "target": req.target,
                        "role": req.role,
                        "overdue": now > review.due_at,
                    },
                )
            except StaleState:
                raise AlreadyDecided(
                    f"The review of request #{req.id} was already decided."
                ) from None
            return self._view(session, req)
