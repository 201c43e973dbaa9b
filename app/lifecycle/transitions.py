"""The one place where requests and reviews change state.

Every change is a conditional UPDATE (`WHERE id = :id AND state = :expected AND version = :seen`)
followed by exactly one audit event, in the caller's transaction. If another click, delivery or
worker got there first, the UPDATE matches no row and `StaleState` is raised, so nothing is
applied twice.

Each change also writes a notice to the outbox in the same transaction: what happened (the
action), to which request, at which version. It names no message and no Slack channel; the
deliverer (app/notify) decides who is told what and sends it later, so a message is never lost
to a crash or a Slack outage and a grant or revoke never waits for Slack.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import and_, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from app import audit
from app.store.models import (
    AccessRequest,
    OutboxItem,
    OutboxState,
    RequestState,
    Review,
    ReviewState,
)

# States in which a worker is calling a target: they are always entered with a lease
# (`claimed_by`, `claimed_until`), so a crashed worker's work is found and taken over.
LEASED_STATES = frozenset({RequestState.GRANTING, RequestState.REVOKING})
ALLOWED: dict[RequestState, frozenset[RequestState]] = {
    # pending -> pending records one approval of several (N-of-M); the version still moves.
    # pending -> granting: a held break-glass use confirmed by a second person (granted at once).
    RequestState.PENDING: frozenset(
        {
            RequestState.PENDING,
            RequestState.APPROVED,
            RequestState.GRANTING,
            RequestState.DENIED,
            RequestState.CANCELLED,
            RequestState.TIMED_OUT,
        }
    ),
    RequestState.APPROVED: frozenset(
        {RequestState.GRANTING, RequestState.CANCELLED, RequestState.GRANT_FAILED}
    ),
    # granting -> granting and revoking -> revoking: a worker takes over a crashed one's lease.
    # granting -> cancelled: the requester may no longer have it (checked just before the grant).
    RequestState.GRANTING: frozenset(
        {
            RequestState.GRANTING,
            RequestState.ACTIVE,
            RequestState.GRANT_FAILED,
            RequestState.CANCELLED,
        }
    ),
    # active -> active: an extension asked for, approved, denied or applied.
    RequestState.ACTIVE: frozenset({RequestState.ACTIVE, RequestState.REVOKING}),
    RequestState.REVOKING: frozenset(
        {RequestState.REVOKING, RequestState.ENDED, RequestState.REVOKE_FAILED}
    ),
    RequestState.REVOKE_FAILED: frozenset({RequestState.REVOKING, RequestState.ENDED}),
}


T = TypeVar("T")
# How often a decision is tried again when concurrent ones keep changing the row first.
STALE_RETRIES = 8


class StaleState(Exception):
    """The row changed since it was read; the caller re-reads and decides again."""


def retry_when_stale(attempt: Callable[[], T]) -> T:
    """Run a decision again (it re-reads the row) when a concurrent one changed the row
    first, or inserted the same unique row first; the last try's error is raised."""
    for _ in range(STALE_RETRIES - 1):
        try:
            return attempt()
        except (StaleState, IntegrityError):
            continue
    return attempt()


def request_facts(req: AccessRequest) -> dict[str, Any]:
    """What every request event says: who, what, where, why, on which path, until when."""
    return {
        "requester": req.requester,
        "requester_slack_id": req.requester_slack_id,
        "identity": req.identity,
        "target": req.target,
        "role": req.role,
        "account": req.account,
        "path": req.path,
        "reason": req.reason,
        "ticket": req.ticket,
        "requested_seconds": req.requested_seconds,
        "expires_at": req.expires_at,
    }


def notice(
    session: Session,
    request_id: int,
    version: int,
    *,
    at: datetime,
    action: str,
    facts: Mapping[str, Any],
) -> None:
    """Record in the outbox, in the caller's transaction, that `action` happened to the request
    (one lane per request, so its messages go out in the order things happened)."""
    session.add(_notice_row(f"request:{request_id}", action, facts, at, request_id, version))


