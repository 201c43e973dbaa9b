"""The request core as processes, tests and features build on it: one object over its parts, each
a class of its own built from the shared dependencies (`deps`, a CoreDeps) and given the parts it
calls; and what a feature's service stands on (FeatureService).

State only changes through `app.lifecycle.transitions`. The parts: `reads` (reads of requests,
app/lifecycle/reads.py), `grants` (access on the target: grant, extend, revoke, expire, retry,
probe, reconcile; app/grants/service.py), `requests` (asking, deciding, cancelling, time-outs,
escalation; an approval grants; app/requests/service.py, with the checks of a request's ticket
in app/requests/tickets.py) and `breakglass` (budgets and the second person's confirmation;
app/breakglass/service.py). The dependencies (app/lifecycle/deps.py), leases, target calls,
snapshots and eligibility are app/lifecycle's. AccessService delegates, method by method, what
Slack, notify, the jobs and the features call often; the few callers of the rest use the part
itself (`service.grants.revoke_leased`, `service.requests.may_decide`). The daily digest
(app/digest), standing privilege (app/standing), service accounts (app/identities), break-glass
reviews (app/reviews) and tickets after the request (app/tickets) are features of their own
that work through the core's public methods and app/lifecycle, never its private ones
(tests/system/test_architecture.py checks it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy.orm import Session

from app.adapters.base import Adapter, RevokeResult
from app.breakglass.service import BreakGlass
from app.clock import Clock
from app.grants.service import EXPIRY_BATCH, Grants, OnDone, ReconcileReport
from app.lifecycle.deps import CoreDeps
from app.lifecycle.leases import Heartbeat
from app.lifecycle.reads import Reads
from app.lifecycle.snapshots import BreakGlassStart, RequestSnapshot
from app.policy.model import Policy
from app.policy.people import Person
from app.requests.service import Requests
from app.store.db import Database
from app.store.models import AccessRequest, RequestState
from app.ticket_systems import TicketDesk

T = TypeVar("T")


class AccessService:
    """The request core: its dependencies and its parts, and their public methods. Safe to
    share between threads and processes. Built over its dependencies:
    `AccessService(CoreDeps(db, policy, adapters, clock))`."""

    def __init__(self, deps: CoreDeps) -> None:
        self.deps = deps
        self.reads = Reads(self.deps)
        self.grants = Grants(self.deps, self.reads)
        self.requests = Requests(self.deps, self.reads, self.grants)
        self.breakglass = BreakGlass(self.deps, self.requests, self.grants)

    # The dependencies, read from (and, for a policy reload, written to) the one shared object.

    @property
    def db(self) -> Database:
        return self.deps.db

    @property
    def policy(self) -> Policy:
        return self.deps.policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        self.deps.policy = policy

    @property
    def adapters(self) -> Mapping[str, Adapter]:
        return self.deps.adapters

    @adapters.setter
    def adapters(self, adapters: Mapping[str, Adapter]) -> None:
        self.deps.adapters = adapters

    @property
    def clock(self) -> Clock:
        return self.deps.clock

    @property
    def worker(self) -> str:
        return self.deps.worker

    @property
    def lease(self) -> timedelta:
        return self.deps.lease

    @property
    def heartbeat(self) -> Heartbeat | None:
        return self.deps.heartbeat

    @property
    def tickets(self) -> TicketDesk:
        return self.deps.tickets

    def call_target(self, target: str, operation: Callable[[Adapter], T]) -> T:
        return self.deps.call_target(target, operation)

    def take_away(
        self, target: str, account: str, entitlement: str, *, read_back: bool = True
    ) -> tuple[RevokeResult, int]:
        return self.deps.take_away(target, account, entitlement, read_back=read_back)

    def take_turn(self, job: str, period: str, at: datetime) -> bool:
        return self.deps.take_turn(job, period, at)

    # Reads (app/lifecycle/reads.py)

    def get(self, request_id: int) -> RequestSnapshot:
        return self.reads.get(request_id)

    def requests_of(
        self, person: Person, states: tuple[RequestState, ...] = ()
    ) -> list[RequestSnapshot]:
        return self.reads.requests_of(person, states)

    def requests_of_key(
        self, key: str, states: tuple[RequestState, ...] = ()
    ) -> list[RequestSnapshot]:
        return self.reads.requests_of_key(key, states)

    def awaiting_decision_by(self, person: Person, limit: int = 25) -> list[RequestSnapshot]:
        return self.reads.awaiting_decision_by(person, limit)

    def elevations_since(self, requester: str, since: datetime) -> int:
        return self.reads.elevations_since(requester, since)

    def messages_of(self, request_id: int, purpose: str) -> list[tuple[str, str]]:
        return self.reads.messages_of(request_id, purpose)

    def remember_home_opened(self, slack_user_id: str) -> None:
        return self.reads.remember_home_opened(slack_user_id)

    def recent_home_viewers(self, slack_user_ids: set[str], within: timedelta) -> set[str]:
        return self.reads.recent_home_viewers(slack_user_ids, within)

    # Grants (app/grants/service.py)

    def extend(self, request_id: int, person: Person, duration: timedelta) -> RequestSnapshot:
        return self.grants.extend(request_id, person, duration)

    def revoke(self, request_id: int, person: Person, reason: str = "") -> RequestSnapshot:
        return self.grants.revoke(request_id, person, reason)

    def end_access(
        self,
        request_id: int,
        why: str,
        cause: str,
        also: Callable[[Session, AccessRequest], None] | None = None,
        *,
        actor: str = "wardkey",
    ) -> bool:
        return self.grants.end_access(request_id, why, cause, also, actor=actor)

    def expire_due(
        self,
        batch: int = EXPIRY_BATCH,
        limit: int = 1000,
        *,
        wait: bool = True,
        on_done: OnDone | None = None,
        hold: float = 0.0,
    ) -> list[int]:
        return self.grants.expire_due(batch, limit, wait=wait, on_done=on_done, hold=hold)

    def warn_expiring(self, limit: int = 500) -> list[int]:
        return self.grants.warn_expiring(limit)

    def retry_revokes_due(self, *, wait: bool = True, on_done: OnDone | None = None) -> list[int]:
        return self.grants.retry_revokes_due(wait=wait, on_done=on_done)

    def probe_failing_targets(
        self, *, wait: bool = True, on_done: OnDone | None = None
    ) -> dict[str, bool]:
        return self.grants.probe_failing_targets(wait=wait, on_done=on_done)

    def resolve_revoke_failure(self, request_id: int, person: Person, note: str) -> RequestSnapshot:
        return self.grants.resolve_revoke_failure(request_id, person, note)

    def reconcile(self, *, wait: bool = True, on_done: OnDone | None = None) -> ReconcileReport:
        return self.grants.reconcile(wait=wait, on_done=on_done)

    # Requests (app/requests/service.py)

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
        return self.requests.request(person, target, role, duration, reason, ticket, identity)

    def replaced_request(self, break_glass_id: int) -> tuple[int, datetime] | None:
        return self.requests.replaced_request(break_glass_id)

    def approve(
        self, request_id: int, approver: Person, step_up: dict[str, object] | None = None
    ) -> RequestSnapshot:
        return self.requests.approve(request_id, approver, step_up)

    def deny(self, request_id: int, approver: Person, reason: str) -> RequestSnapshot:
        return self.requests.deny(request_id, approver, reason)

    def cancel(self, request_id: int, person: Person, reason: str = "") -> RequestSnapshot:
        return self.requests.cancel(request_id, person, reason)

    def escalate_overdue(self) -> list[tuple[int, int]]:
        return self.requests.escalate_overdue()

    def approvers_unreachable(self, request_id: int, why: str) -> RequestSnapshot | None:
        return self.requests.approvers_unreachable(request_id, why)

    def nobody_to_approve(self, why: Callable[[str], str]) -> list[int]:
        return self.requests.nobody_to_approve(why)

    def unreachable_reason(self, request_id: int) -> str:
        return self.requests.unreachable_reason(request_id)

    def time_out_overdue(self) -> list[int]:
        return self.requests.time_out_overdue()

    def end_lapsed_contracts(self, limit: int = 500) -> list[int]:
        return self.requests.end_lapsed_contracts(limit)

    # BreakGlass (app/breakglass/service.py)

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
        return self.breakglass.break_glass(person, target, role, reason, duration, extra, guard)

    def confirm_break_glass(self, request_id: int, person: Person) -> RequestSnapshot:
        return self.breakglass.confirm_break_glass(request_id, person)

    def break_glass_start(self, request_id: int) -> BreakGlassStart:
        return self.breakglass.break_glass_start(request_id)

    def break_glass_waits(self) -> list[int]:
        return self.breakglass.break_glass_waits()


class FeatureService:
    """What a feature's service stands on (app/digest, app/standing, app/identities,
    app/reviews, app/tickets): the request core it is given, its database and clock, and the
    policy in force now, read from the core on every call (a policy reload replaces the
    core's)."""

    def __init__(self, core: AccessService) -> None:
        self.core = core
        self.db = core.db
        self.clock = core.clock

    @property
    def policy(self) -> Policy:
        return self.core.policy
