"""What every use case shares: the dependencies, reads, policy look-ups and one-step
transitions."""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import socket
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.adapters.base import Adapter, AdapterError, RevokeResult
from app.clock import Clock, SystemClock
from app.lifecycle import transitions
from app.lifecycle.errors import (
    AlreadyDecided,
    InvalidRequest,
    NotEligible,
    NotFound,
)
from app.lifecycle.leases import Heartbeat, TargetLanes
from app.lifecycle.snapshots import RequestView
from app.lifecycle.transitions import StaleState
from app.lifecycle.validation import refuse_control_characters
from app.policy import rules
from app.policy.model import BREAK_GLASS_PATH, Policy
from app.policy.people import Person, person_key, same_person
from app.policy.tickets import TicketFacts, unanswered
from app.policy.tickets import refusal as ticket_refusal
from app.store.db import Database
from app.store.models import (
    HOLDING_STATES,
    OPEN_STATES,
    AccessRequest,
    Attestation,
    AuditEvent,
    Decision,
    HomeView,
    Lockdown,
    RequestMessage,
    RequestState,
    Review,
    SweepRun,
)
from app.tickets import TicketDesk, TicketNotFound, TicketUnreadable, down_message

log = logging.getLogger(__name__)
T = TypeVar("T")
T_row = TypeVar("T_row", bound=tuple[Any, ...])

DEFAULT_PENDING_TIMEOUT = timedelta(hours=24)
# Outcomes of a service account's attestation round.
STILL_NEEDED = "still_needed"
RETIRED = "retired"
_STALE_RETRIES = 8
RETRY_BASE_SECONDS = 0.25  # first wait up to 0.5 s, then 1 s, 2 s… (full jitter)
RETRY_CAP_SECONDS = 8.0
# A failed revoke is retried by the sweep after 30 s, 1 min, 2 min… and then every 15 min,
# for ever, until it succeeds or a WardKey admin marks it resolved.
REVOKE_RETRY_FIRST = timedelta(seconds=30)
REVOKE_RETRY_MAX = timedelta(minutes=15)
# How long a worker's claim on a grant or revoke in progress lasts unless renewed. A worker with
# a heartbeat renews its claims every third of this while it calls the target, however long the
# call takes; so a crashed worker's work is taken over about this long after it died.
DEFAULT_LEASE = timedelta(seconds=10)
# AccessRequest.escalation_level past "escalated" (2): no approver could be reached, so the
# request was escalated at once and security and the admins told (the sweep adds nothing more).
UNREACHABLE = 3

STATE_WORDS = {
    RequestState.APPROVED: "has already been approved",
    RequestState.GRANTING: "has already been approved and access is being set up",
    RequestState.ACTIVE: "has already been approved and access is active",
    RequestState.REVOKING: "is ending",
    RequestState.ENDED: "has ended",
    RequestState.DENIED: "has already been denied",
    RequestState.CANCELLED: "was cancelled",
    RequestState.TIMED_OUT: "timed out without a decision",
    RequestState.GRANT_FAILED: "failed when access was being set up",
    RequestState.REVOKE_FAILED: "is ending (removing access needs another try)",
}


def latest_attestation(session: Session, name: str) -> Attestation | None:
    """A service account's latest attestation round (app/identities opens and answers them)."""
    return session.scalars(
        select(Attestation)
        .where(Attestation.identity == name)
        .order_by(Attestation.id.desc())
        .limit(1)
    ).first()