def announce(
    session: Session, lane: str, action: str, facts: Mapping[str, Any], *, at: datetime
) -> None:
    """Record in the outbox, in the caller's transaction, something that happened to no one
    request (a digest sent, standing access found, an owner asked to attest), so the message
    about it cannot be lost between the change's commit and its sending."""
    session.add(_notice_row(lane, action, facts, at, None, 0))


def _notice_row(
    lane: str,
    action: str,
    facts: Mapping[str, Any],
    at: datetime,
    request_id: int | None,
    version: int,
) -> OutboxItem:
    return OutboxItem(
        lane=lane,
        kind="notice",
        action=action,
        request_id=request_id,
        version=version,
        body=json.dumps(dict(facts), default=str),
        state=OutboxState.NEW.value,
        created_at=at,
        due_at=at,
        attempts=0,
        uncertain=False,
        step=0,
    )


def _facts(req: AccessRequest, actor: str, **more: object) -> dict[str, object]:
    """What the deliverer needs to know of the request as it was at this version."""
    return {
        "actor": actor,
        "to": req.state,
        "path": req.path,
        "revoke_attempts": req.revoke_attempts,
        "escalation_level": req.escalation_level,
        **more,
    }


def create(
    session: Session,
    req: AccessRequest,
    *,
    at: datetime,
    actor: str,
    action: str,
    data: Mapping[str, Any] | None = None,
) -> AccessRequest:
    """Insert a new request with its creation event."""
    if RequestState(req.state) in LEASED_STATES and req.claimed_until is None:
        raise ValueError(f"a request created {req.state} needs a lease")
    req.version = 1
    req.created_at = req.state_changed_at = at
    session.add(req)
    session.flush()
    audit.append(
        session,
        at=at,
        action=action,
        actor=actor,
        request_id=req.id,
        data={"to": req.state, **request_facts(req), **(data or {})},
    )
    notice(session, req.id, req.version, at=at, action=action, facts=_facts(req, actor))
    return req


def transition(
    session: Session,
    req: AccessRequest,
    to: RequestState,
    *,
    at: datetime,
    actor: str,
    action: str,
    changes: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
) -> AccessRequest:
    """Move `req` from the state it was read in to `to`, or raise StaleState."""
    given = data or {}
    moved = transition_many(
        session, [req], to, at=at, actor=actor, action=action, changes=changes, data=lambda _: given
    )
    return moved[0]


def cancel(
    session: Session,
    req: AccessRequest,
    *,
    at: datetime,
    actor: str,
    why: str,
    cause: str,
    facts: Mapping[str, object] | None = None,
) -> None:
    """End a request that was never granted, saying why for the requester, the approvers
    and the audit trail (`end_reason` is shown on the card and in the requester's DM)."""
    transition(
        session,
        req,
        RequestState.CANCELLED,
        at=at,
        actor=actor,
        action="request.cancelled",
        changes={"ended_at": at, "ended_by": actor, "end_reason": why, "end_cause": cause},
        data={**(facts or {}), "by": actor, "cause": cause, "why": why},
    )


