"""Access on the target: grant, extend, revoke, expire and reconcile.

Intent (`granting`, `revoking`) is committed before the adapter is called and the result after,
so a crash in between is found and finished by `reconcile`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from app.adapters.base import Adapter, AdapterError, BatchRevoker, RevokeResult
from app.lifecycle import eligibility, transitions
from app.lifecycle.deps import CoreDeps
from app.lifecycle.errors import (
    STATE_WORDS,
    AlreadyDecided,
    InvalidRequest,
    NotAllowed,
    NotEligible,
)
from app.lifecycle.leases import (
    holds_lease,
    keeping_leases,
    lease_values,
    lock_request,
    skip_locked,
)
from app.lifecycle.reads import Reads
from app.lifecycle.snapshots import RequestSnapshot, load_request, snapshot
from app.lifecycle.targets import StillPresent, describe_error
from app.lifecycle.transitions import StaleState, retry_when_stale
from app.lifecycle.validation import MAX_NOTE_CHARS, clean_note, clean_text
from app.policy import rules
from app.policy.durations import LONGEST, format_duration
from app.policy.model import BREAK_GLASS_PATH
from app.policy.people import Person, person_key
from app.store.db import is_database_error
from app.store.models import HOLDING_STATES, AccessRequest, RequestState

log = logging.getLogger(__name__)
OnDone = Callable[[int], None]
# A failed revoke is retried by the sweep after 30 s, 1 min, 2 min… and then every 15 min,
# for ever, until it succeeds or a WardKey admin marks it resolved.
REVOKE_RETRY_FIRST = timedelta(seconds=30)
REVOKE_RETRY_MAX = timedelta(minutes=15)
# Revokes leased, called on a target and recorded together: one batch call where the target
# has one (app/adapters/base.py BatchRevoker), and one transaction for their outcomes.
REVOKE_BATCH = 200
# Expiries go in smaller batches: several workers share a wave (each holds at most its lanes'
# worth of leases), and a worker that dies leaves few leases to take over.
EXPIRY_BATCH = 20
# An expiry on a target without batches: this many revokes, one after another, to a lane slot
# (each still one call per grant), so a lease takes more than one grant per slot.
EXPIRY_CHUNK = 5
# Outcomes of one-call-per-grant revokes recorded together (or fewer, once no call is left).
RECORD_EVERY = 25


@dataclass(frozen=True)
class ReconcileReport:
    granted: list[int] = field(default_factory=list)
    abandoned: list[int] = field(default_factory=list)
    revoked: list[int] = field(default_factory=list)
    still_failing: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class RevokeOutcome:
    """What a revoke on the target came to, to be recorded: ended, or failed."""

    to: RequestState
    action: str
    changes: dict[str, object]
    data: dict[str, object]
    at: datetime


def revoke_retry_wait(attempts: int) -> timedelta:
    """How long after its last failure a revoke is tried again."""
    doublings = min(max(attempts - 1, 0), 10)
    wait: timedelta = min(REVOKE_RETRY_FIRST * (2**doublings), REVOKE_RETRY_MAX)
    return wait


def window_start(req: AccessRequest, now: datetime) -> datetime:
    """When a grant's time starts: at the decision that let it go ahead."""
    return req.decided_at or req.created_at or now