class ServiceBase:
    """Dependencies and helpers of the use cases (see AccessService)."""

    def __init__(
        self,
        db: Database,
        policy: Policy,
        adapters: Mapping[str, Adapter],
        clock: Clock | None = None,
        pause: Callable[[float], None] = time.sleep,
        *,
        worker: str | None = None,
        lease: timedelta = DEFAULT_LEASE,
        concurrency: int = 8,
        heartbeat: bool = False,
        tickets: TicketDesk | None = None,
    ) -> None:
        self.db = db
        self.policy = policy
        self.adapters = adapters
        self.clock: Clock = clock or SystemClock()
        self.pause = pause  # waits between adapter retries; tests pass one that only records
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.lease = lease
        self.concurrency = concurrency  # calls a sweep makes at once on any one target
        self.lanes = TargetLanes(concurrency)
        # Processes renew their claims while they work; tests on a ManualClock need not.
        self.heartbeat = Heartbeat(self) if heartbeat else None
        # Reads tickets in the systems paths name (ServiceNow, Jira) and writes notes on them.
        self.tickets = tickets or TicketDesk()

    @contextmanager
    def _holding(self, *request_ids: int) -> Iterator[None]:
        """Keep this worker's claims on these rows alive while it works on them."""
        if self.heartbeat is None:
            yield
            return
        self.heartbeat.hold(request_ids)
        try:
            yield
        finally:
            self.heartbeat.release(request_ids)

    def _lease(self, now: datetime) -> dict[str, object]:
        """The claim a worker takes when it starts calling a target for a request."""
        return {"claimed_by": self.worker, "claimed_until": now + self.lease}

    def _claim(self, query: Select[T_row]) -> Select[T_row]:
        """Lock the rows a sweep takes; rows another worker holds are skipped, not waited for.
        (SQLite has no row locks: its single writer and the conditional update suffice.)"""
        return query.with_for_update(skip_locked=True)

    def _on_target(self, target: str, operation: Callable[[Adapter], T]) -> T:
        """Call the target's adapter, retrying transient failures with exponential back-off and
        full jitter (so workers retrying together do not hit a recovering target at once), up
        to the target's `attempts`; the last error is raised."""
        adapter = self.adapters[target]
        attempts = self.policy.targets[target].attempts
        for attempt in range(1, attempts + 1):
            try:
                return operation(adapter)
            except AdapterError as exc:
                if not exc.transient or attempt == attempts:
                    raise
                delay = random.uniform(0, min(RETRY_CAP_SECONDS, RETRY_BASE_SECONDS * 2**attempt))
                log.warning(
                    "event=adapter_retry target=%s attempt=%s wait=%.2f error=%s",
                    target,
                    attempt,
                    delay,
                    describe_error(exc),
                )
                self.pause(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _take_away(
        self, target: str, account: str, entitlement: str, *, read_back: bool = True
    ) -> tuple[RevokeResult, int]:
        """Remove the access on the target and end the account's live sessions, then (unless
        `read_back` is False) read the target back: StillPresent if it still shows the access.
        Returns the target's answer and how many sessions it said it ended. Every removal
        (expiry, revoke, lockdown, standing access, an uncertain grant undone) goes through
        here, so none of them can forget the sessions or the read-back."""
        result = self._on_target(target, lambda a: a.revoke(account, entitlement))
        sessions = self._on_target(target, lambda a: a.end_sessions(account))
        if read_back and self._on_target(target, lambda a: a.check(account, entitlement)):
            raise StillPresent("the target still shows the access after the revoke")
        return result, sessions

    # -------------------------------------------------------------------------------- reads

    def get(self, request_id: int) -> RequestView:
        with self.db.read() as session:
            return self._view(session, self._load(session, request_id))

    def requests_of(
        self, person: Person, states: tuple[RequestState, ...] = ()
    ) -> list[RequestView]:
        return self.requests_of_key(person_key(self.policy, person), states)

    def requests_of_key(self, key: str, states: tuple[RequestState, ...] = ()) -> list[RequestView]:
        """The newest 100 requests of the person with this key, optionally in these states."""
        with self.db.read() as session:
            query = select(AccessRequest).where(AccessRequest.requester == key)
            if states:
                query = query.where(AccessRequest.state.in_([s.value for s in states]))
            rows = session.scalars(query.order_by(AccessRequest.id.desc()).limit(100)).all()
            return self._views(session, rows)

    def awaiting_decision_by(self, person: Person, limit: int = 25) -> list[RequestView]:
        """Requests this person may decide on now, longest waiting first: pending ones, and
        extensions awaiting approval, on paths they approve at this instant, that they did not
        ask for and have not decided yet."""
        now = self.clock.now()
        key = person_key(self.policy, person)
        # Paths first, so the query reads only requests this person could decide.
        paths = [p for p in self.policy.paths if rules.is_approver(self.policy, p, person, now)]
        # Vendors' requests wait for their sponsor too, whatever the path.
        sponsoring = [
            v.sponsor
            for v in self.policy.vendors.values()
            if rules.is_member(self.policy, person, [v.sponsor])
        ]
        if not paths and not sponsoring:
            return []
        decided_by_me = select(Decision.id).where(
            Decision.request_id == AccessRequest.id,
            Decision.approver == key,
            Decision.round == AccessRequest.approval_round,
        )
        with self.db.read() as session:
            rows = session.scalars(
                select(AccessRequest)
                .where(
                    AccessRequest.path.in_(paths)
                    | (
                        AccessRequest.sponsor.in_(sponsoring)
                        & (AccessRequest.state == RequestState.PENDING.value)
                    ),
                    AccessRequest.requester != key,
                    ~decided_by_me.exists(),
                    (AccessRequest.state == RequestState.PENDING.value)
                    | (
                        (AccessRequest.state == RequestState.ACTIVE.value)
                        & AccessRequest.extension_seconds.is_not(None)
                    ),
                )
                .order_by(AccessRequest.id)
                .limit(limit + 20)  # room for requests filed under another account of mine
            ).all()
            mine = [r for r in rows if not self._is_requester(person, r)]
            return self._views(session, mine[:limit])

    def elevations_since(self, requester: str, since: datetime) -> int:
        """How many grants this person (by person key) received since `since`."""
        with self.db.read() as session:
            return int(
                session.scalar(
                    select(func.count()).where(
                        AccessRequest.requester == requester, AccessRequest.granted_at >= since
                    )
                )
                or 0
            )

    def messages_of(self, request_id: int, purpose: str) -> list[tuple[str, str]]:
        with self.db.read() as session:
            rows = session.execute(
                select(RequestMessage.channel, RequestMessage.ts)
                .where(RequestMessage.request_id == request_id, RequestMessage.purpose == purpose)
                .order_by(RequestMessage.id)
            ).all()
        return [(channel, ts) for channel, ts in rows]

    def approvers_unreachable(self, request_id: int, why: str) -> RequestView | None:
        """Slack could reach none of a waiting request's approvers (nobody on duty has a
        current Slack account, or Slack refused every card for good): record it, once, and
        escalate at once rather than at the SLA, so the escalation group may decide. The
        notice this writes tells the requester, the escalation group, security and the
        admins. None if the request no longer waits for approval or this was recorded."""
        now = self.clock.now()
        with self.db.transaction() as session:
            req = session.get(AccessRequest, request_id)
            if req is None or req.escalation_level >= UNREACHABLE:
                return None
            waiting = req.state == RequestState.PENDING or (
                req.state == RequestState.ACTIVE and req.extension_seconds is not None
            )
            if not waiting:
                return None
            try:
                transitions.transition(
                    session,
                    req,
                    RequestState(req.state),
                    at=now,
                    actor="wardkey",
                    action="approval.unreachable",
                    changes={"escalation_level": UNREACHABLE},
                    data={
                        "why": why[:500],
                        "escalated_to": rules.escalation_members(self.policy, req.path),
                    },
                )
            except StaleState:
                return None  # it changed meanwhile (decided, or recorded by another process)
            return self._view(session, req)

    def nobody_to_approve(self, why: Callable[[str], str]) -> list[int]:
        """Requests waiting for approval on a path that now names nobody (a rota whose source
        has not been read within stale_after, and no one else on the path): each recorded
        as unreachable once and escalated at once (`approvers_unreachable`), rather than left
        with cards nobody may act on. `why(path)` says why, for the audit and the alerts."""
        now = self.clock.now()
        paths = [
            name
            for name in self.policy.paths
            if name != BREAK_GLASS_PATH and not rules.approvers_at(self.policy, name, now)
        ]
        if not paths:
            return []
        with self.db.read() as session:
            rows = session.execute(
                select(AccessRequest.id, AccessRequest.path)
                .where(
                    AccessRequest.path.in_(paths),
                    AccessRequest.escalation_level < UNREACHABLE,
                    (AccessRequest.state == RequestState.PENDING.value)
                    | (
                        (AccessRequest.state == RequestState.ACTIVE.value)
                        & AccessRequest.extension_seconds.is_not(None)
                    ),
                )
                .order_by(AccessRequest.id)
            ).all()
        return [rid for rid, path in rows if self.approvers_unreachable(rid, why(path))]

    def unreachable_reason(self, request_id: int) -> str:
        """Why no approver of this request could be reached, as `approvers_unreachable`
        recorded it (the latest time)."""
        with self.db.read() as session:
            body = session.scalar(
                select(AuditEvent.body)
                .where(
                    AuditEvent.request_id == request_id,
                    AuditEvent.action == "approval.unreachable",
                )
                .order_by(AuditEvent.seq.desc())
                .limit(1)
            )
        data = (json.loads(body).get("data") or {}) if body else {}
        return str(data.get("why") or "nobody could be reached")

    def remember_home_opened(self, slack_user_id: str) -> None:
        insert = sqlite_insert if self.db.is_sqlite else postgres_insert
        now = self.clock.now()
        with self.db.transaction() as session:
            session.execute(
                insert(HomeView)
                .values(slack_user_id=slack_user_id, opened_at=now)
                .on_conflict_do_update(index_elements=["slack_user_id"], set_={"opened_at": now})
            )

    def recent_home_viewers(self, slack_user_ids: set[str], within: timedelta) -> set[str]:
        """Those of these people who opened the App Home within `within`."""
        if not slack_user_ids:
            return set()
        with self.db.read() as session:
            return set(
                session.scalars(
                    select(HomeView.slack_user_id).where(
                        HomeView.slack_user_id.in_(slack_user_ids),
                        HomeView.opened_at > self.clock.now() - within,
                    )
                )
            )

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
            raise NotEligible(str(exc), field="access") from None
        if plan.target not in self.adapters:
            raise NotEligible(
                f"{target} is not connected to WardKey yet; ask a WardKey admin.", field="access"
            )
        with self.db.read() as session:  # refused before anything else, even the target
            locked = self._lockdown_refusal(session, plan.target)
        if locked is not None:
            raise NotEligible(locked, field="access")
        return plan

    def _lockdown_refusal(self, session: Session, target: str) -> str | None:
        """Why nobody may have access to `target` now: it is locked down (app/lockdown), until
        a security admin lifts it. None when it is not."""
        found = session.scalars(
            select(Lockdown).where(Lockdown.target == target, Lockdown.lifted_at.is_(None))
        ).first()
        if found is None:
            return None
        since = found.started_at.astimezone(self.policy.zone)
        return (
            f"🔒 {target} is locked down by security (since {since:%H:%M %d %b}): "
            f"{found.reason}. Nobody can ask for, extend or break glass on it until a security "
            "admin lifts the lockdown."
        )

    def _ticket(self, path: str, ticket: str | None) -> str | None:
        refuse_control_characters(ticket or "", "ticket", "ticket")
        try:
            return rules.check_ticket(self.policy, path, ticket)
        except rules.PolicyRefusal as exc:
            raise InvalidRequest(str(exc), field="ticket") from None

    def _checked_ticket(self, path: str, ticket: str | None, person: Person) -> TicketFacts | None:
        """The ticket as the path's ticket system has it, when the path names one; refused
        (InvalidRequest on the ticket field) when it is not there, not open or not assigned as
        the path asks, and when the system does not answer (never accepted unchecked)."""
        spec = self.policy.paths[path].ticket
        if spec is None or ticket is None:
            return None
        system = self.policy.ticket_systems.get(spec.system)
        label = system.label if system is not None else spec.system
        try:
            facts = self.tickets.find(
                self.policy,
                spec.system,
                ticket,
                person.email,
                need_group=spec.assigned == "requester_or_group",
            )
        except TicketNotFound as exc:
            raise InvalidRequest(f"{exc}; check the number.", field="ticket") from None
        except TicketUnreadable:
            if spec.when_down == "approver_checks":
                return unanswered(spec.system, label, ticket)
            raise InvalidRequest(down_message(label), field="ticket") from None
        why = ticket_refusal(spec, facts, person.email)
        if why is not None:
            raise InvalidRequest(why, field="ticket")
        return facts

    def _requester(self, req: AccessRequest) -> Person:
        """Who asked, as the policy is checked against (at approval, grant and extension)."""
        if req.requester_slack_id or req.requester_email:
            return Person(slack_user_id=req.requester_slack_id, email=req.requester_email)
        if "@" in req.requester:
            return Person(email=req.requester)
        return Person(slack_user_id=req.requester)

    def _limits(self, req: AccessRequest) -> rules.Limits:
        """Every cap on this grant, as the policy says now (see `rules.limits`)."""
        return rules.limits(
            self.policy, self._requester(req), req.target, req.role, req.path, req.identity
        )

    def _refusal(self, session: Session, req: AccessRequest, now: datetime) -> str | None:
        """Why the requester may no longer have this access at `now`, or None if they still
        may: what was checked when they asked (eligibility, the role and its path, a vendor's
        contract, a service account's owner and attestation) is checked again at approval,
        just before the grant and at each extension, against the policy as it is now."""
        try:
            plan = rules.plan_request(
                self.policy,
                self._requester(req),
                req.target,
                req.role,
                now,
                break_glass=req.path == BREAK_GLASS_PATH,
                identity=req.identity,
            )
        except rules.PolicyRefusal as exc:
            return str(exc)
        locked = self._lockdown_refusal(session, req.target)
        if locked is not None:
            return locked
        if plan.path != req.path:
            return (
                f"The policy now puts {req.target}:{req.role} on the {plan.path} path, so it "
                "needs that path's approval; ask again with /jit request."
            )
        if plan.account != req.account:
            return (
                f"The policy now maps this access to account {plan.account}, not "
                f"{req.account}; ask again with /jit request."
            )
        if req.identity is not None:
            return self._attestation_refusal(session, req.identity, now)
        return None

    def refuse_unattested(self, name: str) -> None:
        """Called before an elevation of `name`: a retired identity is refused, and so is an
        overdue one whose policy says `block_unattested`. (The rounds are app/identities'; the
        request path only reads the latest, so the core needs nothing of that feature.)"""
        with self.db.read() as session:
            refusal = self._attestation_refusal(session, name, self.clock.now())
        if refusal is not None:
            raise NotEligible(refusal, field="access")

    def _attestation_refusal(self, session: Session, name: str, now: datetime) -> str | None:
        """A retired service account may not be elevated, nor an overdue one whose policy
        says `block_unattested`; None when it may."""
        latest = latest_attestation(session, name)
        if latest is None:
            return None
        if latest.outcome == RETIRED:
            return (
                f"{name} was retired by {latest.decided_by}; remove it from the policy, or ask "
                "a WardKey admin."
            )
        identity = self.policy.identities.get(name)
        overdue = latest.outcome is None and now > latest.due_at
        if overdue and identity is not None and identity.block_unattested:
            return (
                f"{name} is blocked: its owner has not confirmed it is still needed (it was due "
                f"{latest.due_at:%d %b %Y}). Answer the attestation message first."
            )
        return None

    def _cancel_as(
        self,
        session: Session,
        req: AccessRequest,
        now: datetime,
        actor: str,
        why: str,
        cause: str,
        facts: Mapping[str, object] | None = None,
    ) -> None:
        """End a request that was never granted, saying why for the requester, the approvers
        and the audit trail (`end_reason` is shown on the card and in the requester's DM)."""
        transitions.transition(
            session,
            req,
            RequestState.CANCELLED,
            at=now,
            actor=actor,
            action="request.cancelled",
            changes={"ended_at": now, "ended_by": actor, "end_reason": why, "end_cause": cause},
            data={**(facts or {}), "by": actor, "cause": cause, "why": why},
        )

    def _open(
        self,
        person: Person,
        plan: rules.RequestPlan,
        reason: str,
        duration: timedelta,
        now: datetime,
        state: RequestState,
        action: str,
        *,
        fields: Mapping[str, object],
        data: Mapping[str, object],
        also: Callable[[Session, AccessRequest], None] | None = None,
        before: Callable[[Session, str], tuple[int | None, Mapping[str, object]]] | None = None,
    ) -> RequestView:
        """Insert a new request with its creation event, unless the access is already open.
        `before` runs first in the same transaction (break-glass cancels the person's own
        pending request for the access there) and may give the new request's number and more
        for its creation event."""
        key = person_key(self.policy, person)
        try:
            with self.db.transaction() as session:
                locked = self._lockdown_refusal(session, plan.target)
                if locked is not None:  # locked down since the first look
                    raise NotEligible(locked, field="access")
                new_id, more = before(session, key) if before is not None else (None, {})
                self._refuse_duplicate(session, key, plan)
                req = AccessRequest(
                    state=state.value,
                    requester=key,
                    requester_slack_id=person.slack_user_id,
                    requester_email=person.email,
                    identity=plan.identity,
                    target=plan.target,
                    role=plan.role,
                    path=plan.path,
                    entitlement=plan.entitlement,
                    account=plan.account,
                    reason=reason,
                    requested_seconds=int(duration.total_seconds()),
                    approvals_needed=plan.approvals_needed,
                    approval_round=0,
                    revoke_attempts=0,
                    **fields,
                )
                if new_id is not None:
                    req.id = new_id
                transitions.create(
                    session, req, at=now, actor=key, action=action, data={**data, **more}
                )
                if also is not None:
                    also(session, req)
                    return self._view(session, req)
                if new_id is None:  # a number never used before: no decisions, no review yet
                    return RequestView.of(req, [], None)
                return self._view(session, req)
        except IntegrityError:
            # The same access was asked for at the same moment; the unique index kept one.
            with self.db.read() as session:
                self._refuse_duplicate(session, key, plan)
            raise

    def _pending_timeout(self, path: str) -> timedelta:
        # A path removed from the policy while requests wait on it still lets them time out.
        spec = self.policy.paths.get(path)
        return spec.pending_timeout if spec is not None else DEFAULT_PENDING_TIMEOUT

    def _refuse_duplicate(self, session: Session, key: str, plan: rules.RequestPlan) -> None:
        open_states = [s.value for s in OPEN_STATES]
        existing = session.scalars(
            select(AccessRequest).where(
                AccessRequest.target == plan.target,
                AccessRequest.role == plan.role,
                AccessRequest.account == plan.account,
                AccessRequest.state.in_(open_states),
            )
        ).first()
        if existing is None:
            return
        state = existing.state.replace("_", " ")
        if existing.requester != key:
            raise InvalidRequest(
                f"Request #{existing.id} already covers {plan.target}:{plan.role} for account "
                f"{plan.account} ({state}).",
                field="access",
            )
        hint = (
            f" Use /jit extend {existing.id} <duration> for more time."
            if existing.state == RequestState.ACTIVE
            else ""
        )
        raise InvalidRequest(
            f"You already have request #{existing.id} for {plan.target}:{plan.role} "
            f"({state}).{hint}",
            field="access",
        )

    def _preexisting(self, target: str, account: str, entitlement: str) -> bool:
        """Does the target already give this access, other than through a grant of ours?"""
        if not self._on_target(target, lambda a: a.check(account, entitlement)):
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
                AccessRequest.state.in_([RequestState.GRANTING.value, RequestState.ACTIVE.value]),
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
                    f"Request #{req.id} {STATE_WORDS.get(RequestState(req.state), 'changed')}."
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

    def _claim_period(self, job: str, period: str, at: datetime) -> bool:
        """Take a once-per-period job (a day's digest, an hour's look at the targets): True
        for exactly one worker, however many ask at once."""
        with self.db.read() as session:  # cheap look first: most ticks find it taken
            if session.get(SweepRun, (job, period)) is not None:
                return False
        try:
            with self.db.transaction() as session:
                session.add(SweepRun(job=job, period=period, done_at=at, done_by=self.worker))
        except IntegrityError:
            return False
        return True

    def _holds_claim(self, req: AccessRequest) -> bool:
        """Is this worker the one to call the target now? (Rows from before leases have none.)"""
        return req.claimed_by in (None, self.worker)

    def _claim_one(self, session: Session, request_id: int) -> AccessRequest | None:
        """The row, locked for this transaction; None while another worker holds it."""
        return session.scalars(
            self._claim(select(AccessRequest).where(AccessRequest.id == request_id))
        ).first()

    @staticmethod
    def _load(session: Session, request_id: int) -> AccessRequest:
        req = session.get(AccessRequest, request_id)
        if req is None:
            raise NotFound(f"There is no request #{request_id}.")
        return req

    @staticmethod
    def _views(session: Session, reqs: Sequence[AccessRequest]) -> list[RequestView]:
        """Views of many requests with two queries in all, not two per request."""
        ids = [r.id for r in reqs]
        decisions: dict[int, list[Decision]] = defaultdict(list)
        reviews: dict[int, Review] = {}
        for start in range(0, len(ids), 500):  # bounded IN lists
            chunk = ids[start : start + 500]
            for d in session.scalars(select(Decision).where(Decision.request_id.in_(chunk))):
                decisions[d.request_id].append(d)
            for r in session.scalars(select(Review).where(Review.request_id.in_(chunk))):
                reviews.setdefault(r.request_id, r)
        return [RequestView.of(r, decisions[r.id], reviews.get(r.id)) for r in reqs]

    @staticmethod
    def _view(session: Session, req: AccessRequest) -> RequestView:
        decisions = list(
            session.scalars(select(Decision).where(Decision.request_id == req.id)).all()
        )
        review = session.scalars(select(Review).where(Review.request_id == req.id)).first()
        return RequestView.of(req, decisions, review)


class StillPresent(Exception):
    pass


def describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:1000]
