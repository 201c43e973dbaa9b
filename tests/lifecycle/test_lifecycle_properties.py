"""Random sequences of request / approve / deny / extend / expire / crash / reconcile, with the
invariants a hospital relies on checked after every step."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
)
from sqlalchemy import func, select

from app import audit
from app.access import AccessService
from app.clock import ManualClock
from app.lifecycle.deps import CoreDeps
from app.lifecycle.errors import ServiceError
from app.policy import Person, load_policy
from app.policy.rules import approvers_at
from app.store import AccessRequest, AuditEvent, Database, Decision, upgrade
from app.store.models import HOLDING_STATES
from app.store.models import RequestState as S
from tests.conftest import (
    AMIRA,
    BEN,
    CHLOE,
    DEV,
    ERIN,
    FARID,
    GITA,
    GITA_2ND,
    HANA,
    HERE,
    NIGHT_SHIFT,
)
from tests.fakes.memory_adapter import MemoryTarget, SimulatedCrash

POLICY = load_policy(HERE / "data" / "ward_policy.yaml")
PEOPLE = [AMIRA, BEN, CHLOE, DEV, ERIN, FARID, GITA, GITA_2ND, HANA]
# (target, role, ticket, people eligible to ask): most steps should be ones the policy allows,
# so that the interesting states (active, extended, revoking) are reached often.
ASKS = [
    ("pharmacy-db", "read", None, [AMIRA, CHLOE]),
    ("pharmacy-db", "owner", "CHG0000001", [DEV, ERIN]),
    ("directory", "helpdesk", "INC0000001", [AMIRA, BEN]),
]
# Approvers at some hour for some path, plus everyone else now and then.
DECIDERS = [BEN, CHLOE, ERIN, FARID, GITA, GITA_2ND, HANA, ERIN, FARID, GITA, HANA, AMIRA, DEV]
REASON = "random but plausible ward work"
Ask = tuple[str, str, str | None, list[Person]]
_template: list[Path] = []


def sqlite_database() -> tuple[Database, Path]:
    if not _template:
        folder = Path(tempfile.mkdtemp(prefix="wardkey-template-"))
        upgrade(f"sqlite:///{folder / 'wardkey.db'}")
        _template.append(folder / "wardkey.db")
    folder = Path(tempfile.mkdtemp(prefix="wardkey-model-"))
    shutil.copy(_template[0], folder / "wardkey.db")
    return Database(f"sqlite:///{folder / 'wardkey.db'}"), folder


class LifecycleMachine(RuleBasedStateMachine):
    """Drives the real service against an in-memory target and a real database."""

    database_factory: Callable[[], tuple[Database, Path | None]] = staticmethod(sqlite_database)  # type: ignore[assignment]

    requests = Bundle("requests")

    @initialize()
    def open_the_ward(self) -> None:
        self.db, self.folder = self.database_factory()
        self.clock = ManualClock(NIGHT_SHIFT)
        self.targets = {"pharmacy-db": MemoryTarget(), "directory": MemoryTarget()}
        self.service = AccessService(CoreDeps(self.db, POLICY, self.targets, self.clock))
        self.swept_at: Any = None

    def teardown(self) -> None:
        if hasattr(self, "db"):
            self.db.dispose()
            if self.folder is not None:
                shutil.rmtree(self.folder, ignore_errors=True)

    def attempt(self, action: Callable[[], object]) -> object:
        try:
            return action()
        except ServiceError:
            return None

    # ----------------------------------------------------------------------------- rules

    @rule(target=requests, ask=st.sampled_from(ASKS), data=st.data(), minutes=st.integers(1, 150))
    def request(self, ask: Ask, data: st.DataObject, minutes: int) -> Any:
        target, role, ticket, eligible = ask
        who = data.draw(st.sampled_from([*eligible, *eligible, *PEOPLE]))
        view = self.attempt(
            lambda: self.service.request(
                who, target, role, timedelta(minutes=minutes), REASON, ticket
            )
        )
        return getattr(view, "id", None) or multiple()

    @rule(target=requests, who=st.sampled_from([AMIRA, CHLOE, BEN, DEV]))
    def break_glass(self, who: Person) -> Any:
        view = self.attempt(lambda: self.service.break_glass(who, "pharmacy-db", "read", REASON))
        return getattr(view, "id", None) or multiple()

    @rule(rid=requests, who=st.sampled_from(DECIDERS))
    def approve(self, rid: int, who: Person) -> None:
        self.attempt(lambda: self.service.approve(rid, who))

    @rule(rid=requests, data=st.data())
    def approve_as_an_approver_on_duty(self, rid: int, data: st.DataObject) -> None:
        with self.db.read() as session:
            req = session.get(AccessRequest, rid)
            path = req.path if req is not None else "clinical"
        on_duty = approvers_at(POLICY, path, self.clock.now())
        candidates = [p for p in PEOPLE if (p.email in on_duty or p.slack_user_id in on_duty)]
        if candidates:
            who = data.draw(st.sampled_from(candidates))
            self.attempt(lambda: self.service.approve(rid, who))

    @rule(rid=requests, who=st.sampled_from(DECIDERS))
    def deny(self, rid: int, who: Person) -> None:
        self.attempt(lambda: self.service.deny(rid, who, "not now please"))

    @rule(rid=requests, who=st.sampled_from(PEOPLE), minutes=st.integers(1, 240))
    def extend(self, rid: int, who: Person, minutes: int) -> None:
        self.attempt(lambda: self.service.extend(rid, who, timedelta(minutes=minutes)))

    @rule(rid=requests, who=st.sampled_from(PEOPLE))
    def revoke_early(self, rid: int, who: Person) -> None:
        self.attempt(lambda: self.service.revoke(rid, who))

    @rule(rid=consumes(requests), who=st.sampled_from(PEOPLE))
    def cancel(self, rid: int, who: Person) -> None:
        self.attempt(lambda: self.service.cancel(rid, who))

    @rule(minutes=st.integers(1, 90))
    def time_passes(self, minutes: int) -> None:
        self.clock.advance(timedelta(minutes=minutes))

    @rule()
    def sweep(self) -> None:
        self.service.time_out_overdue()
        self.service.expire_due()
        self.swept_at = self.clock.now()

    @rule(
        rid=requests,
        who=st.sampled_from(DECIDERS),
        op=st.sampled_from(["check", "grant", "revoke"]),
    )
    def crash_mid_call(self, rid: int, who: Person, op: str) -> None:
        for target in self.targets.values():
            target.crash_after.add(op)
        try:
            if op == "revoke":
                self.service.expire_due()
            else:
                self.attempt(lambda: self.service.approve(rid, who))
        except SimulatedCrash:
            pass
        finally:
            for target in self.targets.values():
                target.crash_after.discard(op)
        self.swept_at = None

    @rule()
    def restart(self) -> None:
        self.service.reconcile()

    # ------------------------------------------------------------------------ invariants

    @invariant()
    def no_access_without_enough_approvals_unless_break_glass(self) -> None:
        with self.db.read() as session:
            for req in session.scalars(
                select(AccessRequest).where(
                    AccessRequest.state.in_([s.value for s in HOLDING_STATES])
                )
            ):
                if req.path == "breakglass":
                    continue
                approvers = set(
                    session.scalars(
                        select(Decision.approver).where(
                            Decision.request_id == req.id,
                            Decision.round == 0,
                            Decision.outcome == "approve",
                        )
                    )
                )
                assert len(approvers) >= req.approvals_needed, f"request {req.id}"
                assert req.requester not in approvers

    @invariant()
    def the_target_only_holds_what_a_live_grant_covers(self) -> None:
        with self.db.read() as session:
            live = {
                (r.target, r.account, r.entitlement)
                for r in session.scalars(
                    select(AccessRequest).where(
                        AccessRequest.state.in_([s.value for s in HOLDING_STATES])
                    )
                )
            }
        for name, target in self.targets.items():
            for entitlement, accounts in target.members.items():
                for account in accounts:
                    assert (name, account, entitlement) in live, (name, account, entitlement)

    @invariant()
    def nothing_active_after_expiry_once_swept(self) -> None:
        if self.swept_at is None or self.swept_at != self.clock.now():
            return
        with self.db.read() as session:
            overdue = session.scalar(
                select(func.count()).where(
                    AccessRequest.state == S.ACTIVE.value,
                    AccessRequest.expires_at <= self.clock.now(),
                )
            )
        assert overdue == 0

    @invariant()
    def one_audit_event_per_transition_and_the_chain_verifies(self) -> None:
        with self.db.read() as session:
            versions = dict(session.execute(select(AccessRequest.id, AccessRequest.version)).all())
            events = dict(
                session.execute(
                    select(AuditEvent.request_id, func.count())
                    .where(AuditEvent.action.not_like("review.%"))
                    .group_by(AuditEvent.request_id)
                ).all()
            )
        assert versions == events
        result = audit.verify(self.db)
        assert result.ok, result.summary()


LifecycleMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestLifecycleOnSQLite = LifecycleMachine.TestCase


@pytest.mark.postgres
def test_lifecycle_on_postgresql(postgres_database: Database) -> None:
    from hypothesis.stateful import run_state_machine_as_test

    from tests.conftest import _empty_postgres

    def on_postgres() -> tuple[Database, Path | None]:
        _empty_postgres(postgres_database)
        return postgres_database, None

    class OnPostgres(LifecycleMachine):
        database_factory = staticmethod(on_postgres)  # type: ignore[assignment]

        def teardown(self) -> None:  # the session fixture owns the engine
            pass

    run_state_machine_as_test(
        OnPostgres,
        settings=settings(
            max_examples=15,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
