"""Read-only snapshots of requests, handed to callers (the Slack layer renders these), and how
they are assembled from a session (`load_request`, `snapshot`, `snapshots`)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.lifecycle.errors import NotFound
from app.store.models import AccessRequest, Decision, RequestState, Review

# Causes of a cancellation the requester chose themselves (AccessRequest.end_cause).
WITHDRAWN = "withdrawn_by_requester"
REPLACED_BY_BREAK_GLASS = "replaced_by_break_glass"
# AccessRequest.escalation_level past "escalated" (2): no approver could be reached, so the
# request was escalated at once and security and the admins told (the sweep adds nothing more).
UNREACHABLE = 3


@dataclass(frozen=True)
class DecisionSnapshot:
    approver: str
    approver_slack_id: str | None
    outcome: str
    reason: str | None
    round: int
    decided_at: datetime
    as_sponsor: bool = False


@dataclass(frozen=True)
class ReviewSnapshot:
    state: str
    due_at: datetime
    reviewer: str | None
    note: str | None
    decided_at: datetime | None


@dataclass(frozen=True)
class TicketSnapshot:
    """The ticket as its system showed it when WardKey last checked."""

    system: str
    title: str
    state: str
    url: str
    checked_at: datetime | None


@dataclass(frozen=True)
class BreakGlassStart:
    """How a use began, as its events record it: its flags and, if it was held, why, whom
    WardKey asked, who confirmed it and after how long."""

    flags: tuple[tuple[str, str], ...] = ()  # (code, words)
    held_for: tuple[str, ...] = ()
    confirmers: tuple[str, ...] = ()
    confirmed_by: str | None = None
    waited: timedelta | None = None
    held_at: datetime | None = None


@dataclass(frozen=True)
class RequestSnapshot:
    id: int
    state: RequestState
    requester: str
    requester_slack_id: str | None
    requester_email: str | None
    identity: str | None
    target: str
    role: str
    path: str
    account: str
    entitlement: str
    reason: str
    ticket: str | None
    requested: timedelta
    approvals_needed: int
    approval_round: int
    extension: timedelta | None
    created_at: datetime
    decided_at: datetime | None
    granted_at: datetime | None
    expires_at: datetime | None
    ended_at: datetime | None
    preexisting: bool | None
    grant_detail: str | None
    revoke_detail: str | None
    revoke_attempts: int
    escalation_level: int
    ended_by: str | None
    end_reason: str | None
    decisions: tuple[DecisionSnapshot, ...]
    review: ReviewSnapshot | None
    sponsor: str | None = None  # a vendor's sponsor, who must approve too
    end_cause: str | None = None  # why it ended, as a word (see AccessRequest.end_cause)
    ticket_check: TicketSnapshot | None = None  # what the path's ticket system said of the ticket

    @property
    def approvals(self) -> tuple[DecisionSnapshot, ...]:
        """The path's approvals in the current round (the first request, or the extension
        asked for); a sponsor's approval is counted apart."""
        return tuple(
            d
            for d in self.decisions
            if d.round == self.approval_round and d.outcome == "approve" and not d.as_sponsor
        )

    @property
    def sponsor_approved(self) -> bool:
        return any(
            d.as_sponsor and d.outcome == "approve" and d.round == self.approval_round
            for d in self.decisions
        )

    @property
    def cancelled_by_requester(self) -> bool:
        """Withdrawn by the requester, or replaced by their own break-glass."""
        return self.state == RequestState.CANCELLED and self.end_cause in (
            WITHDRAWN,
            REPLACED_BY_BREAK_GLASS,
        )

    @property
    def is_break_glass(self) -> bool:
        return self.approvals_needed == 0

    @classmethod
    def of(
        cls, req: AccessRequest, decisions: list[Decision], review: Review | None
    ) -> RequestSnapshot:
        return cls(
            id=req.id,
            state=RequestState(req.state),
            requester=req.requester,
            requester_slack_id=req.requester_slack_id,
            requester_email=req.requester_email,
            identity=req.identity,
            target=req.target,
            role=req.role,
            path=req.path,
            account=req.account,
            entitlement=req.entitlement,
            reason=req.reason,
            ticket=req.ticket,
            requested=timedelta(seconds=req.requested_seconds),
            approvals_needed=req.approvals_needed,
            approval_round=req.approval_round,
            extension=(timedelta(seconds=req.extension_seconds) if req.extension_seconds else None),
            created_at=req.created_at,
            decided_at=req.decided_at,
            granted_at=req.granted_at,
            expires_at=req.expires_at,
            ended_at=req.ended_at,
            preexisting=req.preexisting,
            grant_detail=req.grant_detail,
            revoke_detail=req.revoke_detail,
            revoke_attempts=req.revoke_attempts,
            escalation_level=req.escalation_level or 0,
            ended_by=req.ended_by,
            end_reason=req.end_reason,
            decisions=tuple(
                DecisionSnapshot(
                    approver=d.approver,
                    approver_slack_id=d.approver_slack_id,
                    outcome=d.outcome,
                    reason=d.reason,
                    round=d.round,
                    decided_at=d.decided_at,
                    as_sponsor=bool(d.as_sponsor),
                )
                for d in sorted(decisions, key=lambda d: (d.round, d.decided_at, d.id))
            ),
            review=(
                ReviewSnapshot(
                    state=review.state,
                    due_at=review.due_at,
                    reviewer=review.reviewer,
                    note=review.note,
                    decided_at=review.decided_at,
                )
                if review is not None
                else None
            ),
            sponsor=req.sponsor,
            end_cause=req.end_cause,
            ticket_check=(
                TicketSnapshot(
                    system=req.ticket_system,
                    title=req.ticket_title or "",
                    state=req.ticket_state or "",
                    url=req.ticket_url or "",
                    checked_at=req.ticket_checked_at,
                )
                if req.ticket_system
                else None
            ),
        )


def load_request(session: Session, request_id: int) -> AccessRequest:
    """The request's row; NotFound (with text for the person who asked) if there is none."""
    req = session.get(AccessRequest, request_id)
    if req is None:
        raise NotFound(f"There is no request #{request_id}.")
    return req


def snapshot(session: Session, req: AccessRequest) -> RequestSnapshot:
    """The request as it stands in this session, with its decisions and its review."""
    decisions = list(session.scalars(select(Decision).where(Decision.request_id == req.id)).all())
    review = session.scalars(select(Review).where(Review.request_id == req.id)).first()
    return RequestSnapshot.of(req, decisions, review)


def snapshots(session: Session, reqs: Sequence[AccessRequest]) -> list[RequestSnapshot]:
    """Snapshots of many requests with two queries in all, not two per request."""
    ids = [r.id for r in reqs]
    decisions: dict[int, list[Decision]] = defaultdict(list)
    reviews: dict[int, Review] = {}
    for start in range(0, len(ids), 500):  # bounded IN lists
        chunk = ids[start : start + 500]
        for d in session.scalars(select(Decision).where(Decision.request_id.in_(chunk))):
            decisions[d.request_id].append(d)
        for r in session.scalars(select(Review).where(Review.request_id.in_(chunk))):
            reviews.setdefault(r.request_id, r)
    return [RequestSnapshot.of(r, decisions[r.id], reviews.get(r.id)) for r in reqs]
