"""A crash between recording intent and hearing back from the target is finished at start-up."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select

from app.access import AccessService
from app.clock import ManualClock
from app.lifecycle.deps import CoreDeps
from app.store.models import AccessRequest
from app.store.models import RequestState as S
from tests.conftest import AMIRA, BEN, CHLOE
from tests.conftest import audit_actions as actions
from tests.fakes.memory_adapter import MemoryTarget, SimulatedCrash

REASON = "fix stuck order set on ward 12"


def crash_during(service: AccessService, target: MemoryTarget, op: str, action: object) -> None:
    target.crash_after.add(op)
    with pytest.raises(SimulatedCrash):
        action()  # type: ignore[operator]


def restarted(service: AccessService, clock: ManualClock) -> AccessService:
    """The worker that comes up after the crash: same database and targets, its own name."""
    return AccessService(
        CoreDeps(
            service.db, service.policy, service.adapters, clock, pause=lambda _: None, worker="next"
        )
    )


def with_heartbeat(service: AccessService, clock: ManualClock) -> AccessService:
    """The same worker (same name, so its claims are its own) with its lease heartbeat on."""
    return AccessService(
        CoreDeps(
            service.db,
            service.policy,
            service.adapters,
            clock,
            worker=service.worker,
            heartbeat=True,
        )
    )


def after_the_lease(service: AccessService, clock: ManualClock) -> AccessService:
    """A crashed worker's claim holds until its lease runs out; then the next one takes over."""
    successor = restarted(service, clock)
    report = successor.reconcile()
    assert (report.granted, report.abandoned, report.revoked) == ([], [], [])
    clock.advance(service.lease)
    return successor


class TestReconcile:
    def test_crash_after_the_target_granted(
        self, service: AccessService, targets: dict[str, MemoryTarget], clock: ManualClock
    ) -> None:
        db = targets["pharmacy-db"]
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)
        crash_during(service, db, "grant", lambda: service.approve(req.id, BEN))
        assert service.get(req.id).state == S.GRANTING
        assert db.holds("amira", "pharmacy_read")

        report = after_the_lease(service, clock).reconcile()

        assert report.granted == [req.id]
        assert "grant.taken_over" in actions(service, req.id)
        view = service.get(req.id)
        assert view.state == S.ACTIVE
        # The access we gave before the crash is ours, not "pre-existing": it must still expire.
        assert view.preexisting is False
        clock.advance(timedelta(minutes=30))
        service.expire_due()
        assert not db.holds("amira", "pharmacy_read")

    def test_crash_after_approval_before_anything_reached_the_target(
        self, service: AccessService, targets: dict[str, MemoryTarget], clock: ManualClock
    ) -> None:
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)
        crash_during(service, targets["pharmacy-db"], "check", lambda: service.approve(req.id, BEN))
        assert service.get(req.id).state == S.APPROVED
        assert after_the_lease(service, clock).reconcile().granted == [req.id]
        assert service.get(req.id).state == S.ACTIVE

    def test_crash_after_the_target_revoked(
        self, service: AccessService, targets: dict[str, MemoryTarget], clock: ManualClock
    ) -> None:
        db = targets["pharmacy-db"]
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)
        service.approve(req.id, BEN)
        clock.advance(timedelta(minutes=31))
        crash_during(service, db, "revoke", service.expire_due)
        assert service.get(req.id).state == S.REVOKING

        assert after_the_lease(service, clock).reconcile().revoked == [req.id]
        assert actions(service, req.id).count("revoke.taken_over") == 1
        assert service.get(req.id).state == S.ENDED
        assert not db.holds("amira", "pharmacy_read")

    def test_a_grant_interrupted_for_longer_than_its_window_is_taken_back(
        self, service: AccessService, targets: dict[str, MemoryTarget], clock: ManualClock
    ) -> None:
        db = targets["pharmacy-db"]
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)
        crash_during(service, db, "grant", lambda: service.approve(req.id, BEN))
        clock.advance(timedelta(hours=3))  # the app was down all night

        assert restarted(service, clock).reconcile().abandoned == [req.id]
        view = service.get(req.id)
        assert view.state == S.GRANT_FAILED
        assert "removed" in (view.grant_detail or "")
        assert not db.holds("amira", "pharmacy_read")

    def test_reconcile_with_nothing_to_do_changes_nothing(self, service: AccessService) -> None:
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)
        report = service.reconcile()
        assert (report.granted, report.abandoned, report.revoked) == ([], [], [])
        assert service.get(req.id).state == S.PENDING


