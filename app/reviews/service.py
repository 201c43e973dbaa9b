"""The review every break-glass use gets: sent to the reviewers when the use ends, reminded
until decided, escalated when overdue, and decided by a reviewer who is not the user.

`ReviewService` works through the request core it is given (`AccessService`): its database,
clock, reads of requests and of the messages Slack accepted, and the policy in force (a policy
reload replaces the core's).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select

from app.access import FeatureService
from app.breakglass.service import ALERT_MESSAGE
from app.lifecycle import transitions
from app.lifecycle.eligibility import is_requester
from app.lifecycle.errors import (
    AlreadyDecided,
    NotAllowed,
    NotFound,
    SelfApproval,
)
from app.lifecycle.snapshots import RequestSnapshot, load_request, snapshot, snapshots
from app.lifecycle.transitions import StaleState
from app.lifecycle.validation import clean_note
from app.policy import rules
from app.policy.model import BREAK_GLASS_PATH, AccessPath
from app.policy.people import Person, person_key
from app.requests.service import replaced_in
from app.store.models import (
    FINAL_STATES,
    AccessRequest,
    AuditEvent,
    Review,
    ReviewState,
)


class ReviewStep(StrEnum):
    REQUESTED = "requested"  # the use ended: its summary goes to the reviewers
    REMINDED = "reminded"
    OVERDUE = "overdue"  # past its deadline: escalated to security and the WardKey admins


# How far back the review card looks for the same person's other requests for that access.
EARLIER_WINDOW = timedelta(hours=24)
# The period of the user's break-glass count on the review card.
BREAK_GLASS_COUNT_WINDOW = timedelta(days=30)


@dataclass(frozen=True)
class BreakGlassSummary:
    """What a reviewer needs to judge one break-glass use."""

    view: RequestSnapshot
    used_for: timedelta | None
    alerted: tuple[str, ...]  # Slack channel and user IDs that were sent the alert
    recorded: bool  # the target logged the session's statements
    sessions_ended: int | None
    target_notes: tuple[str, ...]
    # The same person's other requests for the same access in the day before this use began
    # (a denial minutes earlier is what a reviewer most needs to see), oldest first.
    earlier: tuple[RequestSnapshot, ...] = ()
    # Their break-glass uses in the 30 days up to this one's start, this one included.
    break_glass_30_days: int = 1
    # The pending request this use replaced (cancelled when it began), if any.
    replaces: int | None = None
    # What was unusual about the use when it began (app/breakglass/rules.py): (code, words).
    flags: tuple[tuple[str, str], ...] = ()
    # Held for a second person: why, and who confirmed it (their key or Slack ID).
    held_for: tuple[str, ...] = ()
    confirmed_by: str | None = None


def _event_data(body: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(body).get("data") or {}
    return data


class ReviewService(FeatureService):
    """Break-glass reviews' use cases."""

    def decide_review(
        self, request_id: int, reviewer: Person, *, justified: bool, note: str
    ) -> RequestSnapshot:
        """A manager records whether a break-glass use was justified."""
        now = self.clock.now()
        cleaned = clean_note(note, "Add a short note (a few words) on why, for the record.")
        with self.db.transaction() as session:
            req = load_request(session, request_id)
            review = session.scalars(select(Review).where(Review.request_id == req.id)).first()
            if review is None:
                raise NotFound(f"Request #{req.id} is not a break-glass use; it has no review.")
            if is_requester(self.policy, reviewer, req):
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
            return snapshot(session, req)

    def review_refusal(self, request_id: int, person: Person) -> str | None:
        """Why this person may not decide this review now (None: they may), so a click can be
        answered before a note is asked for. `decide_review` checks again on submission."""
        now = self.clock.now()
        with self.db.read() as session:
            req = load_request(session, request_id)
            review = session.scalars(select(Review).where(Review.request_id == req.id)).first()
        if review is None:
            return f"Request #{req.id} is not a break-glass use; it has no review."
        if is_requester(self.policy, person, req):
            return "You cannot review your own break-glass use."
        if not rules.is_reviewer(self.policy, person, now):
            return "Only the policy's break-glass reviewers can decide this review."
        if review.state != ReviewState.OPEN:
            return f"The review of request #{req.id} was already decided ({review.state})."
        return None

    def review_follow_ups(self, limit: int = 200) -> list[tuple[int, ReviewStep]]:
        """Move open reviews along: a use that has ended is sent to the reviewers; one sent
        and undecided is reminded every `review_reminder_every`; one past its deadline is
        escalated once. Returns the steps taken, for the reviewers to be told. Rows another
        worker is handling are skipped."""
        now = self.clock.now()
        spec = self.policy.paths[BREAK_GLASS_PATH]
        finished = [s.value for s in FINAL_STATES]
        steps: list[tuple[int, ReviewStep]] = []
        with self.db.transaction() as session:
            rows = session.execute(
                select(Review, AccessRequest.state)
                .join(AccessRequest, AccessRequest.id == Review.request_id)
                .where(Review.state == ReviewState.OPEN.value)
                .order_by(Review.id)
                .limit(limit)
                .with_for_update(skip_locked=True, of=Review)
            ).all()
            for review, request_state in rows:
                step = self._next_review_step(review, request_state in finished, now, spec)
                if step is None:
                    continue
                transitions.follow_up_review(
                    session,
                    review,
                    at=now,
                    action=f"review.{step.value}",
                    changes=_REVIEW_CHANGES[step](review, now),
                    data={"reminders": review.reminders, **self._escalation(step, spec, now)},
                )
                steps.append((review.request_id, step))
        return steps

    def _escalation(self, step: ReviewStep, spec: AccessPath, now: datetime) -> dict[str, Any]:
        """Whom an overdue review is escalated to, besides security and the WardKey admins:
        the policy's review_escalate_to (e.g. the Caldicott Guardian) and channel."""
        if step != ReviewStep.OVERDUE:
            return {}
        return {
            "escalated_to": rules.resolve_sources(self.policy, spec.review_escalate_to, now),
            "escalated_channel": spec.review_escalate_channel,
        }

    @staticmethod
    def _next_review_step(
        review: Review, use_ended: bool, now: datetime, spec: AccessPath
    ) -> ReviewStep | None:
        if review.requested_at is None:
            return ReviewStep.REQUESTED if use_ended else None
        if now > review.due_at and review.escalated_at is None:
            return ReviewStep.OVERDUE
        last = review.reminded_at or review.requested_at
        if now >= last + spec.review_reminder_every:
            return ReviewStep.REMINDED
        return None

    def review_escalation(self, request_id: int) -> tuple[list[str], str | None] | None:
        """Whom the overdue review of this use was escalated to (people, channel), as its
        `review.overdue` event recorded them; None if it was not escalated."""
        with self.db.read() as session:
            body = session.scalar(
                select(AuditEvent.body).where(
                    AuditEvent.request_id == request_id, AuditEvent.action == "review.overdue"
                )
            )
        if body is None:
            return None
        data = _event_data(body)
        return [str(m) for m in data.get("escalated_to") or []], data.get("escalated_channel")

    def break_glass_summary(self, request_id: int) -> BreakGlassSummary:
        """Who, what, why, how long, who was alerted and what the target recorded."""
        with self.db.read() as session:
            req = load_request(session, request_id)
            view = snapshot(session, req)
            events = session.execute(
                select(AuditEvent.action, AuditEvent.body)
                .where(AuditEvent.request_id == request_id)
                .order_by(AuditEvent.seq)
            ).all()
        # Only who was really told: the recipients of alerts Slack accepted (recorded by the
        # notifier as it posts), never the people who should have been.
        alerted = [recipient for recipient, _ts in self.core.messages_of(request_id, ALERT_MESSAGE)]
        sessions_ended: int | None = None
        for action, body in events:
            data = _event_data(body)
            if action == "revoke.succeeded" and "sessions_ended" in data:
                sessions_ended = int(data["sessions_ended"])
        target = self.policy.targets.get(view.target)
        role = target.roles.get(view.role) if target else None
        used_for = (
            view.ended_at - view.granted_at
            if view.ended_at is not None and view.granted_at is not None
            else None
        )
        notes = tuple(n for n in (view.grant_detail, view.revoke_detail) if n)
        started = next((body for action, body in events if action == "breakglass.started"), None)
        replaced = replaced_in(started)
        begun = _event_data(started) if started else {}
        return BreakGlassSummary(
            view=view,
            used_for=used_for,
            alerted=tuple(dict.fromkeys(alerted)),
            recorded=bool(role and role.record_sessions),
            sessions_ended=sessions_ended,
            target_notes=notes,
            earlier=self._earlier_requests(view),
            break_glass_30_days=self._break_glass_count(view),
            replaces=replaced[0] if replaced else None,
            flags=tuple((str(f["code"]), str(f["words"])) for f in begun.get("flags") or []),
            held_for=tuple(str(w) for w in begun.get("held_for") or []),
            confirmed_by=begun.get("confirmed_by_slack_id") or begun.get("confirmed_by"),
        )

    def _earlier_requests(self, view: RequestSnapshot) -> tuple[RequestSnapshot, ...]:
        """The same person's other requests for the same target and role made in the day
        before this one (whatever became of them), oldest first."""
        since = view.created_at - EARLIER_WINDOW
        with self.db.read() as session:
            rows = session.scalars(
                select(AccessRequest)
                .where(
                    AccessRequest.requester == view.requester,
                    AccessRequest.target == view.target,
                    AccessRequest.role == view.role,
                    AccessRequest.id != view.id,
                    AccessRequest.created_at >= since,
                    AccessRequest.created_at <= view.created_at,
                )
                .order_by(AccessRequest.created_at.desc(), AccessRequest.id.desc())
                .limit(10)
            ).all()
            return tuple(snapshots(session, list(reversed(rows))))

    def _break_glass_count(self, view: RequestSnapshot) -> int:
        """This person's break-glass uses in the 30 days up to this one, this one included."""
        with self.db.read() as session:
            count = session.scalar(
                select(func.count()).where(
                    AccessRequest.requester == view.requester,
                    AccessRequest.path == BREAK_GLASS_PATH,
                    AccessRequest.created_at > view.created_at - BREAK_GLASS_COUNT_WINDOW,
                    AccessRequest.created_at <= view.created_at,
                )
            )
        return int(count or 0)


_REVIEW_CHANGES = {
    ReviewStep.REQUESTED: lambda review, now: {"requested_at": now},
    ReviewStep.REMINDED: lambda review, now: {
        "reminded_at": now,
        "reminders": review.reminders + 1,
    },
    ReviewStep.OVERDUE: lambda review, now: {"escalated_at": now},
}