class Probes:
    """What this process knows of targets with failed revokes: which it is asking now, and
    which failed to answer at the last question (so an answer means it came back)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._asking: set[str] = set()
        self._down: set[str] = set()

    def start(self, target: str) -> bool:
        with self._lock:
            if target in self._asking:
                return False  # the last question is still out (a hung target): no pile-up
            self._asking.add(target)
            return True

    def finish(self, target: str) -> None:
        with self._lock:
            self._asking.discard(target)

    def went_down(self, target: str) -> bool:
        """Record no answer; True the first time (so it is logged once)."""
        with self._lock:
            new = target not in self._down
            self._down.add(target)
            return new

    def came_back(self, target: str) -> bool:
        with self._lock:
            back = target in self._down
            self._down.discard(target)
            return back


class Grants:
    """Access on the target, over the core's dependencies and its reads."""

    def __init__(self, deps: CoreDeps, reads: Reads) -> None:
        self.deps = deps
        self.reads = reads
        self._probes = Probes()  # targets found down, and their probes in progress

    # -------------------------------------------------------------------------------- grant

    def grant(self, request_id: int) -> RequestSnapshot:
        """Give approved access on the target: record intent, call the adapter, record result."""
        with self.deps.db.read() as session:
            req = load_request(session, request_id)
            if req.state != RequestState.APPROVED:
                return snapshot(session, req)
            target, account, entitlement = req.target, req.account, req.entitlement
        now = self.deps.clock.now()
        try:
            preexisting = self.preexisting(target, account, entitlement)
        except AdapterError as exc:
            with self.deps.db.transaction() as session:
                req = load_request(session, request_id)
                if req.state == RequestState.APPROVED:
                    transitions.transition(
                        session,
                        req,
                        RequestState.GRANT_FAILED,
                        at=now,
                        actor="wardkey",
                        action="grant.failed",
                        changes={"grant_detail": describe_error(exc), "ended_at": now},
                        data={"error": describe_error(exc), "transient": exc.transient},
                    )
                return snapshot(session, req)
        try:
            with self.deps.db.transaction() as session:
                req = load_request(session, request_id)
                if req.state != RequestState.APPROVED:
                    return snapshot(session, req)
                refusal = eligibility.refusal_now(session, self.deps.policy, req, now)
                if refusal is not None:  # something changed since the approval
                    transitions.cancel(
                        session, req, at=now, actor="wardkey", why=refusal, cause="recheck_at_grant"
                    )
                    return snapshot(session, req)
                transitions.transition(
                    session,
                    req,
                    RequestState.GRANTING,
                    at=now,
                    actor="wardkey",
                    action="grant.started",
                    changes={
                        "preexisting": preexisting,
                        **lease_values(self.deps.worker, self.deps.lease, now),
                    },
                    data={"preexisting": preexisting, "worker": self.deps.worker},
                )
        except StaleState:  # another worker is granting it
            return self.reads.get(request_id)
        return self.finish_grant(request_id)

    def finish_grant(self, request_id: int) -> RequestSnapshot:
        """Call the target for a request in `granting` whose lease this worker holds, and
        record the result (a grant, a break-glass use, or one taken over)."""
        with keeping_leases(self.deps.heartbeat, request_id):
            return self._finish_grant_held(request_id)

    def _finish_grant_held(self, request_id: int) -> RequestSnapshot:
        now = self.deps.clock.now()
        with self.deps.db.read() as session:
            req = load_request(session, request_id)
            if req.state != RequestState.GRANTING or not holds_lease(req, self.deps.worker):
                return snapshot(session, req)
            # Checked again at the last moment: a grant taken over from a crashed worker may
            # come long after the approval.
            refusal = eligibility.refusal_now(session, self.deps.policy, req, now)
        if refusal is not None:
            return self._drop_grant(req, refusal, now)
        # The window runs from the decision, wherever and whenever the grant is finished: a
        # grant taken over from a crashed worker keeps its original end, not a fresh window.
        asked = window_start(req, now) + timedelta(seconds=req.requested_seconds)
        if asked <= now:
            return self._abandon_grant(request_id)
        # Never longer than the limits allow now: a vendor's access stops at the contract end
        # however late the approval came, and a cap lowered meanwhile applies.
        until = min(asked, now + eligibility.limits(self.deps.policy, req).cap_from(now))
        try:
            result = self.deps.call_target(
                req.target, lambda a: a.grant(req.account, req.entitlement, until)
            )
        except AdapterError as exc:
            log.warning(
                "event=grant_failed request=%s target=%s error=%s",
                req.id,
                req.target,
                describe_error(exc),
            )
            detail = describe_error(exc)
            if exc.transient:
                detail += self._undo_uncertain_grant(req)
            return self._record_target_result(
                request_id,
                RequestState.GRANTING,
                RequestState.GRANT_FAILED,
                "grant.failed",
                changes={"grant_detail": detail, "ended_at": self.deps.clock.now()},
                data={"error": detail, "transient": exc.transient},
            )
        return self._record_target_result(
            request_id,
            RequestState.GRANTING,
            RequestState.ACTIVE,
            "grant.succeeded",
            changes={"granted_at": now, "expires_at": until, "grant_detail": result.detail or None},
            data={
                "granted_at": now,
                "expires_at": until,
                "target_said_present": result.already_present,
                **({"shortened_to_limit": True, "asked_until": asked} if until < asked else {}),
            },
        )

    def _drop_grant(self, req: AccessRequest, why: str, now: datetime) -> RequestSnapshot:
        """A grant in progress whose requester may no longer have the access: take back what a
        crashed worker may already have given, and cancel it saying why."""
        detail = self._undo_uncertain_grant(req).removeprefix("; ")
        try:
            with self.deps.db.transaction() as session:
                current = load_request(session, req.id)
                if current.state == RequestState.GRANTING and holds_lease(
                    current, self.deps.worker
                ):
                    facts = {"target_cleanup": detail} if detail else {}
                    transitions.cancel(
                        session,
                        current,
                        at=now,
                        actor="wardkey",
                        why=why,
                        cause="recheck_at_grant",
                        facts=facts,
                    )
        except StaleState:
            pass  # another worker took it over and records it
        return self.reads.get(req.id)

    def _apply(
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
    ) -> RequestSnapshot:
        """Apply one transition in its own transaction, from the state the caller saw:
        AlreadyDecided (saying what became of the request) if it has moved on meanwhile.
        `_record_target_result` is the same for a target's answer, where moving on is no
        refusal."""
        with self.deps.db.transaction() as session:
            req = load_request(session, request_id)
            if req.state != expected:
                raise AlreadyDecided(
                    f"Request #{req.id} {STATE_WORDS.get(RequestState(req.state), 'changed')}."
                )
            try:
                transitions.transition(
                    session,
                    req,
                    to,
                    at=at or self.deps.clock.now(),
                    actor=actor,
                    action=action,
                    changes=changes,
                    data=data,
                )
            except StaleState:
                raise AlreadyDecided(f"Request #{req.id} changed at the same moment.") from None
            return snapshot(session, req)

    def _record_target_result(
        self,
        request_id: int,
        expected: RequestState,
        to: RequestState,
        action: str,
        *,
        changes: Mapping[str, object],
        data: Mapping[str, object],
    ) -> RequestSnapshot:
        """Record what the target said (`_apply`). If this worker's lease ran out and another
        took the work over, the other records it; the caller gets the request as it now
        stands."""
        try:
            return self._apply(request_id, expected, to, action, changes=changes, data=data)
        except AlreadyDecided:
            return self.reads.get(request_id)

    def preexisting(self, target: str, account: str, entitlement: str) -> bool:
        """Does the target already give this access, other than through a grant of ours?"""
        if not self.deps.call_target(target, lambda a: a.check(account, entitlement)):
            return False
        with self.deps.db.read() as session:
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
                AccessRequest.state.in_([RequestState.GRANTING.value, RequestState.ACTIVE.value]),
            )
            .limit(1)
        )

    def _undo_uncertain_grant(self, req: AccessRequest) -> str:
        """Take back access a failed or interrupted grant may have given (a time-out can hide a
        grant the target did make), so a grant WardKey calls failed leaves nothing behind;
        access held before, or by another live grant, stays. Says what happened, for the
        record."""
        with self.deps.db.read() as session:
            other = self._other_holder(session, req)
        if req.preexisting or other is not None:
            return ""
        try:
            self.deps.take_away(req.target, req.account, req.entitlement, read_back=False)
        except AdapterError as exc:
            return (
                f"; removing any access it may have given failed too ({describe_error(exc)}): "
                "check the target by hand"
            )
        return "; any access it may have given was removed"

    # ------------------------------------------------------------------------------- extend

    def extend(self, request_id: int, person: Person, duration: timedelta) -> RequestSnapshot:
        """Move the expiry later with no gap in access; high-risk paths ask approvers again."""
        if duration <= timedelta(0):
            raise InvalidRequest("An extension must be at least 1m.")
        if duration > LONGEST:  # beyond any cap, and date arithmetic would overflow
            raise InvalidRequest("An extension of more than a year is never allowed.")

        def attempt() -> RequestSnapshot:
            now = self.deps.clock.now()
            with self.deps.db.transaction() as session:
                req = load_request(session, request_id)
                if not eligibility.is_requester(self.deps.policy, person, req):
                    raise NotAllowed("Only the person holding this access can extend it.")
                if req.state != RequestState.ACTIVE:
                    raise AlreadyDecided(
                        f"Request #{req.id} is not active, so it cannot be extended."
                    )
                if req.extension_seconds is not None:
                    raise AlreadyDecided(
                        f"An extension of request #{req.id} is already waiting for approval."
                    )
                if req.path == BREAK_GLASS_PATH:
                    raise NotAllowed("Break-glass access cannot be extended; use /jit request.")
                refusal = eligibility.refusal_now(session, self.deps.policy, req, now)
                if refusal is not None:
                    raise NotEligible(refusal, field="access")
                self._refuse_beyond_limits(req, duration)
                key = person_key(self.deps.policy, person)
                seconds = int(duration.total_seconds())
                facts = {"extension_seconds": seconds, "requested_by": key}
                if self.deps.policy.paths[req.path].reapprove_extensions:
                    transitions.transition(
                        session,
                        req,
                        RequestState.ACTIVE,
                        at=now,
                        actor=key,
                        action="extension.requested",
                        changes={
                            "extension_seconds": seconds,
                            "extension_requested_by": key,
                            "approval_round": req.approval_round + 1,
                        },
                        data={
                            **facts,
                            "approvers": rules.approvers_at(self.deps.policy, req.path, now),
                        },
                    )
                    return snapshot(session, req)
                self._apply_extension(session, req, now, key, seconds, facts)
                return snapshot(session, req)

        view = retry_when_stale(attempt)
        if view.extension is None:
            self.refresh_target(view)
        return view

    def _refuse_beyond_limits(self, req: AccessRequest, duration: timedelta) -> None:
        """An extension may not take the grant past its limits (`rules.limits`)."""
        assert req.granted_at is not None and req.expires_at is not None
        latest = eligibility.limits(self.deps.policy, req).latest_expiry(req.granted_at)
        if req.expires_at + duration <= latest:
            return
        new_total = req.expires_at + duration - req.granted_at
        cap = latest - req.granted_at
        room = max(timedelta(0), latest - req.expires_at)
        raise InvalidRequest(
            f"That would make {format_duration(new_total)} in all; the limit for "
            f"{req.target}:{req.role} is {format_duration(cap)}, so you can extend by "
            f"at most {format_duration(room)}."
        )

    def approve_extension(
        self,
        session: Session,
        req: AccessRequest,
        now: datetime,
        actor: str,
        facts: Mapping[str, object],
    ) -> None:
        """The last approval of an extension: the holder and the limits are checked again (the
        policy may have changed while it waited); an extension the limits now cut short is
        shortened, one with no room left or for someone no longer allowed is refused."""
        assert req.granted_at is not None and req.expires_at is not None
        seconds = req.extension_seconds or 0
        why = eligibility.refusal_now(session, self.deps.policy, req, now)
        if why is None:
            latest = eligibility.limits(self.deps.policy, req).latest_expiry(req.granted_at)
            room = int((latest - req.expires_at).total_seconds())
            if room <= 0:
                why = f"{req.target}:{req.role} has reached its time limit; ask again if needed."
            elif room < seconds:
                facts = {**facts, "shortened_to_limit": True, "asked_seconds": seconds}
                seconds = room
        if why is None:
            self._apply_extension(session, req, now, actor, seconds, facts)
            return
        transitions.transition(
            session,
            req,
            RequestState.ACTIVE,
            at=now,
            actor="wardkey",
            action="extension.refused",
            changes={"extension_seconds": None, "extension_requested_by": None},
            data={**facts, "approved_by": actor, "why": why},
        )

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
            RequestState.ACTIVE,
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

    def refresh_target(self, view: RequestSnapshot) -> None:
        """Give the target the extended end of access it keeps itself (see below)."""
        # Targets with expiring membership (AD TTL) need the new end; access never lapses here
        # because granting again is idempotent. If it fails the target may end access early,
        # which errs on the safe side; the expiry sweep still ends it in WardKey.
        if view.preexisting or view.expires_at is None:
            return
        until = view.expires_at
        try:
            self.deps.call_target(
                view.target, lambda a: a.grant(view.account, view.entitlement, until)
            )
        except AdapterError as exc:
            log.warning(
                "event=extension_refresh_failed request=%s error=%s", view.id, describe_error(exc)
            )

    # ------------------------------------------------------------------------------- revoke

    def revoke(self, request_id: int, person: Person, reason: str = "") -> RequestSnapshot:
        """End access early: the holder, an approver of its path or an admin may do it."""
        now = self.deps.clock.now()
        why = "revoked early"
        if reason.strip():  # none given: the default; given: checked like any note
            why = clean_text(
                reason,
                what="reason",
                min_words=0,
                max_chars=MAX_NOTE_CHARS,
                too_short="Say why you are ending it.",
            )
        allowed = False

        def attempt() -> None:
            nonlocal allowed
            with self.deps.db.transaction() as session:
                req = load_request(session, request_id)
                allowed = (
                    eligibility.is_requester(self.deps.policy, person, req)
                    or rules.is_approver(self.deps.policy, req.path, person, now)
                    or (
                        req.path == BREAK_GLASS_PATH
                        and rules.is_reviewer(self.deps.policy, person, now)
                    )
                    or rules.is_admin(self.deps.policy, person)
                )
                if not allowed:
                    raise NotAllowed(
                        "Only the holder, an approver of its path or a WardKey admin can "
                        "revoke this."
                    )
                if req.state != RequestState.ACTIVE:
                    raise AlreadyDecided(f"Request #{req.id} is not active.")
                key = person_key(self.deps.policy, person)
                self.start_revokes(
                    session,
                    [req],
                    now,
                    actor=key,
                    why=why,
                    data={"cause": "early", "note": why, "worker": self.deps.worker},
                )

        retry_when_stale(attempt)
        return self._finish_revoke(request_id)

    def requester_of(self, req: AccessRequest) -> Person:
        """Who asked, as the policy is checked against."""
        return eligibility.requester(req)

    def end_access(
        self,
        request_id: int,
        why: str,
        cause: str,
        also: Callable[[Session, AccessRequest], None] | None = None,
        *,
        actor: str = "wardkey",
    ) -> bool:
        """End a request because its requester may no longer have it (a contract ended, a
        service account retired, its ticket closed, a leaver in the directory): a waiting one
        is cancelled, active access is revoked, and `why` is recorded for the requester and
        the audit trail, as done by `actor`. False if it had already moved on. `also`: more to
        write in the same transaction (a message to security)."""
        now = self.deps.clock.now()
        try:
            with self.deps.db.transaction() as session:
                req = lock_request(session, request_id)
                if req is None:
                    return False
                if req.state in (RequestState.PENDING, RequestState.APPROVED):
                    transitions.cancel(session, req, at=now, actor=actor, why=why, cause=cause)
                    if also is not None:
                        also(session, req)
                    return True
                if req.state != RequestState.ACTIVE:
                    return False
                if also is not None:
                    also(session, req)
                self.start_revokes(
                    session,
                    [req],
                    now,
                    actor=actor,
                    why=why,
                    data={"cause": cause, "note": why, "worker": self.deps.worker},
                )
        except StaleState:
            return False
        self._finish_revoke(request_id)
        return True

    def expire_due(
        self,
        batch: int = EXPIRY_BATCH,
        limit: int = 1000,
        *,
        wait: bool = True,
        on_done: OnDone | None = None,
        hold: float = 0.0,
    ) -> list[int]:
        """Revoke every grant whose time is up (the expiry sweep calls this). Leases a batch at
        a time, skipping rows other workers hold, so several workers share a wave of
        expiries; returns the requests it took. Each target's revokes run in that target's own
        lane (`revoke_leased`) and are recorded as they come, so a hung target delays only
        its own grants; a target whose lane is full is left for the next tick (or another
        worker). With `wait` it returns once they are recorded (ended, or failed and to be
        retried); without, once they are handed to the lanes, and `on_done` is called as each
        is recorded. `hold`: without `wait`, go on leasing for up to this long as lanes free
        up (a wave is not capped at one lane's worth per tick); with it, each batch is waited
        for anyway."""
        taken: list[int] = []
        until = time.monotonic() + hold
        while len(taken) < limit:
            work, others = self._lease_due(min(batch, limit - len(taken)))
            if not work:
                full = self.deps.lanes.full(self.deps.adapters)
                left = until - time.monotonic()
                if wait or not full or left <= 0 or not self._due_on(full):
                    break
                self.deps.lanes.wait_for_room(full, left)
                continue
            futures = self.revoke_leased(
                work, others, on_done=on_done, batch=EXPIRY_BATCH, chunk=EXPIRY_CHUNK
            )
            taken += [req.id for req in work]
            if wait:
                for future in futures:
                    future.result()
        return taken

    def _due_on(self, targets: list[str]) -> bool:
        """Is any grant on these targets due now (waiting for their lanes)?"""
        with self.deps.db.read() as session:
            return (
                session.scalar(
                    select(AccessRequest.id)
                    .where(
                        AccessRequest.state == RequestState.ACTIVE.value,
                        AccessRequest.expires_at <= self.deps.clock.now(),
                        AccessRequest.target.in_(targets),
                    )
                    .limit(1)
                )
                is not None
            )

    def _lease_due(self, batch: int) -> tuple[list[AccessRequest], dict[int, int | None]]:
        """Take up to `batch` due grants on targets whose lane has room, marked revoking in
        one statement (`transitions.transition_many`)."""
        now = self.deps.clock.now()
        full = self.deps.lanes.full(self.deps.adapters)
        query = select(AccessRequest).where(
            AccessRequest.state == RequestState.ACTIVE.value, AccessRequest.expires_at <= now
        )
        if full:
            query = query.where(AccessRequest.target.not_in(full))
        with self.deps.db.transaction() as session:
            due = session.scalars(
                skip_locked(query.order_by(AccessRequest.expires_at).limit(batch))
            ).all()
            # A lane slot takes one grant, or a whole batch where the target revokes in batches.
            room = {
                t: self.deps.lanes.room(t) * (EXPIRY_BATCH if self._batches(t) else EXPIRY_CHUNK)
                for t in {r.target for r in due}
            }
            work: list[AccessRequest] = []
            for req in due:
                if room[req.target] <= 0:
                    continue  # left active: the next tick takes it when the lane has room
                room[req.target] -= 1
                work.append(req)
            self.start_revokes(
                session,
                work,
                now,
                actor="wardkey",
                why="expired",
                data={"cause": "expired", "worker": self.deps.worker},
            )
            others = self.other_holders(session, work)
        return work, others

    def start_revokes(
        self,
        session: Session,
        reqs: list[AccessRequest],
        now: datetime,
        *,
        actor: str,
        why: str,
        data: Mapping[str, object],
        more: Mapping[str, object] | None = None,
    ) -> None:
        """Mark active grants revoking, with this worker's lease, in one statement: every
        revoke starts here (a holder's, an end of eligibility, an expiry wave, a lockdown)."""
        transitions.transition_many(
            session,
            reqs,
            RequestState.REVOKING,
            at=now,
            actor=actor,
            action="revoke.started",
            changes={
                "ended_by": actor,
                "end_reason": why,
                "extension_seconds": None,
                **(more or {}),
                **lease_values(self.deps.worker, self.deps.lease, now),
            },
            data=lambda _req: data,
        )

    def other_holders(self, session: Session, reqs: list[AccessRequest]) -> dict[int, int | None]:
        """`_other_holder` of each request, in one query per target."""
        found: dict[int, int | None] = {r.id: None for r in reqs}
        by_target: dict[str, list[AccessRequest]] = {}
        for req in reqs:
            by_target.setdefault(req.target, []).append(req)
        for target, rows in by_target.items():
            ids = {r.id for r in rows}
            for start in range(0, len(rows), 500):
                chunk = rows[start : start + 500]
                holders = session.execute(
                    select(AccessRequest.id, AccessRequest.account, AccessRequest.entitlement)
                    .where(
                        AccessRequest.target == target,
                        AccessRequest.account.in_({r.account for r in chunk}),
                        AccessRequest.state.in_(
                            [RequestState.GRANTING.value, RequestState.ACTIVE.value]
                        ),
                    )
                    .order_by(AccessRequest.id)
                ).all()
                held: dict[tuple[str, str], int] = {}
                for rid, account, entitlement in holders:
                    if rid not in ids:
                        held.setdefault((account, entitlement), rid)
                for req in chunk:
                    found[req.id] = held.get((req.account, req.entitlement))
        return found

    def _batches(self, target: str) -> bool:
        """Does this target's adapter take many revokes in one call (and has not said no)?"""
        adapter = self.deps.adapters.get(target)
        return isinstance(adapter, BatchRevoker) and getattr(adapter, "batches", True)

    def revoke_leased(
        self,
        reqs: list[AccessRequest],
        others: Mapping[int, int | None],
        *,
        on_done: OnDone | None = None,
        on_recorded: Callable[[list[int]], None] | None = None,
        batch: int = REVOKE_BATCH,
        chunk: int = 1,
    ) -> list[Future[None]]:
        """Take away on their targets grants this worker holds the lease on (revoking), each target
        in its own lane: in batches of REVOKE_BATCH where the target has a batch call (one
        call, then one read of who still holds the entitlement; `batch` at most to a call and
        to a lane slot), else one call per grant (`chunk` of them, one after another, to a
        lane slot),
        `concurrency` at once. Outcomes are recorded as they come, many to a transaction
        (`_record_outcomes`); `on_done(id)` after each is recorded, `on_recorded(ids)` after
        each transaction. The futures end when everything is recorded."""
        by_target: dict[str, list[AccessRequest]] = {}
        for req in reqs:
            by_target.setdefault(req.target, []).append(req)
        futures: list[Future[None]] = []
        for target, rows in by_target.items():
            recorder = _Recorder(self._record_outcomes, len(rows), on_done, on_recorded)
            if self.deps.heartbeat is not None:
                self.deps.heartbeat.hold([r.id for r in rows])
            size = min(batch, REVOKE_BATCH) if self._batches(target) else chunk
            work = self._batch_job if self._batches(target) else self._one_job
            for start in range(0, len(rows), size):
                job = self._job(work, rows[start : start + size], others, recorder)
                futures.append(self.deps.lanes.submit(target, job))
        return futures

    def _job(
        self,
        work: Callable[[list[AccessRequest], Mapping[int, int | None], _Recorder], None],
        reqs: list[AccessRequest],
        others: Mapping[int, int | None],
        recorder: _Recorder,
    ) -> Callable[[], None]:
        def run() -> None:
            began = self.deps.db.outage.call_began()
            try:
                work(reqs, others, recorder)
            except Exception as exc:
                # Left revoking: its lease lapses and it is taken over, so log and go on.
                recorder.lost(len(reqs))
                self._log_failure("expiry", exc)
                return
            finally:
                if self.deps.heartbeat is not None:
                    self.deps.heartbeat.release([r.id for r in reqs])
            self.deps.db.outage.answered(began)

        return run

    def _one_job(
        self, reqs: list[AccessRequest], others: Mapping[int, int | None], recorder: _Recorder
    ) -> None:
        for req in reqs:
            recorder.add([(req.id, self._revoke_on_target(req, others.get(req.id)))])

    def _batch_job(
        self, reqs: list[AccessRequest], others: Mapping[int, int | None], recorder: _Recorder
    ) -> None:
        outcomes = self._revoke_batch_on_target(reqs, others)
        if outcomes is None:  # the target has no batch call after all: one call per grant
            outcomes = [(r.id, self._revoke_on_target(r, others.get(r.id))) for r in reqs]
        recorder.add(outcomes)

    def _revoke_batch_on_target(
        self, reqs: list[AccessRequest], others: Mapping[int, int | None]
    ) -> list[tuple[int, RevokeOutcome]] | None:
        """`_revoke_on_target` for many grants on one target in one batch call, then one read
        of each entitlement's holders to check the access is gone. None if the target has no
        batch call. A failure of the whole call fails each grant (retried like any)."""
        target = reqs[0].target
        outcomes: dict[int, RevokeOutcome] = {}
        calls: list[AccessRequest] = []
        for req in reqs:
            if req.preexisting or others.get(req.id) is not None:
                outcomes[req.id] = self._revoke_on_target(req, others.get(req.id))
            else:
                calls.append(req)
        if calls:
            items = [(r.account, r.entitlement) for r in calls]
            answers: list[RevokeResult | AdapterError] | None
            holders: dict[str, set[str]] = {}
            try:
                answers = self.deps.call_target(
                    target, lambda a: _batch_revoker(a).revoke_many(items)
                )
                if answers is None:
                    return None
                for entitlement in sorted({r.entitlement for r in calls}):
                    holders[entitlement] = self.deps.call_target(target, _members_of(entitlement))
            except AdapterError as exc:
                answers = [exc] * len(calls)
            for req, answer in zip(calls, answers, strict=True):
                outcomes[req.id] = self._batch_outcome(req, answer, holders)
        return [(r.id, outcomes[r.id]) for r in reqs]

    def _batch_outcome(
        self,
        req: AccessRequest,
        answer: RevokeResult | AdapterError,
        holders: Mapping[str, set[str]],
    ) -> RevokeOutcome:
        if isinstance(answer, AdapterError):
            return self._revoke_failure(req, answer)
        if req.account in holders.get(req.entitlement, set()):
            return self._revoke_failure(
                req, StillPresent("the target still shows the access after the revoke")
            )
        now = self.deps.clock.now()
        return RevokeOutcome(
            RequestState.ENDED,
            "revoke.succeeded",
            changes={"ended_at": now, "revoke_detail": answer.detail or None},
            data={
                "target_said_absent": answer.already_absent,
                "sessions_ended": answer.sessions_ended,
                "verified": True,
                "batch": True,
            },
            at=now,
        )

    def warn_expiring(self, limit: int = 500) -> list[int]:
        """Mark the grants whose path's `warn_before` has begun as warned about their current
        expiry, once each (an extension makes a new warning due); returns their numbers, for
        the holder to be told. Two workers never warn twice: it is a conditional update."""
        now = self.deps.clock.now()
        horizon = now + max(p.warn_before for p in self.deps.policy.paths.values())
        with self.deps.db.read() as session:
            rows = session.execute(
                select(
                    AccessRequest.id,
                    AccessRequest.path,
                    AccessRequest.expires_at,
                    AccessRequest.expiry_warned_for,
                )
                .where(
                    AccessRequest.state == RequestState.ACTIVE.value,
                    AccessRequest.expires_at > now,
                    AccessRequest.expires_at <= horizon,
                )
                .order_by(AccessRequest.expires_at)
                .limit(limit)
            ).all()
        due = [
            rid
            for rid, path, expires, warned in rows
            if warned != expires and now >= expires - self.deps.policy.paths[path].warn_before
        ]
        return [rid for rid in due if self._mark_warned(rid, now)]

    def _mark_warned(self, request_id: int, now: datetime) -> bool:
        try:
            with self.deps.db.transaction() as session:
                req = lock_request(session, request_id)
                if (
                    req is None
                    or req.state != RequestState.ACTIVE
                    or req.expiry_warned_for == req.expires_at
                ):
                    return False
                transitions.transition(
                    session,
                    req,
                    RequestState.ACTIVE,
                    at=now,
                    actor="wardkey",
                    action="expiry.warned",
                    changes={"expiry_warned_for": req.expires_at},
                    data={"expires_at": req.expires_at},
                )
        except StaleState:  # another worker warned it, or it changed meanwhile
            return False
        return True

    def retry_revoke(self, request_id: int) -> RequestSnapshot:
        """Try a failed revoke again (the retry sweep calls this until it succeeds)."""
        now = self.deps.clock.now()
        try:
            self._apply(
                request_id,
                RequestState.REVOKE_FAILED,
                RequestState.REVOKING,
                "revoke.retried",
                changes=lease_values(self.deps.worker, self.deps.lease, now),
                data={
                    "attempt": self.reads.get(request_id).revoke_attempts + 1,
                    "worker": self.deps.worker,
                },
                at=now,
            )
        except AlreadyDecided:
            return self.reads.get(request_id)
        return self._finish_revoke(request_id)

    def retry_revokes_due(self, *, wait: bool = True, on_done: OnDone | None = None) -> list[int]:
        """Try again every failed revoke whose back-off is over, each in its target's lane;
        returns those tried (with `wait`, once each try is recorded)."""
        return self._retry_in_lanes(self.revoke_retries_due(), wait=wait, on_done=on_done)

    def _retry_in_lanes(self, ids: list[int], *, wait: bool, on_done: OnDone | None) -> list[int]:
        with self.deps.db.read() as session:
            rows = session.execute(
                select(AccessRequest.id, AccessRequest.target).where(AccessRequest.id.in_(ids))
            ).all()
        targets = {rid: target for rid, target in rows}
        futures: list[Future[None]] = []
        for rid in ids:

            def run(rid: int = rid) -> None:
                self.retry_revoke(rid)
                if on_done is not None:
                    on_done(rid)

            call = run if wait else self._logged("revoke_retry", run)
            futures.append(self.deps.lanes.submit(targets[rid], call))
        if wait:
            for future in futures:
                future.result()
        return ids

    def probe_failing_targets(
        self, *, wait: bool = True, on_done: OnDone | None = None
    ) -> dict[str, bool]:
        """Ask each target with failed revokes a cheap question (does this account hold this
        access?), once, with no retries; each target in its own thread, at most one question
        at a time per target. A target that failed to answer before and answers now has its
        failed revokes tried again at once, whatever their back-off. Returns, for the
        targets asked and answered by now, whether each answered."""
        with self.deps.db.read() as session:
            rows = session.execute(
                select(AccessRequest.target, AccessRequest.account, AccessRequest.entitlement)
                .where(AccessRequest.state == RequestState.REVOKE_FAILED.value)
                .order_by(AccessRequest.state_changed_at)
            ).all()
        samples: dict[str, tuple[str, str]] = {}
        for target, account, entitlement in rows:
            samples.setdefault(target, (account, entitlement))
        probes = self._probes
        threads: list[threading.Thread] = []
        answers: dict[str, bool] = {}
        for target, (account, entitlement) in samples.items():
            if target not in self.deps.adapters or not probes.start(target):
                continue

            def probe(target: str = target, account: str = account, ent: str = entitlement) -> None:
                try:
                    answers[target] = self._probe(target, account, ent, probes, on_done)
                finally:
                    probes.finish(target)

            thread = threading.Thread(target=probe, name=f"probe-{target}"[:40], daemon=True)
            thread.start()
            threads.append(thread)
        if wait:
            for thread in threads:
                thread.join()
        return answers

    def _probe(
        self, target: str, account: str, entitlement: str, probes: Probes, on_done: OnDone | None
    ) -> bool:
        try:
            self.deps.adapters[target].check(account, entitlement)
        except AdapterError as exc:
            if probes.went_down(target):
                log.warning(
                    "event=target_unreachable target=%s error=%s", target, describe_error(exc)
                )
            return False
        if probes.came_back(target):
            with self.deps.db.read() as session:
                ids = list(
                    session.scalars(
                        select(AccessRequest.id)
                        .where(
                            AccessRequest.state == RequestState.REVOKE_FAILED.value,
                            AccessRequest.target == target,
                        )
                        .order_by(AccessRequest.id)
                    )
                )
            log.warning("event=target_back target=%s failed_revokes=%s", target, len(ids))
            self._retry_in_lanes(ids, wait=True, on_done=on_done)
        return True

    def revoke_retries_due(self, limit: int = 500) -> list[int]:
        """Failed revokes whose next try is due: 30 s after the first failure, doubling to one
        try every 15 minutes, never giving up."""
        now = self.deps.clock.now()
        with self.deps.db.read() as session:
            rows = session.execute(
                select(
                    AccessRequest.id, AccessRequest.state_changed_at, AccessRequest.revoke_attempts
                )
                .where(AccessRequest.state == RequestState.REVOKE_FAILED.value)
                .order_by(AccessRequest.state_changed_at)
                .limit(limit)
            ).all()
        return [rid for rid, since, attempts in rows if now >= since + revoke_retry_wait(attempts)]

    def resolve_revoke_failure(self, request_id: int, person: Person, note: str) -> RequestSnapshot:
        """An admin confirms by hand that access is gone from the target."""
        if not rules.is_admin(self.deps.policy, person):
            raise NotAllowed("Only a WardKey admin can mark a failed revoke as resolved.")
        cleaned = clean_note(note, "Say what you checked or did on the target, in a few words.")
        key = person_key(self.deps.policy, person)
        return self._apply(
            request_id,
            RequestState.REVOKE_FAILED,
            RequestState.ENDED,
            "revoke.resolved_by_person",
            actor=key,
            changes={"ended_at": self.deps.clock.now(), "revoke_detail": cleaned},
            data={"note": cleaned},
        )

    def _finish_revoke(self, request_id: int) -> RequestSnapshot:
        with self.deps.db.read() as session:
            req = load_request(session, request_id)
            if req.state != RequestState.REVOKING or not holds_lease(req, self.deps.worker):
                return snapshot(session, req)
            other = self._other_holder(session, req)
        with keeping_leases(self.deps.heartbeat, request_id):
            outcome = self._revoke_on_target(req, other)
        return self._record_target_result(
            request_id,
            RequestState.REVOKING,
            outcome.to,
            outcome.action,
            changes=outcome.changes,
            data=outcome.data,
        )

    def _revoke_on_target(self, req: AccessRequest, other: int | None) -> RevokeOutcome:
        """Take the access away on the target and read it back; says what to record. Access
        that existed before the grant, or that another live grant holds, is left in place."""
        if req.preexisting or other is not None:
            why = (
                "access existed before this grant, so it was left in place"
                if req.preexisting
                else f"request #{other} still holds the same access, so it was left in place"
            )
            now = self.deps.clock.now()
            return RevokeOutcome(
                RequestState.ENDED,
                "revoke.succeeded",
                changes={"ended_at": now, "revoke_detail": why},
                data={"left_in_place": why},
                at=now,
            )
        try:
            result, sessions = self.deps.take_away(req.target, req.account, req.entitlement)
        except (AdapterError, StillPresent) as exc:
            return self._revoke_failure(req, exc)
        now = self.deps.clock.now()
        return RevokeOutcome(
            RequestState.ENDED,
            "revoke.succeeded",
            changes={"ended_at": now, "revoke_detail": result.detail or None},
            data={
                "target_said_absent": result.already_absent,
                "sessions_ended": max(sessions, result.sessions_ended),
                "verified": True,
            },
            at=now,
        )

    def _revoke_failure(
        self, req: AccessRequest, exc: AdapterError | StillPresent
    ) -> RevokeOutcome:
        transient = exc.transient if isinstance(exc, AdapterError) else False
        log.error(
            "event=revoke_failed request=%s target=%s error=%s",
            req.id,
            req.target,
            describe_error(exc),
        )
        return RevokeOutcome(
            RequestState.REVOKE_FAILED,
            "revoke.failed",
            changes={
                "revoke_detail": describe_error(exc),
                "revoke_attempts": req.revoke_attempts + 1,
            },
            data={
                "error": describe_error(exc),
                "transient": transient,
                "attempt": req.revoke_attempts + 1,
            },
            at=self.deps.clock.now(),
        )

    def _record_outcomes(self, outcomes: list[tuple[int, RevokeOutcome]]) -> list[int]:
        """Record a batch's results in one transaction (one commit, not one per grant), those
        with the same changes in one statement; a row another worker took over meanwhile is
        left to that worker. Returns those recorded."""
        try:
            return self._record_together(outcomes)
        except StaleState:  # one changed under us: the others one by one
            recorded: list[int] = []
            for one in outcomes:
                try:
                    recorded += self._record_together([one])
                except StaleState:
                    continue
            return recorded

    def _record_together(self, outcomes: list[tuple[int, RevokeOutcome]]) -> list[int]:
        ids = [rid for rid, _ in outcomes]
        recorded: list[int] = []
        with self.deps.db.transaction() as session:
            # Locked in id order, as the heartbeat locks the leases it renews: two multi-row
            # writes that took the same rows in different orders could deadlock.
            rows = {
                r.id: r
                for r in session.scalars(
                    select(AccessRequest)
                    .where(AccessRequest.id.in_(ids))
                    .order_by(AccessRequest.id)
                    .with_for_update()
                )
            }
            groups: dict[str, list[tuple[AccessRequest, RevokeOutcome]]] = {}
            for rid, outcome in outcomes:
                req = rows.get(rid)
                if (
                    req is None
                    or req.state != RequestState.REVOKING
                    or not holds_lease(req, self.deps.worker)
                ):
                    continue
                changes = sorted(outcome.changes.items())
                same = repr((outcome.to, outcome.action, outcome.at, changes))
                groups.setdefault(same, []).append((req, outcome))
            for group in groups.values():
                first = group[0][1]
                data = {req.id: outcome.data for req, outcome in group}
                transitions.transition_many(
                    session,
                    [req for req, _ in group],
                    first.to,
                    at=first.at,
                    actor="wardkey",
                    action=first.action,
                    changes=first.changes,
                    data=lambda req, data=data: data[req.id],  # type: ignore[misc]
                )
                recorded += [req.id for req, _ in group]
        return recorded

    # ---------------------------------------------------------------------------- reconcile

    def reconcile(self, *, wait: bool = True, on_done: OnDone | None = None) -> ReconcileReport:
        """Finish what a crashed worker left half-done: approved requests never granted, and
        grants or revokes whose worker's lease ran out. Each is leased before it is touched,
        so two workers reconciling at once never both call the target. Revokes run in their
        target's lane; without `wait` they are not waited for (`on_done` says when each is
        recorded) and are not in the report."""
        report = ReconcileReport()
        now = self.deps.clock.now()
        revokes: list[tuple[int, Future[RequestSnapshot]]] = []
        for rid, state, started, seconds, target in self._take_over_stalled(now):
            if state == RequestState.REVOKING:
                revokes.append((rid, self._finish_revoke_in_lane(rid, target, on_done)))
            elif state == RequestState.GRANTING and now >= started + timedelta(seconds=seconds):
                # Too late to give the access now: make sure it is not on the target.
                self._abandon_grant(rid)
                report.abandoned.append(rid)
            else:
                view = self.grant(rid) if state == RequestState.APPROVED else self.finish_grant(rid)
                if view.state == RequestState.ACTIVE:
                    report.granted.append(rid)
        if wait:
            for rid, future in revokes:
                ended = future.result().state == RequestState.ENDED
                (report.revoked if ended else report.still_failing).append(rid)
        return report

    def _finish_revoke_in_lane(
        self, request_id: int, target: str, on_done: OnDone | None
    ) -> Future[RequestSnapshot]:
        if self.deps.heartbeat is not None:  # held from the take-over, even while it queues
            self.deps.heartbeat.hold([request_id])

        def run() -> RequestSnapshot:
            began = self.deps.db.outage.call_began()
            try:
                view = self._finish_revoke(request_id)
            except Exception as exc:
                self._log_failure("takeover", exc)
                raise
            finally:
                if self.deps.heartbeat is not None:
                    self.deps.heartbeat.release([request_id])
            self.deps.db.outage.answered(began)
            if on_done is not None:
                on_done(request_id)
            return view

        return self.deps.lanes.submit(target, run)

    def _log_failure(self, where: str, exc: Exception) -> None:
        """A database outage is logged once (and its end), anything else with its traceback."""
        if is_database_error(exc):
            self.deps.db.outage.failed(where, exc)
        else:
            log.exception("event=%s_failed", where)

    def _logged(self, where: str, call: Callable[[], None]) -> Callable[[], None]:
        """`call` for a lane nobody waits on: what goes wrong is logged, not lost."""

        def run() -> None:
            began = self.deps.db.outage.call_began()
            try:
                call()
            except Exception as exc:
                self._log_failure(where, exc)
                return
            self.deps.db.outage.answered(began)

        return run

    def _take_over_stalled(
        self, now: datetime, limit: int = 200
    ) -> list[tuple[int, RequestState, datetime, int, str]]:
        stalled_work = and_(
            AccessRequest.state.in_([RequestState.GRANTING.value, RequestState.REVOKING.value]),
            or_(AccessRequest.claimed_until.is_(None), AccessRequest.claimed_until <= now),
        )
        # An approval commits before its grant starts; one left that long had its worker die.
        stalled_approval = and_(
            AccessRequest.state == RequestState.APPROVED.value,
            AccessRequest.state_changed_at <= now - self.deps.lease,
        )
        taken: list[tuple[int, RequestState, datetime, int, str]] = []
        with self.deps.db.transaction() as session:
            rows = session.scalars(
                skip_locked(
                    select(AccessRequest)
                    .where(or_(stalled_work, stalled_approval))
                    .order_by(AccessRequest.id)
                    .limit(limit)
                )
            ).all()
            for req in rows:
                state = RequestState(req.state)
                started = window_start(req, now)
                if state in (RequestState.GRANTING, RequestState.REVOKING):
                    verb = "grant" if state == RequestState.GRANTING else "revoke"
                    transitions.transition(
                        session,
                        req,
                        state,
                        at=now,
                        actor="wardkey",
                        action=f"{verb}.taken_over",
                        changes=lease_values(self.deps.worker, self.deps.lease, now),
                        data={"from_worker": req.claimed_by, "worker": self.deps.worker},
                    )
                taken.append((req.id, state, started, req.requested_seconds, req.target))
        return taken

    def _abandon_grant(self, request_id: int) -> RequestSnapshot:
        with self.deps.db.read() as session:
            req = load_request(session, request_id)
        detail = "interrupted before access was confirmed; its time has passed"
        with keeping_leases(self.deps.heartbeat, request_id):
            detail += self._undo_uncertain_grant(req)
        return self._record_target_result(
            request_id,
            RequestState.GRANTING,
            RequestState.GRANT_FAILED,
            "grant.failed",
            changes={"grant_detail": detail, "ended_at": self.deps.clock.now()},
            data={"error": detail, "transient": False},
        )