@pytest.mark.parametrize(
    "db", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_a_renewal_goes_round_a_row_another_transaction_holds(
    service: AccessService, targets: dict[str, MemoryTarget], clock: ManualClock
) -> None:
    """A row another transaction has locked (recording its outcome, taking it over) is left
    for the next beat: the renewal of every other lease never waits behind it. (Waiting, one
    renewal held up by a busy writer let all of a worker's leases lapse in a wave.)"""
    first, second = (
        service.request(who, "pharmacy-db", "read", timedelta(minutes=30), REASON)
        for who in (AMIRA, CHLOE)
    )
    for req in (first, second):
        service.approve(req.id, BEN)
    clock.advance(timedelta(minutes=30))
    for _ in (first, second):  # the worker dies mid-revoke, one grant at a time
        crash_during(service, targets["pharmacy-db"], "revoke", lambda: service.expire_due(batch=1))
    assert {service.get(r.id).state for r in (first, second)} == {S.REVOKING}
    beating = with_heartbeat(service, clock)
    assert beating.heartbeat is not None

    def leases() -> dict[int, object]:
        with service.db.read() as session:
            rows = session.execute(select(AccessRequest.id, AccessRequest.claimed_until)).all()
        return {rid: until for rid, until in rows}

    before = leases()
    clock.advance(service.lease / 3)
    renewed: list[int] = []
    with service.db.engine.connect() as writer, writer.begin():
        writer.execute(
            select(AccessRequest.id).where(AccessRequest.id == first.id).with_for_update()
        )
        beat = threading.Thread(
            target=lambda: renewed.append(beating.heartbeat.renew([first.id, second.id]))  # type: ignore[union-attr]
        )
        beat.start()
        beat.join(timeout=60)  # only a guard against a hang: a waiting renewal never ends here
        still_waiting = beat.is_alive()
    beat.join()
    assert not still_waiting, "the renewal waited for the other transaction's lock"
    assert renewed == [1]
    after = leases()
    assert after[first.id] == before[first.id]  # skipped, to be renewed on the next beat
    assert after[second.id] == clock.now() + service.lease
    assert beating.heartbeat.renew([first.id, second.id]) == 2


def test_a_grant_finished_after_a_takeover_keeps_its_original_end(
    service: AccessService, targets: dict[str, MemoryTarget], clock: ManualClock
) -> None:
    """Ben approves 30 minutes for Amira; the worker dies as the database grants it. The
    worker that takes over, minutes later, confirms the grant: it still ends 30 minutes after
    the approval, not 30 minutes after the takeover."""
    req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)
    approved_at = clock.now()
    crash_during(service, targets["pharmacy-db"], "grant", lambda: service.approve(req.id, BEN))
    successor = after_the_lease(service, clock)
    clock.advance(timedelta(minutes=4))
    assert successor.reconcile().granted == [req.id]
    view = service.get(req.id)
    assert view.state == S.ACTIVE
    assert view.expires_at == approved_at + timedelta(minutes=30)


def test_a_living_workers_heartbeat_keeps_its_claim(
    service: AccessService, targets: dict[str, MemoryTarget], clock: ManualClock
) -> None:
    """A slow revoke outlasts its lease; the worker's heartbeat renews the claim, so no other
    worker takes it over; once the heartbeat stops (the worker died), one lease later another
    does."""
    req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)
    service.approve(req.id, BEN)
    clock.advance(timedelta(minutes=30))
    crash_during(service, targets["pharmacy-db"], "revoke", service.expire_due)
    beating = with_heartbeat(service, clock)
    assert beating.heartbeat is not None
    other = restarted(service, clock)
    for _ in range(5):  # a revoke as slow as five leases, renewed every third of one
        for _ in range(3):
            clock.advance(service.lease / 3)
            assert beating.heartbeat.renew([req.id]) == 1
        assert other.reconcile().revoked == []
    clock.advance(service.lease)  # no more beats: the worker is gone
    assert other.reconcile().revoked == [req.id]
    assert service.get(req.id).state == S.ENDED
