"""Break-glass within budget, and the second person's confirmation when it is not.

A use within the policy's limits is granted at once, as always. A use over a limit, or by
someone with a break-glass review past its deadline, is held (`breakglass.held`, state
pending) and the eligible confirmers get a Confirm card; the first to confirm grants it at
once: one transition (pending -> granting, `breakglass.started`, naming who confirmed), the
review opened in the same transaction. The rules themselves are pure (app/breakglass/rules.py);
this reads the facts they need in one read transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, text
from sqlalchemy.orm import Session

from app.breakglass.rules import Breach, Budget, Flag, FlagFacts, Use, budget_breaches, flags
from app.breakglass.rules import usage as usage_of
from app.grants.service import Grants
from app.lifecycle import eligibility, transitions
from app.lifecycle.deps import CoreDeps
from app.lifecycle.errors import STATE_WORDS, AlreadyDecided, NotAllowed, NotFound, SelfApproval
from app.lifecycle.leases import lease_values
from app.lifecycle.snapshots import BreakGlassStart, RequestSnapshot, load_request, snapshot
from app.lifecycle.transitions import retry_when_stale
from app.lifecycle.validation import clean_reason, within_cap
from app.policy import rules
from app.policy.model import BREAK_GLASS_PATH
from app.policy.people import Person, person_key, same_person
from app.requests.service import Requests
from app.store.models import AccessRequest, AuditEvent, RequestState, Review, ReviewState

HELD = "breakglass.held"
STARTED = "breakglass.started"
WAITING = "breakglass.waiting"
# The purpose under which the break-glass alert's recipients are remembered (the review card
# lists them: app/reviews).
ALERT_MESSAGE = "break_glass_alert"
WEEK = timedelta(days=7)
# States in which a break-glass use has begun (granted, being granted, or since ended).
_BEGUN = (
    RequestState.GRANTING,
    RequestState.ACTIVE,
    RequestState.REVOKING,
    RequestState.REVOKE_FAILED,
    RequestState.ENDED,
)
# pg_advisory_xact_lock key that serialises uses granted at once, so each is checked against
# the budgets with every use before it counted ("WKBGLASS"). SQLite writers are serialised.
_USE_LOCK_KEY = 0x574B42474C415353


class _LimitReachedMeanwhile(Exception):
    """A use that was within the limits when checked is not, now that the uses granted in
    the meantime count: it is held (or refused) like any other over a limit."""

    def __init__(self, check: BreakGlassCheck) -> None:
        super().__init__("break-glass limit reached meanwhile")
        self.check = check


@dataclass(frozen=True)
class BreakGlassCheck:
    """What the policy's limits and the person's reviews say of a new use, and its flags."""

    breaches: tuple[Breach, ...]
    # The person's reviews past due: (use, due, in the policy's time zone).
    overdue: tuple[tuple[int, datetime], ...]
    flags: tuple[Flag, ...]
    budgets: tuple[Budget, ...]  # the person's and their limited groups' use so far

    @property
    def held_for(self) -> list[str]:
        """Why the use needs a second person, in words."""
        return [b.words for b in self.breaches] + [
            f"the review of your break-glass #{rid} was due {due:%d %b %H:%M} and is not done"
            for rid, due in self.overdue
        ]


def _event_data(body: str | None) -> dict[str, Any]:
    if not body:
        return {}
    data: dict[str, Any] = json.loads(body).get("data") or {}
    return data


def _as_person(member: str) -> Person:
    return Person(email=member) if "@" in member else Person(slack_user_id=member)


class BreakGlass:
    """Break-glass within its limits (budgets, overdue reviews), else held for a second
    person's confirmation; the use itself is opened by Requests and granted by Grants."""

    def __init__(self, deps: CoreDeps, requests: Requests, grants: Grants) -> None:
        self.deps = deps
        self.requests = requests
        self.grants = grants

    # ------------------------------------------------------------------------- break-glass

    def break_glass(
        self,
        person: Person,
        target: str,
        role: str,
        reason: str,
        duration: timedelta | None = None,
        extra: Mapping[str, object] | None = None,
        guard: Callable[[Session], None] | None = None,
    ) -> RequestSnapshot:
        """Emergency access: at once within the limits, else held for a second person's
        confirmation (or refused, where the policy says so). The limits are checked again in
        the transaction that opens a use at once, after any `guard`."""
        now = self.deps.clock.now()
        plan = self.requests.plan(person, target, role, now, break_glass=True)
        reason = clean_reason(reason)
        duration = within_cap(duration or plan.cap, plan)
        check = self.check_break_glass(person, plan.target, plan.role, duration)
        if not check.breaches and not check.overdue:

            def still_within(session: Session) -> None:
                """Checked again where the use is opened, with the uses opened at the same
                time by others (or by this person on another target) counted."""
                if guard is not None:
                    guard(session)
                if session.get_bind().dialect.name == "postgresql":
                    session.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": _USE_LOCK_KEY}
                    )
                again = self._check_break_glass(session, person, plan.target, plan.role, duration)
                if again.breaches or again.overdue:
                    raise _LimitReachedMeanwhile(again)

            try:
                return self.requests.break_glass_at_once(
                    person,
                    target,
                    role,
                    reason,
                    duration,
                    extra=_use_facts(check, extra),
                    guard=still_within,
                )
            except _LimitReachedMeanwhile as meanwhile:
                check = meanwhile.check
        facts = _use_facts(check, extra)
        limits = self.deps.policy.paths[BREAK_GLASS_PATH].limits
        if not check.overdue and limits is not None and limits.over_limit == "refuse":
            raise NotAllowed(
                f"Break-glass refused: {'; '.join(check.held_for)}. The policy refuses "
                "break-glass over its limits, so nothing was granted; ask for it with "
                f"`/jit request {plan.target}:{plan.role} …` and the approvers on duty."
            )
        confirmers = self.confirmers_for(person, plan.target, plan.role, now)
        if not confirmers:
            raise NotAllowed(
                f"Break-glass needs a second person ({'; '.join(check.held_for)}), but nobody "
                "other than you can confirm it now, so nothing was granted. Call the security "
                "team or a WardKey admin."
            )
        return self._hold(person, plan, reason, duration, now, check, confirmers, facts)

    def _hold(
        self,
        person: Person,
        plan: rules.RequestPlan,
        reason: str,
        duration: timedelta,
        now: datetime,
        check: BreakGlassCheck,
        confirmers: list[str],
        facts: Mapping[str, object],
    ) -> RequestSnapshot:
        def replace_pending(session: Session, key: str) -> tuple[int | None, dict[str, object]]:
            """The person's own request for this access, still waiting for approval, is
            replaced as an immediate break-glass would replace it."""
            return self.requests.replace_own_pending(session, key, plan, now, keep_break_glass=True)

        return retry_when_stale(
            lambda: self.requests.open_request(
                person,
                plan,
                reason,
                duration,
                now,
                RequestState.PENDING,
                HELD,
                fields={},
                data={
                    **facts,
                    "held_for": check.held_for,
                    "breaches": [b.field for b in check.breaches],
                    "overdue_reviews": [rid for rid, _due in check.overdue],
                    "confirmers": confirmers,
                },
                before=replace_pending,
            )
        )

    def check_break_glass(
        self, person: Person, target: str, role: str, duration: timedelta
    ) -> BreakGlassCheck:
        """The limits a use now would pass, the person's overdue reviews and the use's flags,
        from one read of the database."""
        with self.deps.db.read() as session:
            return self._check_break_glass(session, person, target, role, duration)

    def _check_break_glass(
        self, session: Session, person: Person, target: str, role: str, duration: timedelta
    ) -> BreakGlassCheck:
        now = self.deps.clock.now()
        spec = self.deps.policy.paths[BREAK_GLASS_PATH]
        flag_spec = spec.flags
        key = person_key(self.deps.policy, person)
        my_groups = self._groups_of(person)
        begun = [s.value for s in _BEGUN]
        rows = session.execute(
            select(
                AccessRequest.id,
                AccessRequest.requester,
                AccessRequest.requester_slack_id,
                AccessRequest.requester_email,
                AccessRequest.target,
                AccessRequest.decided_at,
                AccessRequest.created_at,
                AccessRequest.granted_at,
                AccessRequest.ended_at,
                AccessRequest.expires_at,
            ).where(
                AccessRequest.path == BREAK_GLASS_PATH,
                AccessRequest.state.in_(begun),
                or_(
                    AccessRequest.decided_at > now - WEEK,
                    AccessRequest.ended_at.is_(None),
                    AccessRequest.ended_at > now - WEEK,
                ),
            )
        ).all()
        overdue = session.execute(
            select(Review.request_id, Review.due_at)
            .join(AccessRequest, AccessRequest.id == Review.request_id)
            .where(
                AccessRequest.requester == key,
                Review.state == ReviewState.OPEN.value,
                Review.due_at < now,
            )
            .order_by(Review.due_at)
        ).all()
        denials = session.execute(
            select(AccessRequest.id, AccessRequest.ended_at).where(
                AccessRequest.requester == key,
                AccessRequest.target == target,
                AccessRequest.role == role,
                AccessRequest.state == RequestState.DENIED.value,
                AccessRequest.ended_at >= now - flag_spec.after_denial_within,
            )
        ).all()
        # Their usual hours are learnt from their own requests unless the policy sets them.
        own = (
            session.scalars(
                select(AccessRequest.created_at).where(
                    AccessRequest.requester == key,
                    AccessRequest.created_at >= now - timedelta(days=flag_spec.history_days),
                )
            ).all()
            if flag_spec.usual_hours is None
            else []
        )
        on_target = session.execute(
            select(
                AccessRequest.requester,
                AccessRequest.requester_slack_id,
                AccessRequest.requester_email,
            )
            .distinct()
            .where(
                AccessRequest.target == target,
                AccessRequest.created_at >= now - timedelta(days=flag_spec.unusual_target_days),
            )
        ).all()
        groups_of: dict[str, frozenset[str]] = {key: my_groups}

        def groups(requester: str, slack_id: str | None, email: str | None) -> frozenset[str]:
            if requester not in groups_of:
                who = Person(slack_user_id=slack_id, email=email)
                groups_of[requester] = self._groups_of(who) if (slack_id or email) else frozenset()
            return groups_of[requester]

        uses = [
            Use(
                r.id,
                r.requester,
                groups(r.requester, r.requester_slack_id, r.requester_email),
                r.target,
                r.decided_at or r.created_at,
                r.granted_at,
                r.ended_at or r.expires_at,
            )
            for r in rows
        ]
        limits = spec.limits
        breaches = budget_breaches(limits, key, my_groups, uses, now, duration)
        budgets = [usage_of(key, [u for u in uses if u.requester == key], now)]
        if limits is not None:
            budgets += [
                usage_of(g, [u for u in uses if g in u.groups], now)
                for g in limits.per_group
                if g in my_groups
            ]
        crowd = [
            u.requester
            for u in uses
            if u.target == target
            and u.requester != key
            and u.started > now - flag_spec.crowd_window
        ]
        group_requests = sum(
            1 for requester, sid, email in on_target if groups(requester, sid, email) & my_groups
        )
        found = flags(
            flag_spec,
            FlagFacts(
                now=now,
                zone=self.deps.policy.zone,
                target=target,
                denials=[(rid, at) for rid, at in denials if at is not None],
                own_requests=list(own),
                groups=my_groups,
                group_requests_for_target=group_requests,
                crowd=crowd,
            ),
        )
        return BreakGlassCheck(
            tuple(breaches),
            tuple((rid, due.astimezone(self.deps.policy.zone)) for rid, due in overdue),
            tuple(found),
            tuple(budgets),
        )

    def _groups_of(self, person: Person) -> frozenset[str]:
        return frozenset(
            g
            for g in self.deps.policy.groups
            if rules.is_member(self.deps.policy, person, rules.group_members(self.deps.policy, g))
        )

    def confirmers_for(self, requester: Person, target: str, role: str, now: datetime) -> list[str]:
        """Who may confirm a held use now: the policy's confirmers, else the approvers on duty
        of the role's own path, else the break-glass reviewers, else the WardKey admins;
        never the person themself or another account of theirs."""
        policy = self.deps.policy
        limits = policy.paths[BREAK_GLASS_PATH].limits
        role_spec = policy.targets[target].roles.get(role) if target in policy.targets else None
        if limits is not None and limits.confirmers:
            chain = [rules.resolve_sources(policy, limits.confirmers, now)]
        else:
            chain = [
                rules.approvers_at(policy, role_spec.path, now) if role_spec else [],
                rules.reviewers(policy, now),
                rules.group_members(policy, policy.admins),
            ]
        for members in chain:
            others = [m for m in members if not same_person(policy, requester, _as_person(m))]
            if others:
                return others
        return []

    def confirm_break_glass(self, request_id: int, person: Person) -> RequestSnapshot:
        """A second person confirms a held break-glass use: granted at once."""
        with self.deps.db.read() as session:
            req = load_request(session, request_id)
            target, account, entitlement = req.target, req.account, req.entitlement
            held = session.scalar(
                select(AuditEvent.body).where(
                    AuditEvent.request_id == request_id, AuditEvent.action == HELD
                )
            )
        if req.path != BREAK_GLASS_PATH or held is None:
            raise NotFound(
                f"Request #{request_id} is not a break-glass use waiting to be confirmed."
            )
        if eligibility.is_requester(self.deps.policy, person, req):
            raise SelfApproval(
                "You cannot confirm your own break-glass use, from this account or another of "
                "yours: it needs a second person."
            )
        if req.state != RequestState.PENDING:
            raise AlreadyDecided(_not_waiting(req))
        preexisting = self.grants.preexisting(target, account, entitlement)
        held_data = _event_data(held)

        def attempt() -> RequestSnapshot:
            now = self.deps.clock.now()
            with self.deps.db.transaction() as session:
                req = load_request(session, request_id)
                if req.state != RequestState.PENDING:
                    raise AlreadyDecided(_not_waiting(req))
                if now >= req.created_at + self.requests.pending_timeout(req.path):
                    raise AlreadyDecided(
                        f"Break-glass #{req.id} waited too long and is closing; they can break "
                        "glass again."
                    )
                requester = eligibility.requester(req)
                allowed = self.confirmers_for(requester, req.target, req.role, now)
                if not rules.is_member(self.deps.policy, person, allowed):
                    raise NotAllowed(
                        f"You cannot confirm break-glass #{req.id}: only the people WardKey "
                        "asked (on duty now) can, so nothing was changed."
                    )
                spec = self.deps.policy.paths[BREAK_GLASS_PATH]
                review_within = spec.review_within or timedelta(days=1)
                key = person_key(self.deps.policy, person)
                transitions.transition(
                    session,
                    req,
                    RequestState.GRANTING,
                    at=now,
                    actor=key,
                    action=STARTED,
                    changes={
                        "decided_at": now,
                        "preexisting": preexisting,
                        **lease_values(self.deps.worker, self.deps.lease, now),
                    },
                    data={
                        "confirmed_by": key,
                        "confirmed_by_slack_id": person.slack_user_id,
                        "waited_seconds": int((now - req.created_at).total_seconds()),
                        "held_for": held_data.get("held_for", []),
                        "flags": held_data.get("flags", []),
                        "budget": held_data.get("budget", {}),
                        "review_due_at": now + review_within,
                        "reviewers": rules.reviewers(self.deps.policy, now),
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
                return snapshot(session, req)

        view = retry_when_stale(attempt)
        return self.grants.finish_grant(view.id)

    def break_glass_start(self, request_id: int) -> BreakGlassStart:
        """How this use began (its flags; if held: why, whom WardKey asked, who confirmed)."""
        with self.deps.db.read() as session:
            events: dict[str, str] = {
                action: body
                for action, body in session.execute(
                    select(AuditEvent.action, AuditEvent.body).where(
                        AuditEvent.request_id == request_id,
                        AuditEvent.action.in_([HELD, STARTED]),
                    )
                ).all()
            }
            held_at = session.scalar(
                select(AuditEvent.at).where(
                    AuditEvent.request_id == request_id, AuditEvent.action == HELD
                )
            )
        held, started = _event_data(events.get(HELD)), _event_data(events.get(STARTED))
        source = started or held
        waited = started.get("waited_seconds")
        return BreakGlassStart(
            flags=tuple((str(f["code"]), str(f["words"])) for f in source.get("flags") or []),
            held_for=tuple(str(w) for w in held.get("held_for") or []),
            confirmers=tuple(str(m) for m in held.get("confirmers") or []),
            confirmed_by=started.get("confirmed_by_slack_id") or started.get("confirmed_by"),
            waited=timedelta(seconds=int(waited)) if waited is not None else None,
            held_at=held_at,
        )

    def break_glass_waits(self) -> list[int]:
        """Held uses still waiting for a second person: a notice for each (no state changes),
        so the security channel's message about it shows how long it has waited."""
        now = self.deps.clock.now()
        with self.deps.db.transaction() as session:
            waiting = session.scalars(
                select(AccessRequest.id).where(
                    AccessRequest.path == BREAK_GLASS_PATH,
                    AccessRequest.state == RequestState.PENDING.value,
                )
            ).all()
            for rid in waiting:
                transitions.announce(session, f"request:{rid}", WAITING, {"request": rid}, at=now)
        return list(waiting)


def _not_waiting(req: AccessRequest) -> str:
    """Why a held use can no longer be confirmed."""
    state = RequestState(req.state)
    if state in _BEGUN or state == RequestState.GRANT_FAILED:
        return f"Break-glass #{req.id} was already confirmed, so nothing was changed."
    return f"Break-glass #{req.id} {STATE_WORDS.get(state, 'changed')}, so nothing was changed."


def _use_facts(check: BreakGlassCheck, extra: Mapping[str, object] | None) -> dict[str, object]:
    """A use's flags and budget, for its audit event."""
    return {
        "flags": [
            {"code": f.code, "words": f.words, **({"people": f.people} if f.people else {})}
            for f in check.flags
        ],
        "budget": _budget_facts(check.budgets),
        **(extra or {}),
    }


def _budget_facts(budgets: Sequence[Budget]) -> dict[str, object]:
    """The person's (and their limited groups') use before this one, for the audit trail."""
    return {
        b.who: {
            "uses_day": b.uses_day,
            "uses_week": b.uses_week,
            "seconds_day": int(b.time_day.total_seconds()),
            "seconds_week": int(b.time_week.total_seconds()),
        }
        for b in budgets
    }
