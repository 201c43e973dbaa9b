"""Asking for access and deciding on it: request, break-glass, approve, deny, cancel, time out."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.grants.service import Grants
from app.lifecycle import eligibility, transitions
from app.lifecycle.deps import CoreDeps
from app.lifecycle.eligibility import attestation_refusal, lockdown_refusal
from app.lifecycle.errors import (
    STATE_WORDS,
    AlreadyDecided,
    InvalidRequest,
    NotAllowed,
    NotEligible,
    SelfApproval,
    StepUpNeeded,
)
from app.lifecycle.leases import lease_values, lock_request
from app.lifecycle.reads import Reads
from app.lifecycle.snapshots import (
    REPLACED_BY_BREAK_GLASS,
    UNREACHABLE,
    WITHDRAWN,
    RequestSnapshot,
    load_request,
    snapshot,
)
from app.lifecycle.transitions import StaleState, retry_when_stale
from app.lifecycle.validation import (
    MAX_NOTE_CHARS,
    clean_reason,
    clean_text,
    refuse_control_characters,
    within_cap,
)
from app.policy import rules
from app.policy.model import BREAK_GLASS_PATH
from app.policy.people import Person, person_key
from app.policy.tickets import TicketFacts, unanswered
from app.policy.tickets import refusal as ticket_refusal
from app.requests.tickets import TICKET_CLOSED, closed_since_asked, ticket_audit, ticket_fields
from app.store.models import (
    OPEN_STATES,
    AccessRequest,
    AuditEvent,
    Decision,
    RequestState,
    Review,
    ReviewState,
)
from app.ticket_systems import TicketNotFound, TicketUnreadable, down_message

REMINDED, ESCALATED = 1, 2  # AccessRequest.escalation_level
# How long a request waits for a decision on a path since removed from the policy.
DEFAULT_PENDING_TIMEOUT = timedelta(hours=24)
# Why a request that is no longer waiting cannot be cancelled, and what to do instead.
_ASK_AGAIN = "If you need the access, ask again with `/jit request`."
_BEING_SET_UP = (
    "Request #{id} has already been approved and access is being set up, so it can no longer be "
    "cancelled. Once it is active, end it with `/jit revoke {id}`."
)
NOT_CANCELLABLE = {
    RequestState.APPROVED: _BEING_SET_UP,
    RequestState.GRANTING: _BEING_SET_UP,
    RequestState.ACTIVE: "Request #{id} has already been approved and access is active, so "
    "there is nothing to cancel. To end the access now, use `/jit revoke {id}`.",
    RequestState.REVOKING: "Request #{id} is already ending, so there is nothing to cancel.",
    RequestState.REVOKE_FAILED: "Request #{id} is already ending (removing the access needs "
    "another try; WardKey keeps trying), so there is nothing to cancel.",
    RequestState.ENDED: "Request #{id} has already ended, so there is nothing to cancel.",
    RequestState.DENIED: f"Request #{{id}} was denied, so there is nothing to cancel. {_ASK_AGAIN}",
    RequestState.CANCELLED: f"Request #{{id}} was already cancelled. {_ASK_AGAIN}",
    RequestState.TIMED_OUT: "Request #{id} timed out without a decision, so there is nothing to "
    "cancel. " + _ASK_AGAIN,
    RequestState.GRANT_FAILED: "Request #{id} was approved but the target could not grant it, so "
    "there is nothing to cancel; WardKey admins were told.",
}


class Requests:
    """Asking for access, deciding, cancelling, time-outs and escalation; an approval that
    completes a request grants it (Grants)."""

    def __init__(self, deps: CoreDeps, reads: Reads, grants: Grants) -> None:
        self.deps = deps
        self.reads = reads
        self.grants = grants

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
    ) -> RequestSnapshot:
        """Ask for `target:role` for `duration`; goes to the path's approvers as `pending`."""
        now = self.deps.clock.now()
        plan = self.plan(person, target, role, now, identity=identity)
        if identity is not None:
            self.refuse_unattested(identity)
        reason = clean_reason(reason)
        duration = within_cap(duration, plan)
        ticket = self._ticket(plan.path, ticket)
        checked = self._checked_ticket(plan.path, ticket, person)
        vendor = rules.vendor_of(self.deps.policy, person)
        sponsor = vendor.sponsor if vendor is not None else None
        return self.open_request(
            person,
            plan,
            reason,
            duration,
            now,
            RequestState.PENDING,
            "request.created",
            fields={"ticket": ticket, "sponsor": sponsor, **ticket_fields(checked, now)},
            data={
                "approvals_needed": plan.approvals_needed,
                "approvers": rules.approvers_at(self.deps.policy, plan.path, now),
                "sponsor": sponsor,
                "vendor": vendor.company if vendor is not None else None,
                **ticket_audit(checked),
            },
        )

    def break_glass_at_once(
        self,
        person: Person,
        target: str,
        role: str,
        reason: str,
        duration: timedelta | None = None,
        extra: Mapping[str, object] | None = None,
        guard: Callable[[Session], None] | None = None,
    ) -> RequestSnapshot:
        """Emergency access: granted at once within the break-glass cap, reviewed afterwards
        (BreakGlass.break_glass calls it once the limits allow the use). `extra`: more for its
        `breakglass.started` event (its flags and budget use); `guard` runs first in the
        transaction that opens the use, and may refuse it there (the budgets, checked again
        against every use before this one)."""
        now = self.deps.clock.now()
        plan = self.plan(person, target, role, now, break_glass=True)
        reason = clean_reason(reason)
        duration = within_cap(duration or plan.cap, plan)
        review_within = self.deps.policy.paths[BREAK_GLASS_PATH].review_within or timedelta(days=1)
        key = person_key(self.deps.policy, person)
        with self.deps.db.read() as session:  # refuse before touching the target
            if self._own_pending(session, key, plan) is None:
                self._refuse_duplicate(session, key, plan)
        preexisting = self.grants.preexisting(plan.target, plan.account, plan.entitlement)

        def open_review(session: Session, req: AccessRequest) -> None:
            session.add(
                Review(
                    request_id=req.id,
                    state=ReviewState.OPEN.value,
                    version=1,
                    due_at=now + review_within,
                )
            )

        def replace_pending(session: Session, key: str) -> tuple[int | None, dict[str, object]]:
            """In an emergency the person's own request for this access, still waiting for
            approval, is replaced: cancelled in this transaction, each naming the other."""
            if guard is not None:
                guard(session)
            return self.replace_own_pending(session, key, plan, now)

        view = retry_when_stale(
            lambda: self.open_request(
                person,
                plan,
                reason,
                duration,
                now,
                RequestState.GRANTING,
                "breakglass.started",
                fields={
                    "decided_at": now,
                    "preexisting": preexisting,
                    **lease_values(self.deps.worker, self.deps.lease, now),
                },
                data={
                    "review_due_at": now + review_within,
                    "reviewers": rules.reviewers(self.deps.policy, now),
                    "preexisting": preexisting,
                    **(extra or {}),
                },
                also=open_review,
                before=replace_pending,
            )
        )
        return self.grants.finish_grant(view.id)

    def replaced_request(self, break_glass_id: int) -> tuple[int, datetime] | None:
        """The request a break-glass use replaced (its number, and since when it had been
        waiting), as the use's audit event records it; None if it replaced none."""
        with self.deps.db.read() as session:
            body = session.scalar(
                select(AuditEvent.body).where(
                    AuditEvent.request_id == break_glass_id,
                    AuditEvent.action == "breakglass.started",
                )
            )
        return replaced_in(body)

    @staticmethod
    def _own_pending(session: Session, key: str, plan: rules.RequestPlan) -> AccessRequest | None:
        """This person's own request for exactly this access, still waiting for approval."""
        return session.scalars(
            select(AccessRequest).where(
                AccessRequest.target == plan.target,
                AccessRequest.role == plan.role,
                AccessRequest.account == plan.account,
                AccessRequest.requester == key,
                AccessRequest.state == RequestState.PENDING.value,
            )
        ).first()

    def replace_own_pending(
        self,
        session: Session,
        key: str,
        plan: rules.RequestPlan,
        now: datetime,
        *,
        keep_break_glass: bool = False,
    ) -> tuple[int | None, dict[str, object]]:
        """A break-glass replaces the person's own request for the same access that is still
        waiting for approval: it is cancelled in the caller's transaction, each naming the
        other. Returns the id reserved for the break-glass (None: nothing was replaced) and
        what its audit event records. `keep_break_glass`: a waiting break-glass stays."""
        pending = self._own_pending(session, key, plan)
        if pending is None or (keep_break_glass and pending.path == BREAK_GLASS_PATH):
            return None, {}
        new_id = _reserve_request_id(session)
        transitions.cancel(
            session,
            pending,
            at=now,
            actor=key,
            why=f"replaced by break-glass #{new_id}",
            cause=REPLACED_BY_BREAK_GLASS,
            facts={"replaced_by": new_id},
        )
        return new_id, {"replaces": {"request": pending.id, "pending_since": pending.created_at}}

    # -------------------------------------------------------------------- opening a request

    def plan(
        self,
        person: Person,
        target: str,
        role: str,
        now: datetime,
        *,
        break_glass: bool = False,
        identity: str | None = None,
    ) -> rules.RequestPlan:
        """What the policy says of this ask (path, account, cap); NotEligible when the policy
        refuses it, or its target has no adapter or is locked down."""
        try:
            plan = rules.plan_request(
                self.deps.policy,
                person,
                target,
                role,
                now,
                break_glass=break_glass,
                identity=identity,
            )
        except rules.PolicyRefusal as exc:
            raise NotEligible(str(exc), field="access") from None
        if plan.target not in self.deps.adapters:
            raise NotEligible(
                f"{target} is not connected to WardKey yet; ask a WardKey admin.", field="access"
            )
        with self.deps.db.read() as session:  # refused before anything else, even the target
            locked = lockdown_refusal(session, self.deps.policy, plan.target)
        if locked is not None:
            raise NotEligible(locked, field="access")
        return plan

    def _ticket(self, path: str, ticket: str | None) -> str | None:
        refuse_control_characters(ticket or "", "ticket", "ticket")
        try:
            return rules.check_ticket(self.deps.policy, path, ticket)
        except rules.PolicyRefusal as exc:
            raise InvalidRequest(str(exc), field="ticket") from None

    def _checked_ticket(self, path: str, ticket: str | None, person: Person) -> TicketFacts | None:
        """The ticket as the path's ticket system has it, when the path names one; refused
        (InvalidRequest on the ticket field) when it is not there, not open or not assigned as
        the path asks, and when the system does not answer (never accepted unchecked)."""
        spec = self.deps.policy.paths[path].ticket
        if spec is None or ticket is None:
            return None
        system = self.deps.policy.ticket_systems.get(spec.system)
        label = system.label if system is not None else spec.system
        try:
            facts = self.deps.tickets.find(
                self.deps.policy,
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

    def refuse_unattested(self, name: str) -> None:
        """Called before an elevation of `name`: a retired identity is refused, and so is an
        overdue one whose policy says `block_unattested`. (The rounds are app/identities'; the
        request path only reads the latest, so the core needs nothing of that feature.)"""
        with self.deps.db.read() as session:
            refusal = attestation_refusal(session, self.deps.policy, name, self.deps.clock.now())
        if refusal is not None:
            raise NotEligible(refusal, field="access")

    def open_request(
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
    ) -> RequestSnapshot:
        """Insert a new request with its creation event, unless the access is already open.
        `before` runs first in the same transaction (break-glass cancels the person's own
        pending request for the access there) and may give the new request's number and more
        for its creation event."""
        key = person_key(self.deps.policy, person)
        try:
            with self.deps.db.transaction() as session:
                locked = lockdown_refusal(session, self.deps.policy, plan.target)
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
                    return snapshot(session, req)
                if new_id is None:  # a number never used before: no decisions, no review yet
                    return RequestSnapshot.of(req, [], None)
                return snapshot(session, req)
        except IntegrityError:
            # The same access was asked for at the same moment; the unique index kept one.
            with self.deps.db.read() as session:
                self._refuse_duplicate(session, key, plan)
            raise

    def pending_timeout(self, path: str) -> timedelta:
        """How long a request on this path waits for a decision."""
        # A path removed from the policy while requests wait on it still lets them time out.
        spec = self.deps.policy.paths.get(path)
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

    # ---------------------------------------------------------------------------- decisions

    def approve(
        self, request_id: int, approver: Person, step_up: dict[str, object] | None = None
    ) -> RequestSnapshot:
        """Record an approval; with enough distinct approvals the access is granted at once.
        On a path with `step_up`, only with `step_up`: what the identity provider proved about
        the approver's fresh sign-in (app/stepup), recorded in the approval's audit event."""
        outcome = retry_when_stale(
            lambda: self._decide(request_id, approver, approve=True, step_up=step_up)
        )
        if outcome.state == RequestState.APPROVED:
            if (why := closed_since_asked(self.deps, request_id)) is not None:
                self.grants.end_access(request_id, why, TICKET_CLOSED)
                return self.reads.get(request_id)
            return self.grants.grant(request_id)
        extended = outcome.state == RequestState.ACTIVE and outcome.extension is None
        if extended and len(outcome.approvals) >= outcome.approvals_needed:
            self.grants.refresh_target(outcome)
        return outcome

    def deny(self, request_id: int, approver: Person, reason: str) -> RequestSnapshot:
        cleaned = clean_text(
            reason,
            what="reason",
            min_words=0,
            max_chars=MAX_NOTE_CHARS,
            too_short="Say why you are denying it, so the requester knows what to do.",
            field="reason",
        )
        return retry_when_stale(
            lambda: self._decide(request_id, approver, approve=False, reason=cleaned)
        )

    def may_decide(self, request_id: int, approver: Person) -> RequestSnapshot:
        """The request, if `approver` may decide on it now (as `approve` and `deny` check);
        otherwise the same refusal they would give. Changes nothing (a step-up sign-in is
        offered only to someone who could approve at that moment)."""
        now = self.deps.clock.now()
        with self.deps.db.read() as session:
            req = load_request(session, request_id)
            in_extension = req.state == RequestState.ACTIVE and req.extension_seconds is not None
            if req.state != RequestState.PENDING and not in_extension:
                raise AlreadyDecided(f"Request #{req.id} {STATE_WORDS[RequestState(req.state)]}.")
            if req.state == RequestState.PENDING and now >= req.created_at + self.pending_timeout(
                req.path
            ):
                raise AlreadyDecided(f"Request #{req.id} is past its time to be decided.")
            self._decider_check(req, approver, now, in_extension)
            earlier = session.scalars(
                select(Decision.approver).where(
                    Decision.request_id == req.id, Decision.round == req.approval_round
                )
            ).all()
            if person_key(self.deps.policy, approver) in earlier:
                raise AlreadyDecided(f"You have already decided on request #{req.id}.")
            return snapshot(session, req)

    def _decider_check(
        self, req: AccessRequest, approver: Person, now: datetime, in_extension: bool
    ) -> bool:
        """Refuses (SelfApproval, NotAllowed) anyone who may not decide on `req` now; True
        when they decide as the vendor's sponsor."""
        if eligibility.is_requester(self.deps.policy, approver, req):
            raise SelfApproval("You cannot approve or deny your own request.")
        escalated_to_me = req.escalation_level >= ESCALATED and rules.is_member(
            self.deps.policy, approver, rules.escalation_members(self.deps.policy, req.path)
        )
        # A vendor's sponsor decides as sponsor, apart from the path's approvers; their
        # approval is needed on top of the path's, and one click never counts twice.
        as_sponsor = (
            not in_extension
            and req.sponsor is not None
            and rules.is_member(self.deps.policy, approver, [req.sponsor])
        )
        approver_now = rules.is_approver(self.deps.policy, req.path, approver, now)
        if not (approver_now or escalated_to_me or as_sponsor):
            raise NotAllowed(
                f"You are not an approver for the {req.path} path right now, so nothing "
                "was changed."
            )
        return as_sponsor

    def _decide(
        self,
        request_id: int,
        approver: Person,
        *,
        approve: bool,
        reason: str | None = None,
        step_up: dict[str, object] | None = None,
    ) -> RequestSnapshot:
        now = self.deps.clock.now()
        with self.deps.db.transaction() as session:
            req = load_request(session, request_id)
            in_extension = req.state == RequestState.ACTIVE and req.extension_seconds is not None
            if req.state != RequestState.PENDING and not in_extension:
                raise AlreadyDecided(f"Request #{req.id} {STATE_WORDS[RequestState(req.state)]}.")
            if req.state == RequestState.PENDING and now >= req.created_at + self.pending_timeout(
                req.path
            ):
                # Past its time-out, though the sweep has not closed it yet: too late to decide.
                self._apply_time_out(session, req, now)
                return snapshot(session, req)
            as_sponsor = self._decider_check(req, approver, now, in_extension)
            path = self.deps.policy.paths.get(req.path)
            if approve and step_up is None and path is not None and path.step_up:
                # The Approve button sends a sign-in link instead of coming here; this is
                # reached only when none could be sent (or by a caller other than Slack).
                raise StepUpNeeded(
                    f"Approving on the {req.path} path needs a fresh sign-in, and WardKey could "
                    "not send you a sign-in link: tell the WardKey admins (step-up needs "
                    "WARDKEY_PUBLIC_URL and a restart). Nothing was approved."
                )
            key = person_key(self.deps.policy, approver)
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
                    as_sponsor=as_sponsor,
                )
            )
            session.flush()
            approvals = sorted(
                {d.approver for d in earlier if d.outcome == "approve" and not d.as_sponsor}
                | ({key} if approve and not as_sponsor else set())
            )
            sponsor_ok = (
                req.sponsor is None
                or in_extension
                or (
                    (approve and as_sponsor)
                    or any(d.as_sponsor and d.outcome == "approve" for d in earlier)
                )
            )
            facts: dict[str, object] = {
                "approvals": approvals,
                "approvals_needed": req.approvals_needed,
                "decided_by": key,
            }
            if req.sponsor is not None and not in_extension:
                facts.update(
                    sponsor=req.sponsor, sponsor_approved=sponsor_ok, as_sponsor=as_sponsor
                )
            if not in_extension:  # approval latency, for the digest's p50/p95 per path
                facts["waited_seconds"] = int((now - req.created_at).total_seconds())
            if approve and step_up is not None:  # who the identity provider said signed in
                facts["step_up"] = step_up
            if not approve:
                self._apply_denial(session, req, now, key, reason, in_extension, facts)
            elif len(approvals) < req.approvals_needed or not sponsor_ok:
                transitions.transition(
                    session,
                    req,
                    RequestState(req.state),
                    at=now,
                    actor=key,
                    action="extension.approval_recorded"
                    if in_extension
                    else "request.approval_recorded",
                    data=facts,
                )
            elif in_extension:
                self.grants.approve_extension(session, req, now, key, facts)
            elif refusal := eligibility.refusal_now(
                session, self.deps.policy, req, now
            ) or self._sponsor_moved(req):
                # The last approval, but the requester may no longer have it (contract ended,
                # left the group, service account retired or blocked): cancel, saying why.
                transitions.cancel(
                    session,
                    req,
                    at=now,
                    actor="wardkey",
                    why=refusal,
                    cause="recheck_at_approval",
                    facts=facts,
                )
            else:
                transitions.transition(
                    session,
                    req,
                    RequestState.APPROVED,
                    at=now,
                    actor=key,
                    action="request.approved",
                    changes={"decided_at": now},
                    data=facts,
                )
            return snapshot(session, req)

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
                RequestState.ACTIVE,
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
                RequestState.DENIED,
                at=now,
                actor=key,
                action="request.denied",
                changes={"decided_at": now, "ended_at": now, "end_reason": reason},
                data=data,
            )

    def cancel(self, request_id: int, person: Person, reason: str = "") -> RequestSnapshot:
        """The requester withdraws a request still waiting for approval (pending ->
        cancelled); anything else is refused with what state it is in and what to do."""
        why = (
            clean_text(
                reason,
                what="reason",
                min_words=0,
                max_chars=MAX_NOTE_CHARS,
                too_short="",
                field="reason",
            )
            if reason.strip()
            else None
        )

        def attempt() -> RequestSnapshot:
            now = self.deps.clock.now()
            with self.deps.db.transaction() as session:
                req = load_request(session, request_id)
                if not eligibility.is_requester(self.deps.policy, person, req):
                    raise NotAllowed(
                        f"Only the person who asked for request #{req.id} can cancel it, so "
                        "nothing was changed."
                    )
                if req.state != RequestState.PENDING:
                    refusal = NOT_CANCELLABLE.get(
                        RequestState(req.state), "Request #{id} is not waiting."
                    )
                    raise AlreadyDecided(refusal.format(id=req.id))
                key = person_key(self.deps.policy, person)
                transitions.transition(
                    session,
                    req,
                    RequestState.CANCELLED,
                    at=now,
                    actor=key,
                    action="request.cancelled",
                    changes={
                        "ended_at": now,
                        "ended_by": key,
                        "end_reason": why,
                        "end_cause": WITHDRAWN,
                    },
                    data={"by": key, "cause": WITHDRAWN, "why": why},
                )
                return snapshot(session, req)

        return retry_when_stale(attempt)

    def time_out(self, request_id: int) -> RequestSnapshot | None:
        """Close a request nobody decided on within its path's time-out; None if not due."""
        now = self.deps.clock.now()
        with self.deps.db.transaction() as session:
            req = lock_request(session, request_id)
            if req is None or req.state != RequestState.PENDING:
                return None
            if now < req.created_at + self.pending_timeout(req.path):
                return None
            try:
                self._apply_time_out(session, req, now)
            except StaleState:
                return None
            return snapshot(session, req)

    @staticmethod
    def _apply_time_out(session: Session, req: AccessRequest, now: datetime) -> None:
        transitions.transition(
            session,
            req,
            RequestState.TIMED_OUT,
            at=now,
            actor="wardkey",
            action="request.timed_out",
            changes={"ended_at": now, "end_reason": "no decision in time"},
            data={"waited_seconds": int((now - req.created_at).total_seconds())},
        )

    def _sponsor_moved(self, req: AccessRequest) -> str | None:
        """A vendor's request needs the approval of the vendor's sponsor as the policy names
        them now: one whose sponsor changed (or who became a vendor) while it waited is
        refused. None when the sponsor approval it collected is still the right one."""
        if req.path == BREAK_GLASS_PATH:
            return None
        vendor = rules.vendor_of(self.deps.policy, eligibility.requester(req))
        if vendor is None or vendor.sponsor == req.sponsor:
            return None  # unchanged, or no longer a vendor: the path's approvals suffice
        return (
            f"{vendor.company}'s sponsor is now {vendor.sponsor}, who has not approved this; "
            "ask again with /jit request."
        )

    def escalate_overdue(self) -> list[tuple[int, int]]:
        """Pending requests past half their path's approval SLA are marked for a reminder
        (level 1), past the whole SLA escalated to the rota's escalation group (level 2), who
        may then decide too. Returns (request, level) for each newly reached level."""
        now = self.deps.clock.now()
        with self.deps.db.read() as session:
            pending = session.execute(
                select(
                    AccessRequest.id,
                    AccessRequest.path,
                    AccessRequest.created_at,
                    AccessRequest.escalation_level,
                ).where(AccessRequest.state == RequestState.PENDING.value)
            ).all()
        reached: list[tuple[int, int]] = []
        for rid, path, created, level in pending:
            sla = (
                self.deps.policy.paths[path].approval_sla
                if path in self.deps.policy.paths
                else None
            )
            if sla is None:
                continue
            due = ESCALATED if now >= created + sla else REMINDED if now >= created + sla / 2 else 0
            if due > (level or 0) and self._escalate(rid, due, now):
                reached.append((rid, due))
        return reached

    def _escalate(self, request_id: int, level: int, now: datetime) -> bool:
        try:
            with self.deps.db.transaction() as session:
                req = lock_request(session, request_id)
                if (
                    req is None
                    or req.state != RequestState.PENDING
                    or req.escalation_level >= level
                ):
                    return False
                data: dict[str, object] = {
                    "waited_seconds": int((now - req.created_at).total_seconds()),
                }
                if level == ESCALATED:
                    data["escalated_to"] = rules.escalation_members(self.deps.policy, req.path)
                transitions.transition(
                    session,
                    req,
                    RequestState.PENDING,
                    at=now,
                    actor="wardkey",
                    action="approval.escalated" if level == ESCALATED else "approval.reminded",
                    changes={"escalation_level": level},
                    data=data,
                )
        except StaleState:
            return False
        return True

    def approvers_unreachable(self, request_id: int, why: str) -> RequestSnapshot | None:
        """Slack could reach none of a waiting request's approvers (nobody on duty has a
        current Slack account, or Slack refused every card for good): record it, once, and
        escalate at once rather than at the SLA, so the escalation group may decide. The
        notice this writes tells the requester, the escalation group, security and the
        admins. None if the request no longer waits for approval or this was recorded."""
        now = self.deps.clock.now()
        with self.deps.db.transaction() as session:
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
                        "escalated_to": rules.escalation_members(self.deps.policy, req.path),
                    },
                )
            except StaleState:
                return None  # it changed meanwhile (decided, or recorded by another process)
            return snapshot(session, req)

    def nobody_to_approve(self, why: Callable[[str], str]) -> list[int]:
        """Requests waiting for approval on a path that now names nobody (a rota whose source
        has not been read within stale_after, and no one else on the path): each recorded
        as unreachable once and escalated at once (`approvers_unreachable`), rather than left
        with cards nobody may act on. `why(path)` says why, for the audit and the alerts."""
        now = self.deps.clock.now()
        paths = [
            name
            for name in self.deps.policy.paths
            if name != BREAK_GLASS_PATH and not rules.approvers_at(self.deps.policy, name, now)
        ]
        if not paths:
            return []
        with self.deps.db.read() as session:
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
        with self.deps.db.read() as session:
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

    def time_out_overdue(self) -> list[int]:
        now = self.deps.clock.now()
        with self.deps.db.read() as session:
            pending = session.execute(
                select(AccessRequest.id, AccessRequest.path, AccessRequest.created_at).where(
                    AccessRequest.state == RequestState.PENDING.value
                )
            ).all()
        due = [rid for rid, path, created in pending if now >= created + self.pending_timeout(path)]
        return [rid for rid in due if self.time_out(rid) is not None]

    # ------------------------------------------------------------------------- contracts

    def end_lapsed_contracts(self, limit: int = 500) -> list[int]:
        """When a vendor's contract has ended (its day passed, or the policy now says it ended
        earlier), cancel its people's waiting requests and end their access. Returns the
        requests changed, for their requesters to be told (the contract sweep calls this)."""
        now = self.deps.clock.now()
        lapsed = [
            v
            for v in self.deps.policy.vendors.values()
            if rules.contract_end_instant(self.deps.policy, v) <= now
        ]
        known = set().union(*(rules.vendor_identifiers(self.deps.policy, v) for v in lapsed))
        if not known:
            return []
        with self.deps.db.read() as session:
            rows = session.scalars(
                select(AccessRequest)
                .where(
                    AccessRequest.state.in_(
                        [
                            RequestState.PENDING.value,
                            RequestState.APPROVED.value,
                            RequestState.ACTIVE.value,
                        ]
                    ),
                    AccessRequest.requester.in_(known)
                    | AccessRequest.requester_email.in_(known)
                    | AccessRequest.requester_slack_id.in_(known),
                )
                .order_by(AccessRequest.id)
                .limit(limit)
            ).all()
        changed = []
        for req in rows:
            vendor = rules.vendor_of(self.deps.policy, eligibility.requester(req))
            if vendor is None or vendor not in lapsed:
                continue
            why = f"the {vendor.company} contract ended on {vendor.contract_end:%d %b %Y}"
            if self.grants.end_access(req.id, why, "contract_ended"):
                changed.append(req.id)
        return changed


def replaced_in(event_body: str | None) -> tuple[int, datetime] | None:
    """From a `breakglass.started` event: the request it replaced and since when that one
    had been waiting, or None."""
    if not event_body:
        return None
    replaced = (json.loads(event_body).get("data") or {}).get("replaces")
    if not isinstance(replaced, dict) or "request" not in replaced:
        return None
    return int(replaced["request"]), datetime.fromisoformat(str(replaced["pending_since"]))


def _reserve_request_id(session: Session) -> int:
    """The number the next request will have, taken now so that the request it replaces can
    name it in its own event. PostgreSQL: from the id sequence. SQLite: write transactions
    begin IMMEDIATE, so no other writer can take the same number before the insert."""
    if session.get_bind().dialect.name == "postgresql":
        reserved = session.scalar(
            text("SELECT nextval(pg_get_serial_sequence('access_requests', 'id'))")
        )
    else:
        reserved = session.scalar(select(func.coalesce(func.max(AccessRequest.id), 0) + 1))
    return int(reserved or 0)
