"""Double clicks, retried deliveries and several workers: a transition applies exactly once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app import audit
from app.access import AccessService
from app.lifecycle.errors import AlreadyDecided, ServiceError
from app.policy import Person
from app.store import AuditEvent
from app.store.models import RequestState as S
from tests.conftest import BEN, DEV, ERIN, FARID, GITA, HANA
from tests.fakes.memory_adapter import MemoryTarget

REASON = "fix stuck order set on ward 12"


def all_at_once(
    count: int, action: Callable[[int], object]
) -> tuple[list[object], list[BaseException]]:
    barrier = threading.Barrier(count)
    results: list[object] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(n: int) -> None:
        barrier.wait()
        try:
            outcome = action(n)
            with lock:
                results.append(outcome)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def event_count(service: AccessService, request_id: int, action: str) -> int:
    with service.db.read() as session:
        return int(
            session.scalar(
                select(func.count()).where(
                    AuditEvent.request_id == request_id, AuditEvent.action == action
                )
            )
            or 0
        )


class TestSameRequestTwiceAtOnce:
    @pytest.mark.parametrize(
        "db", [pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"], indirect=True
    )
    def test_ten_identical_requests_at_once_open_one(self, service: AccessService) -> None:
        from app.lifecycle.errors import InvalidRequest
        from tests.conftest import AMIRA

        results, errors = all_at_once(
            10,
            lambda n: service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON),
        )

        assert len(results) == 1, errors
        assert all(isinstance(e, InvalidRequest) for e in errors), errors
        # PostgreSQL sequences are not rolled back: a loser may have used id 1.
        winner = results[0].id  # type: ignore[attr-defined]
        assert all(f"already have request #{winner}" in str(e) for e in errors), errors
        assert audit.verify(service.db).checked == 1


class TestTwentyApproversAtOnce:
    @pytest.mark.parametrize(
        "db", [pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"], indirect=True
    )
    def test_twenty_clicks_on_one_clinical_request_give_one_approval(
        self, service: AccessService, targets: dict[str, MemoryTarget]
    ) -> None:
        from tests.conftest import AMIRA

        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)
        approvers: list[Person] = [BEN, GITA, HANA]  # everyone who may approve at 03:00

        results, errors = all_at_once(20, lambda n: service.approve(req.id, approvers[n % 3]))

        assert len(results) == 1, errors
        assert all(isinstance(e, AlreadyDecided) for e in errors), errors
        assert service.get(req.id).state == S.ACTIVE
        assert event_count(service, req.id, "request.approved") == 1
        assert event_count(service, req.id, "grant.succeeded") == 1
        assert [c[0] for c in targets["pharmacy-db"].calls].count("grant") == 1
        assert audit.verify(service.db).ok

    @pytest.mark.parametrize(
        "db", [pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"], indirect=True
    )
    def test_two_of_three_infra_leads_clicking_together(
        self, service: AccessService, targets: dict[str, MemoryTarget]
    ) -> None:
        req = service.request(DEV, "pharmacy-db", "owner", timedelta(hours=1), REASON, "CHG0000001")
        leads: list[Person] = [ERIN, FARID, GITA]

        results, errors = all_at_once(21, lambda n: service.approve(req.id, leads[n % 3]))

        assert len(results) == 2, errors
        assert all(isinstance(e, ServiceError) for e in errors), errors
        view = service.get(req.id)
        assert view.state == S.ACTIVE
        assert len(view.approvals) == 2
        assert event_count(service, req.id, "request.approval_recorded") == 1
        assert event_count(service, req.id, "request.approved") == 1
        assert [c[0] for c in targets["pharmacy-db"].calls].count("grant") == 1

    @pytest.mark.parametrize(
        "db", [pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"], indirect=True
    )
    def test_two_workers_expiring_the_same_grants_revoke_each_once(
        self, service: AccessService, targets: dict[str, MemoryTarget], clock: object
    ) -> None:
        from tests.conftest import AMIRA, CHLOE

        ids = []
        for who in (AMIRA, CHLOE):
            req = service.request(who, "pharmacy-db", "read", timedelta(minutes=30), REASON)
            ids.append(service.approve(req.id, BEN if who is AMIRA else GITA).id)
        clock.advance(timedelta(minutes=30))  # type: ignore[attr-defined]

        results, errors = all_at_once(4, lambda n: service.expire_due())

        assert errors == []
        assert sorted(i for r in results for i in r) == sorted(ids)  # type: ignore[attr-defined]
        assert [c[0] for c in targets["pharmacy-db"].calls].count("revoke") == 2
        for rid in ids:
            assert event_count(service, rid, "revoke.succeeded") == 1