def _members_of(entitlement: str) -> Callable[[Adapter], set[str]]:
    return lambda adapter: adapter.list_members(entitlement)


def _batch_revoker(adapter: Adapter) -> BatchRevoker:
    assert isinstance(adapter, BatchRevoker)
    return adapter


class _Recorder:
    """Outcomes of one target's revokes of one lease, recorded many to a transaction: every
    RECORD_EVERY, and whatever is left once the last call is done (or lost)."""

    def __init__(
        self,
        record: Callable[[list[tuple[int, RevokeOutcome]]], list[int]],
        expected: int,
        on_done: OnDone | None,
        on_recorded: Callable[[list[int]], None] | None,
    ) -> None:
        self.record = record  # Grants._record_outcomes: one transaction for the batch
        self.left = expected
        self.on_done = on_done
        self.on_recorded = on_recorded
        self._lock = threading.Lock()
        self._pending: list[tuple[int, RevokeOutcome]] = []

    def add(self, outcomes: list[tuple[int, RevokeOutcome]]) -> None:
        with self._lock:
            self._pending += outcomes
            self.left -= len(outcomes)
            if len(self._pending) < RECORD_EVERY and self.left > 0:
                return
            batch, self._pending = self._pending, []
        self._write(batch)

    def lost(self, count: int) -> None:
        """Calls that raised: nothing to record of them (they are taken over later)."""
        with self._lock:
            self.left -= count
            if self.left > 0 or not self._pending:
                return
            batch, self._pending = self._pending, []
        self._write(batch)

    def _write(self, batch: list[tuple[int, RevokeOutcome]]) -> None:
        recorded = self.record(batch)
        if self.on_recorded is not None:
            self.on_recorded(recorded)
        if self.on_done is not None:
            for rid in recorded:
                self.on_done(rid)