def transition_many(
    session: Session,
    reqs: Sequence[AccessRequest],
    to: RequestState,
    *,
    at: datetime,
    actor: str,
    action: str,
    changes: Mapping[str, Any] | None = None,
    data: Callable[[AccessRequest], Mapping[str, Any]] | None = None,
) -> list[AccessRequest]:
    """Move requests, all read in the same state, to `to` with the same changes (`transition`
    is the one-request case): one conditional UPDATE (`WHERE (id, version) IN … AND state =
    :expected`) and one append of their audit events to the chain, instead of one of each per
    request (a lockdown or a wave of expiries moves hundreds at once). `data(req)` gives each
    one's own audit data. If any row changed since it was read, StaleState is raised and the
    caller's transaction, rolled back, applies none of them."""
    if not reqs:
        return []
    current = RequestState(reqs[0].state)
    for req in reqs:
        _check_move(req, current, to, action, changes)
    values = {**(changes or {}), "state": to.value, "state_changed_at": at}
    if len(reqs) == 1:  # the usual case, found by its primary key
        read_as = and_(AccessRequest.id == reqs[0].id, AccessRequest.version == reqs[0].version)
        stale = f"request {reqs[0].id} changed while {action} was being applied"
    else:
        read_as = tuple_(AccessRequest.id, AccessRequest.version).in_(
            [(r.id, r.version) for r in reqs]
        )
        stale = f"{action}: a request changed while it was being applied"
    result = session.execute(
        update(AccessRequest)
        .where(read_as, AccessRequest.state == current.value)
        .values(**values, version=AccessRequest.version + 1)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != len(reqs):  # type: ignore[attr-defined]
        raise StaleState(stale)
    entries = []
    for req in reqs:
        for key, value in {**values, "version": req.version + 1}.items():
            set_committed_value(req, key, value)
        entries.append(
            audit.Entry(
                at=at,
                action=action,
                actor=actor,
                request_id=req.id,
                data={
                    "from": current.value,
                    "to": to.value,
                    **request_facts(req),
                    **(data(req) if data is not None else {}),
                },
            )
        )
    audit.append_many(session, entries)
    session.add_all(
        _notice_row(
            f"request:{req.id}",
            action,
            _facts(req, actor, **{"from": current.value}),
            at,
            req.id,
            req.version,
        )
        for req in reqs
    )
    return list(reqs)


def _check_move(
    req: AccessRequest,
    current: RequestState,
    to: RequestState,
    action: str,
    changes: Mapping[str, Any] | None,
) -> None:
    if RequestState(req.state) != current or to not in ALLOWED.get(current, frozenset()):
        raise ValueError(f"illegal transition {req.state} -> {to} for request {req.id}")
    if to in LEASED_STATES and "claimed_until" not in (changes or {}):
        raise ValueError(f"{action} moves request {req.id} to {to} without a lease")


def _update_review(session: Session, review: Review, values: Mapping[str, Any]) -> None:
    """Apply `values` to an open review still at the version read, or raise StaleState."""
    result = session.execute(
        update(Review)
        .where(
            Review.id == review.id,
            Review.state == ReviewState.OPEN.value,
            Review.version == review.version,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise StaleState(f"review of request {review.request_id} changed or was decided")
    for key, value in values.items():
        set_committed_value(review, key, value)


def follow_up_review(
    session: Session,
    review: Review,
    *,
    at: datetime,
    action: str,
    changes: Mapping[str, Any],
    data: Mapping[str, Any] | None = None,
) -> Review:
    """Record that an open review was sent to its reviewers, reminded or escalated."""
    if review.state != ReviewState.OPEN:
        raise ValueError(f"review of request {review.request_id} is closed")
    _update_review(session, review, {**changes, "version": review.version + 1})
    audit.append(
        session,
        at=at,
        action=action,
        actor="wardkey",
        request_id=review.request_id,
        data={"due_at": review.due_at, **(data or {})},
    )
    notice(
        session,
        review.request_id,
        review.version,
        at=at,
        action=action,
        facts={"actor": "wardkey", "review": True},
    )
    return review


def decide_review(
    session: Session,
    review: Review,
    to: ReviewState,
    *,
    at: datetime,
    actor: str,
    note: str,
    data: Mapping[str, Any] | None = None,
) -> Review:
    """Close an open break-glass review, or raise StaleState if someone else closed it first."""
    if review.state != ReviewState.OPEN or to == ReviewState.OPEN:
        raise ValueError(f"illegal review transition {review.state} -> {to}")
    values = {
        "state": to.value,
        "version": review.version + 1,
        "reviewer": actor,
        "note": note,
        "decided_at": at,
    }
    _update_review(session, review, values)
    audit.append(
        session,
        at=at,
        action="review.decided",
        actor=actor,
        request_id=review.request_id,
        data={"outcome": to.value, "note": note, "due_at": review.due_at, **(data or {})},
    )
    notice(
        session,
        review.request_id,
        review.version,
        at=at,
        action="review.decided",
        facts={"actor": actor, "review": True},
    )
    return review
