"""The request lifecycle: every use case is one method, with time from the injected clock.

State only changes through `app.service.transitions`. Adapter calls happen between
transactions: intent (`granting`, `revoking`) is committed before the target is touched and the
result after, so a crash in between is found and finished by `reconcile`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.adapters.base import Adapter, AdapterError
from app.clock import Clock, SystemClock
from app.policy import rules
from app.policy.durations import format_duration
from app.policy.model import BREAK_GLASS_PATH, Policy
from app.policy.people import Person, person_key, same_person
from app.service import transitions
from app.service.errors import (
    AlreadyDecided,
    InvalidRequest,
    NotAllowed,
    NotEligible,
    NotFound,
    SelfApproval,
)
from app.service.transitions import StaleState
from app.service.views import RequestView
from app.store.db import Database
from app.store.models import (
    HOLDING_STATES,
    AccessRequest,
    Decision,
    RequestState,
    Review,
    ReviewState,
)

log = logging.getLogger(__name__)
S = RequestState
T = TypeVar("T")

MIN_REASON_WORDS = 3
MAX_REASON_CHARS = 2000
_WORD = re.compile(r"\w{2,}")
_STALE_RETRIES = 8

_STATE_WORDS = {
    S.APPROVED: "has already been approved",
    S.GRANTING: "has already been approved and access is being set up",
    S.ACTIVE: "has already been approved and access is active",
    S.REVOKING: "is ending",
    S.ENDED: "has ended",
    S.DENIED: "has already been denied",
    S.CANCELLED: "was cancelled",
    S.TIMED_OUT: "timed out without a decision",
    S.GRANT_FAILED: "failed when access was being set up",
    S.REVOKE_FAILED: "is ending (removing access needs another try)",
}


@dataclass(frozen=True)
class ReconcileReport:
    granted: list[int] = field(default_factory=list)
    abandoned: list[int] = field(default_factory=list)
    revoked: list[int] = field(default_factory=list)
    still_failing: list[int] = field(default_factory=list)


class AccessService:
    """Use cases of the request lifecycle. Safe to share between threads and processes."""

    def __init__(
        self,
        db: Database,
        policy: Policy,
        adapters: Mapping[str, Adapter],
        clock: Clock | None = None,
    ) -> None:
        self.db = db
        self.policy = policy
        self.adapters = adapters
        self.clock: Clock = clock or SystemClock()

    # ----------------------------------------------------------------------------- requests

    def request(
        self,
        person: Person,
        target: str,
        role: str,
        duration: timedelta,
        reason: str,
        ticket: str | None = None,
        identity: str | None = None,
    ) -> RequestView:
        """Ask for `target:role` for `duration`; goes to the path's approvers as `pending`."""
        now = self.clock.now()
        plan = self._plan(person, target, role, now, identity=identity)
        reason = _clean_reason(reason)
        duration = _within_cap(duration, plan)
        ticket = self._ticket(plan.path, ticket)
        key = person_key(self.policy, person)
        with self.db.transaction() as session:
            self._refuse_duplicate(session, key, plan)
            req = AccessRequest(
                state=S.PENDING.value,
                requester=key,
                requester_slack_id=person.slack_user_id,
                requester_email=person.email,
                identity=identity,
                target=target,
                role=role,
                path=plan.path,
                entitlement=plan.entitlement,
                account=plan.account,
                reason=reason,
                ticket=ticket,
                requested_seconds=int(duration.total_seconds()),
                approvals_needed=plan.approvals_needed,
                approval_round=0,
                revoke_attempts=0,
            )
            transitions.create(
                session,
                req,
                at=now,
                actor=key,
                action="request.created",
                data={
                    "approvals_needed": plan.approvals_needed,
                    "approvers": rules.approvers_at(self.policy, plan.path, now),
                },
            )
            return self._view(session, req)

    def break_glass(
        self,
        person: Person,
        target: str,
        role: str,
        reason: str,
        duration: timedelta | None = None,
    ) -> RequestView:
        """Emergency access: granted at once within the break-glass cap, reviewed afterwards."""
        now = self.clock.now()
        plan = self._plan(person, target, role, now, break_glass=True)
        reason = _clean_reason(reason)
        duration = _within_cap(duration or plan.cap, plan)
        key = person_key(self.policy, person)
        review_within = self.policy.paths[BREAK_GLASS_PATH].review_within or timedelta(days=1)
        with self.db.read() as session:
            self._refuse_duplicate(session, key, plan)
        preexisting = self._preexisting(plan.target, plan.account, plan.entitlement)
        with self.db.transaction() as session:
            self._refuse_duplicate(session, key, plan)
            req = AccessRequest(
                state=S.GRANTING.value,
                requester=key,
                requester_slack_id=person.slack_user_id,
                requester_email=person.email,
                target=target,
                role=role,
                path=BREAK_GLASS_PATH,
                entitlement=plan.entitlement,
                account=plan.account,
                reason=reason,
                requested_seconds=int(duration.total_seconds()),
                approvals_needed=0,
                approval_round=0,
                revoke_attempts=0,
                decided_at=now,
                preexisting=preexisting,
            )
            transitions.create(
                session,
                req,
                at=now,
                actor=key,
                action="breakglass.started",
                data={
                    "review_due_at": now + review_within,
                    "reviewers": rules.reviewers(self.policy, now),
                    "preexisting": preexisting,
                },
            )
            session.add(
                Review(
                    request_id=req.id,
                    state=ReviewState.OPEN.value,
                    version=1,
                    due_at=now + review_within,
                )
            )
            request_id = req.id
        return self._finish_grant(request_id)

    # ---------------------------------------------------------------------------- decisions

    def approve(self, request_id: int, approver: Person) -> RequestView:
        """Record an approval; with enough distinct approvals the access is granted at once."""
        outcome = self._retrying(lambda: self._decide(request_id, approver, approve=True))
        if outcome.state == S.APPROVED:
            return self.grant(request_id)
        extended = outcome.state == S.ACTIVE and outcome.extension is None
        if extended and len(outcome.approvals) >= outcome.approvals_needed:
            self._refresh_target(outcome)
        return outcome

    def deny(self, request_id: int, approver: Person, reason: str) -> RequestView:
        cleaned = " ".join(reason.split())
        if not cleaned:
            raise InvalidRequest("Say why you are denying it, so the requester knows what to do.")
        return self._retrying(
            lambda: self._decide(request_id, approver, approve=False, reason=cleaned[:1000])
        )

    def _decide(
        self, request_id: int, approver: Person, *, approve: bool, reason: str | None = None
    ) -> RequestView:
        now = self.clock.now()
        with self.db.transaction() as session:
            req = self._load(session, request_id)
            in_extension = req.state == S.ACTIVE and req.extension_seconds is not None
            if req.state != S.PENDING and not in_extension:
                raise AlreadyDecided(f"Request #{req.id} {_STATE_WORDS[S(req.state)]}.")
            if self._is_requester(approver, req):
                raise SelfApproval("You cannot approve or deny your own request.")
            if not rules.is_approver(self.policy, req.path, approver, now):
                raise NotAllowed(
                    f"You are not an approver for the {req.path} path right now, so nothing "
                    "was changed."
                )
            key = person_key(self.policy, approver)
            earlier = session.scalars(
                select(Decision).where(
                    Decision.request_id == req.id, Decision.round == req.approval_round
                )
            ).all()
            if any(d.approver == key for d in earlier):
                raise AlreadyDecided(f"You have already decided on request #{req.id}.")
            session.add(
                Decision(
                    request_id=req.id,
                    round=req.approval_round,
                    approver=key,
                    approver_slack_id=approver.slack_user_id,
                    outcome="approve" if approve else "deny",
                    reason=reason,
                    decided_at=now,
                )
            )
            session.flush()
            approvals = sorted(
                {d.approver for d in earlier if d.outcome == "approve"}
                | ({key} if approve else set())
            )
            facts = {
                "approvals": approvals,
                "approvals_needed": req.approvals_needed,
                "decided_by": key,
            }
            if not approve:
                self._apply_denial(session, req, now, key, reason, in_extension, facts)
            elif len(approvals) < req.approvals_needed:
                transitions.transition(
                    session,
                    req,
                    S(req.state),
                    at=now,
                    actor=key,
                    action="extension.approval_recorded"
                    if in_extension
                    else "request.approval_recorded",
                    data=facts,
                )
            elif in_extension:
                self._apply_extension(session, req, now, key, req.extension_seconds or 0, facts)
            else:
                transitions.transition(
                    session,
                    req,
                    S.APPROVED,
                    at=now,
                    actor=key,
                    action="request.approved",
                    changes={"decided_at": now},
                    data=facts,
                )
            return self._view(session, req)

    def _apply_denial(
        self,
        session: Session,
        req: AccessRequest,
        now: datetime,
        key: str,
        reason: str | None,
        in_extension: bool,
        facts: dict[str, object],
    ) -> None:
        data = {**facts, "deny_reason": reason}
        if in_extension:
            transitions.transition(
                session,
                req,
                S.ACTIVE,
                at=now,
                actor=key,
                action="extension.denied",
                changes={"extension_seconds": None, "extension_requested_by": None},
                data=data,
            )
        else:
            transitions.transition(
                session,
                req,
                S.DENIED,
                at=now,
                actor=key,
                action="request.denied",
                changes={"decided_at": now, "ended_at": now, "end_reason": reason},
                data=data,
            )

    def cancel(self, request_id: int, person: Person) -> RequestView:
        """The requester withdraws a request that has not been granted yet."""

        def attempt() -> RequestView:
            now = self.clock.now()
            with self.db.transaction() as session:
                req = self._load(session, request_id)
                if not self._is_requester(person, req) and not rules.is_admin(self.policy, person):
                    raise NotAllowed("Only the person who asked can cancel this request.")
                if req.state not in (S.PENDING, S.APPROVED):
                    raise AlreadyDecided(f"Request #{req.id} {_STATE_WORDS[S(req.state)]}.")
                key = person_key(self.policy, person)
                transitions.transition(
                    session,
                    req,
                    S.CANCELLED,
                    at=now,
                    actor=key,
                    action="request.cancelled",
                    changes={"ended_at": now, "ended_by": key},
                )
                return self._view(session, req)

        return self._retrying(attempt)

    def time_out(self, request_id: int) -> RequestView | None:
        """Close a request nobody decided on within its path's time-out; None if not due."""
        now = self.clock.now()
        with self.db.transaction() as session:
            req = self._load(session, request_id)
            timeout = self.policy.paths[req.path].pending_timeout
            if req.state != S.PENDING or now < req.created_at + timeout:
                return None
            try:
                transitions.transition(
                    session,
                    req,
                    S.TIMED_OUT,
                    at=now,
                    actor="wardkey",
                    action="request.timed_out",
                    changes={"ended_at": now, "end_reason": "no decision in time"},
                    data={"waited_seconds": int((now - req.created_at).total_seconds())},
                )
            except StaleState:
                return None
            return self._view(session, req)

    def time_out_overdue(self) -> list[int]:
        now = self.clock.now()
        with self.db.read() as session:
            pending = session.execute(
                select(AccessRequest.id, AccessRequest.path, AccessRequest.created_at).where(
                    AccessRequest.state == S.PENDING.value
                )
            ).all()
        due = [
            rid
            for rid, path, created in pending
            if now >= created + self.policy.paths[path].pending_timeout
        ]
        return [rid for rid in due if self.time_out(rid) is not None]

    # -------------------------------------------------------------------------------- grant

    def grant(self, request_id: int) -> RequestView:
        """Give approved access on the target: record intent, call the adapter, record result."""
        with self.db.read() as session:
            req = self._load(session, request_id)
            if req.state != S.APPROVED:
                return self._view(session, req)
            target, account, entitlement = req.target, req.account, req.entitlement
        now = self.clock.now()
        try:
            preexisting = self._preexisting(target, account, entitlement)
        except AdapterError as exc:
            with self.db.transaction() as session:
                req = self._load(session, request_id)
                if req.state == S.APPROVED:
                    transitions.transition(
                        session,
                        req,
                        S.GRANT_FAILED,
                        at=now,
                        actor="wardkey",
                        action="grant.failed",
                        changes={"grant_detail": _describe(exc), "ended_at": now},
                        data={"error": _describe(exc), "transient": exc.transient},
                    )
                return self._view(session, req)
        try:
            with self.db.transaction() as session:
                req = self._load(session, request_id)
                if req.state != S.APPROVED:
                    return self._view(session, req)
                transitions.transition(
                    session,
                    req,
                    S.GRANTING,
                    at=now,
                    actor="wardkey",
                    action="grant.started",
                    changes={"preexisting": preexisting},
                    data={"preexisting": preexisting},
                )
        except StaleState:  # another worker is granting it
            return self.get(request_id)
        return self._finish_grant(request_id)

    def _finish_grant(self, request_id: int) -> RequestView:
        with self.db.read() as session:
            req = self._load(session, request_id)
            if req.state != S.GRANTING:
                return self._view(session, req)
        now = self.clock.now()
        until = now + timedelta(seconds=req.requested_seconds)
        adapter = self.adapters[req.target]
        try:
            result = adapter.grant(req.account, req.entitlement, until)
        except AdapterError as exc:
            log.warning(
                "event=grant_failed request=%s target=%s error=%s",
                req.id,
                req.target,
                _describe(exc),
            )
            return self._record(
                request_id,
                S.GRANTING,
                S.GRANT_FAILED,
                "grant.failed",
                changes={"grant_detail": _describe(exc), "ended_at": self.clock.now()},
                data={"error": _describe(exc), "transient": exc.transient},
            )
        return self._record(
            request_id,
            S.GRANTING,
            S.ACTIVE,
            "grant.succeeded",
            changes={"granted_at": now, "expires_at": until, "grant_detail": result.detail or None},
            data={
                "granted_at": now,
                "expires_at": until,
                "target_said_present": result.already_present,
            },
        )

    # ------------------------------------------------------------------------------- extend

    def extend(self, request_id: int, person: Person, duration: timedelta) -> RequestView:
        """Move the expiry later with no gap in access; high-risk paths ask approvers again."""
        if duration <= timedelta(0):
            raise InvalidRequest("An extension must be at least 1m.")

        def attempt() -> RequestView:
            now = self.clock.now()
            with self.db.transaction() as session:
                req = self._load(session, request_id)
                if not self._is_requester(person, req):
                    raise NotAllowed("Only the person holding this access can extend it.")
                if req.state != S.ACTIVE:
                    raise AlreadyDecided(
                        f"Request #{req.id} is not active, so it cannot be extended."
                    )
                if req.extension_seconds is not None:
                    raise AlreadyDecided(
                        f"An extension of request #{req.id} is already waiting for approval."
                    )
                if req.path == BREAK_GLASS_PATH:
                    raise NotAllowed("Break-glass access cannot be extended; use /jit request.")
                assert req.granted_at is not None and req.expires_at is not None
                cap = self._total_cap(req, person)
                new_total = req.expires_at + duration - req.granted_at
                if new_total > cap:
                    room = max(timedelta(0), cap - (req.expires_at - req.granted_at))
                    raise InvalidRequest(
                        f"That would make {format_duration(new_total)} in all; the limit for "
                        f"{req.target}:{req.role} is {format_duration(cap)}, so you can extend by "
                        f"at most {format_duration(room)}."
                    )
                key = person_key(self.policy, person)
                seconds = int(duration.total_seconds())
                facts = {"extension_seconds": seconds, "requested_by": key}
                if self.policy.paths[req.path].reapprove_extensions:
                    transitions.transition(
                        session,
                        req,
                        S.ACTIVE,
                        at=now,
                        actor=key,
                        action="extension.requested",
                        changes={
                            "extension_seconds": seconds,
                            "extension_requested_by": key,
                            "approval_round": req.approval_round + 1,
                        },
                        data={**facts, "approvers": rules.approvers_at(self.policy, req.path, now)},
                    )
                    return self._view(session, req)
                self._apply_extension(session, req, now, key, seconds, facts)
                return self._view(session, req)

        view = self._retrying(attempt)
        if view.extension is None:
            self._refresh_target(view)
        return view

    def _apply_extension(
        self,
        session: Session,
        req: AccessRequest,
        now: datetime,
        actor: str,
        seconds: int,
        facts: Mapping[str, object],
    ) -> None:
        assert req.expires_at is not None
        new_expiry = req.expires_at + timedelta(seconds=seconds)
        transitions.transition(
            session,
            req,
            S.ACTIVE,
            at=now,
            actor=actor,
            action="access.extended",
            changes={
                "expires_at": new_expiry,
                "extension_seconds": None,
                "extension_requested_by": None,
            },
            data={**facts, "previous_expires_at": req.expires_at, "new_expires_at": new_expiry},
        )

    def _refresh_target(self, view: RequestView) -> None:
        # Targets with expiring membership (AD TTL) need the new end; access never lapses here
        # because granting again is idempotent. If it fails the target may end access early,
        # which errs on the safe side; the expiry sweep still ends it in WardKey.
        if view.preexisting or view.expires_at is None:
            return
        try:
            self.adapters[view.target].grant(view.account, view.entitlement, view.expires_at)
        except AdapterError as exc:
            log.warning(
                "event=extension_refresh_failed request=%s error=%s", view.id, _describe(exc)
            )

    # ------------------------------------------------------------------------------- revoke

    def revoke(self, request_id: int, person: Person, reason: str = "") -> RequestView:
        """End access early: the holder, an approver of its path or an admin may do it."""
        now = self.clock.now()
        allowed = False

        def attempt() -> None:
            nonlocal allowed
            with self.db.transaction() as session:
                req = self._load(session, request_id)
                allowed = (
                    self._is_requester(person, req)
                    or rules.is_approver(self.policy, req.path, person, now)
                    or (
                        req.path == BREAK_GLASS_PATH and rules.is_reviewer(self.policy, person, now)
                    )
                    or rules.is_admin(self.policy, person)
                )
                if not allowed:
                    raise NotAllowed(
                        "Only the holder, an approver of its path or a WardKey admin can "
                        "revoke this."
                    )
                if req.state != S.ACTIVE:
                    raise AlreadyDecided(f"Request #{req.id} is not active.")
                key = person_key(self.policy, person)
                why = " ".join(reason.split()) or "revoked early"
                transitions.transition(
                    session,
                    req,
                    S.REVOKING,
                    at=now,
                    actor=key,
                    action="revoke.started",
                    changes={"ended_by": key, "end_reason": why, "extension_seconds": None},
                    data={"cause": "early", "note": why},
                )

        self._retrying(attempt)
        return self._finish_revoke(request_id)

    def expire(self, request_id: int) -> RequestView | None:
        """Revoke access whose time is up; None when it is not (or no longer) due."""
        now = self.clock.now()
        with self.db.transaction() as session:
            req = self._load(session, request_id)
            if req.state != S.ACTIVE or req.expires_at is None or req.expires_at > now:
                return None
            try:
                transitions.transition(
                    session,
                    req,
                    S.REVOKING,
                    at=now,
                    actor="wardkey",
                    action="revoke.started",
                    changes={
                        "ended_by": "wardkey",
                        "end_reason": "expired",
                        "extension_seconds": None,
                    },
                    data={"cause": "expired"},
                )
            except StaleState:
                return None
        return self._finish_revoke(request_id)

    def expire_due(self, limit: int = 500) -> list[int]:
        """Revoke every grant whose time is up (the expiry sweep calls this)."""
        now = self.clock.now()
        with self.db.read() as session:
            due = session.scalars(
                select(AccessRequest.id)
                .where(AccessRequest.state == S.ACTIVE.value, AccessRequest.expires_at <= now)
                .order_by(AccessRequest.expires_at)
                .limit(limit)
            ).all()
        return [rid for rid in due if self.expire(rid) is not None]

    def retry_revoke(self, request_id: int) -> RequestView:
        """Try a failed revoke again (the retry sweep calls this until it succeeds)."""
        now = self.clock.now()
        try:
            self._record(
                request_id,
                S.REVOKE_FAILED,
                S.REVOKING,
                "revoke.retried",
                data={"attempt": self.get(request_id).revoke_attempts + 1},
                at=now,
            )
        except AlreadyDecided:
            return self.get(request_id)
        return self._finish_revoke(request_id)

    def resolve_revoke_failure(self, request_id: int, person: Person, note: str) -> RequestView:
        """An admin confirms by hand that access is gone from the target."""
        if not rules.is_admin(self.policy, person):
            raise NotAllowed("Only a WardKey admin can mark a failed revoke as resolved.")
        cleaned = " ".join(note.split())
        if len(_WORD.findall(cleaned)) < MIN_REASON_WORDS:
            raise InvalidRequest("Say what you checked or did on the target, in a few words.")
        key = person_key(self.policy, person)
        return self._record(
            request_id,
            S.REVOKE_FAILED,
            S.ENDED,
            "revoke.resolved_by_person",
            actor=key,
            changes={"ended_at": self.clock.now(), "revoke_detail": cleaned},
            data={"note": cleaned},
        )

    def _finish_revoke(self, request_id: int) -> RequestView:
        with self.db.read() as session:
            req = self._load(session, request_id)
            if req.state != S.REVOKING:
                return self._view(session, req)
            other = self._other_holder(session, req)
        if req.preexisting or other is not None:
            why = (
                "access existed before this grant, so it was left in place"
                if req.preexisting
                else f"request #{other} still holds the same access, so it was left in place"
            )
            return self._record(
                request_id,
                S.REVOKING,
                S.ENDED,
                "revoke.succeeded",
                changes={"ended_at": self.clock.now(), "revoke_detail": why},
                data={"left_in_place": why},
            )
        adapter = self.adapters[req.target]
        try:
            result = adapter.revoke(req.account, req.entitlement)
            sessions = adapter.end_sessions(req.account)
            if adapter.check(req.account, req.entitlement):
                raise _StillPresent("the target still shows the access after the revoke")
        except (AdapterError, _StillPresent) as exc:
            transient = exc.transient if isinstance(exc, AdapterError) else False
            log.error(
                "event=revoke_failed request=%s target=%s error=%s",
                req.id,
                req.target,
                _describe(exc),
            )
            return self._record(
                request_id,
                S.REVOKING,
                S.REVOKE_FAILED,
                "revoke.failed",
                changes={
                    "revoke_detail": _describe(exc),
                    "revoke_attempts": req.revoke_attempts + 1,
                },
                data={
                    "error": _describe(exc),
                    "transient": transient,
                    "attempt": req.revoke_attempts + 1,
                },
            )
        return self._record(
            request_id,
            S.REVOKING,
            S.ENDED,
            "revoke.succeeded",
            changes={"ended_at": self.clock.now(), "revoke_detail": result.detail or None},
            data={
                "target_said_absent": result.already_absent,
                "sessions_ended": max(sessions, result.sessions_ended),
                "verified": True,
            },
        )

    # ------------------------------------------------------------------------------ reviews

    def decide_review(
        self, request_id: int, reviewer: Person, *, justified: bool, note: str
    ) -> RequestView:
        """A manager records whether a break-glass use was justified."""
        now = self.clock.now()
        cleaned = " ".join(note.split())
        if len(_WORD.findall(cleaned)) < MIN_REASON_WORDS:
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

    # ---------------------------------------------------------------------------- reconcile

    def reconcile(self) -> ReconcileReport:
        """Finish what a crash left half-done: approved, granting and revoking requests."""
        report = ReconcileReport()
        now = self.clock.now()
        with self.db.read() as session:
            rows = session.execute(
                select(
                    AccessRequest.id,
                    AccessRequest.state,
                    AccessRequest.state_changed_at,
                    AccessRequest.requested_seconds,
                )
                .where(
                    AccessRequest.state.in_([S.APPROVED.value, S.GRANTING.value, S.REVOKING.value])
                )
                .order_by(AccessRequest.id)
            ).all()
        for rid, state, since, seconds in rows:
            if state == S.REVOKING:
                view = self._finish_revoke(rid)
                (report.revoked if view.state == S.ENDED else report.still_failing).append(rid)
            elif state == S.GRANTING and now >= since + timedelta(seconds=seconds):
                # Too late to give the access now: make sure it is not on the target.
                self._abandon_grant(rid)
                report.abandoned.append(rid)
            else:
                view = self.grant(rid) if state == S.APPROVED else self._finish_grant(rid)
                if view.state == S.ACTIVE:
                    report.granted.append(rid)
        return report

    def _abandon_grant(self, request_id: int) -> RequestView:
        with self.db.read() as session:
            req = self._load(session, request_id)
            other = self._other_holder(session, req)
        detail = "interrupted before access was confirmed; its time has passed"
        try:
            if not req.preexisting and other is None:
                adapter = self.adapters[req.target]
                adapter.revoke(req.account, req.entitlement)
                adapter.end_sessions(req.account)
                detail += "; any access given was removed"
        except AdapterError as exc:
            detail += f"; removing it failed ({_describe(exc)}): check the target by hand"
        return self._record(
            request_id,
            S.GRANTING,
            S.GRANT_FAILED,
            "grant.failed",
            changes={"grant_detail": detail, "ended_at": self.clock.now()},
            data={"error": detail, "transient": False},
        )

    # -------------------------------------------------------------------------------- reads

    def get(self, request_id: int) -> RequestView:
        with self.db.read() as session:
            return self._view(session, self._load(session, request_id))

    def requests_of(
        self, person: Person, states: tuple[RequestState, ...] = ()
    ) -> list[RequestView]:
        key = person_key(self.policy, person)
        with self.db.read() as session:
            query = select(AccessRequest).where(AccessRequest.requester == key)
            if states:
                query = query.where(AccessRequest.state.in_([s.value for s in states]))
            rows = session.scalars(query.order_by(AccessRequest.id.desc()).limit(100)).all()
            return [self._view(session, r) for r in rows]

    # ------------------------------------------------------------------------------ helpers

    def _plan(
        self,
        person: Person,
        target: str,
        role: str,
        now: datetime,
        *,
        break_glass: bool = False,
        identity: str | None = None,
    ) -> rules.RequestPlan:
        try:
            plan = rules.plan_request(
                self.policy, person, target, role, now, break_glass=break_glass, identity=identity
            )
        except rules.PolicyRefusal as exc:
            raise NotEligible(str(exc)) from None
        if plan.target not in self.adapters:
            raise NotEligible(f"{target} is not connected to WardKey yet; ask a WardKey admin.")
        return plan

    def _ticket(self, path: str, ticket: str | None) -> str | None:
        try:
            return rules.check_ticket(self.policy, path, ticket)
        except rules.PolicyRefusal as exc:
            raise InvalidRequest(str(exc)) from None

    def _total_cap(self, req: AccessRequest, person: Person) -> timedelta:
        assert req.granted_at is not None
        limits = [self.policy.paths[req.path].total_cap]
        if req.identity is not None and req.identity in self.policy.identities:
            limits.append(self.policy.identities[req.identity].max_duration)
        vendor = rules.vendor_of(self.policy, person)
        if vendor is not None:
            limits.append(rules.contract_end_instant(self.policy, vendor) - req.granted_at)
        return min(limits)

    def _refuse_duplicate(self, session: Session, key: str, plan: rules.RequestPlan) -> None:
        open_states = [S.PENDING.value, S.APPROVED.value, *[s.value for s in HOLDING_STATES]]
        existing = session.scalars(
            select(AccessRequest).where(
                AccessRequest.requester == key,
                AccessRequest.target == plan.target,
                AccessRequest.role == plan.role,
                AccessRequest.account == plan.account,
                AccessRequest.state.in_(open_states),
            )
        ).first()
        if existing is not None:
            hint = (
                f" Use /jit extend {existing.id} <duration> for more time."
                if existing.state == S.ACTIVE
                else ""
            )
            raise InvalidRequest(
                f"You already have request #{existing.id} for {plan.target}:{plan.role} "
                f"({existing.state.replace('_', ' ')}).{hint}"
            )

    def _preexisting(self, target: str, account: str, entitlement: str) -> bool:
        """Does the target already give this access, other than through a grant of ours?"""
        if not self.adapters[target].check(account, entitlement):
            return False
        with self.db.read() as session:
            ours = session.scalar(
                select(func.count())
                .select_from(AccessRequest)
                .where(
                    AccessRequest.target == target,
                    AccessRequest.account == account,
                    AccessRequest.entitlement == entitlement,
                    AccessRequest.state.in_([s.value for s in HOLDING_STATES]),
                    AccessRequest.preexisting.is_not(True),
                )
            )
        return not ours

    def _other_holder(self, session: Session, req: AccessRequest) -> int | None:
        """Another live grant of the same access, which a revoke must not pull from under."""
        return session.scalar(
            select(AccessRequest.id)
            .where(
                AccessRequest.id != req.id,
                AccessRequest.target == req.target,
                AccessRequest.account == req.account,
                AccessRequest.entitlement == req.entitlement,
                AccessRequest.state.in_([S.GRANTING.value, S.ACTIVE.value]),
            )
            .limit(1)
        )

    def _is_requester(self, person: Person, req: AccessRequest) -> bool:
        requester = (
            Person(slack_user_id=req.requester_slack_id, email=req.requester_email)
            if (req.requester_slack_id or req.requester_email)
            else None
        )
        return person_key(self.policy, person) == req.requester or (
            requester is not None and same_person(self.policy, person, requester)
        )

    def _record(
        self,
        request_id: int,
        expected: RequestState,
        to: RequestState,
        action: str,
        *,
        actor: str = "wardkey",
        changes: Mapping[str, object] | None = None,
        data: Mapping[str, object] | None = None,
        at: datetime | None = None,
    ) -> RequestView:
        """Apply one transition in its own transaction, from a state the caller saw."""
        with self.db.transaction() as session:
            req = self._load(session, request_id)
            if req.state != expected:
                raise AlreadyDecided(
                    f"Request #{req.id} {_STATE_WORDS.get(S(req.state), 'changed')}."
                )
            try:
                transitions.transition(
                    session,
                    req,
                    to,
                    at=at or self.clock.now(),
                    actor=actor,
                    action=action,
                    changes=changes,
                    data=data,
                )
            except StaleState:
                raise AlreadyDecided(f"Request #{req.id} changed at the same moment.") from None
            return self._view(session, req)

    def _retrying(self, attempt: Callable[[], T]) -> T:
        """Run a decision again when a concurrent one changed the row first."""
        for _ in range(_STALE_RETRIES - 1):
            try:
                return attempt()
            except (StaleState, IntegrityError):
                continue
        return attempt()

    @staticmethod
    def _load(session: Session, request_id: int) -> AccessRequest:
        req = session.get(AccessRequest, request_id)
        if req is None:
            raise NotFound(f"There is no request #{request_id}.")
        return req

    @staticmethod
    def _view(session: Session, req: AccessRequest) -> RequestView:
        decisions = list(
            session.scalars(select(Decision).where(Decision.request_id == req.id)).all()
        )
        review = session.scalars(select(Review).where(Review.request_id == req.id)).first()
        return RequestView.of(req, decisions, review)


class _StillPresent(Exception):
    pass


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:1000]


def _clean_reason(reason: str) -> str:
    cleaned = " ".join(reason.split())
    if len(_WORD.findall(cleaned)) < MIN_REASON_WORDS:
        raise InvalidRequest(
            f"Give a reason of at least {MIN_REASON_WORDS} words, e.g. "
            '"fix stuck order set on ward 12".'
        )
    if len(cleaned) > MAX_REASON_CHARS:
        raise InvalidRequest(f"Keep the reason under {MAX_REASON_CHARS} characters.")
    return cleaned


def _within_cap(duration: timedelta, plan: rules.RequestPlan) -> timedelta:
    if duration <= timedelta(0):
        raise InvalidRequest("Ask for at least 1m.")
    if plan.cap <= timedelta(0):
        raise NotEligible(f"No time is left for {plan.target}:{plan.role} (contract ended).")
    if duration > plan.cap:
        raise InvalidRequest(
            f"{format_duration(duration)} is more than the {format_duration(plan.cap)} allowed "
            f"for {plan.target}:{plan.role}; ask for {format_duration(plan.cap)} or less."
        )
    return duration
