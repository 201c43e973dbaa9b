"""The managers' daily digest: once a day at the policy's time, by one worker, with the day's
break-glass uses, overdue reviews, approval latency per path, revoke failures and the longest
and most frequent elevations."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from app.access import AccessService
from app.clock import ManualClock
from app.digest.service import DigestService
from app.lifecycle.deps import CoreDeps
from app.policy import Policy
from app.store.models import AuditEvent
from app.store.models import RequestState as S
from tests.audit.test_audit import as_an_attacker
from tests.conftest import AMIRA, CHLOE, DEV, ERIN, FARID, GITA
from tests.fakes.memory_adapter import MemoryTarget
from tests.lifecycle.test_concurrency import all_at_once

WHY = "fix stuck order set on ward 12"


@pytest.fixture
def digests(service: AccessService) -> DigestService:
    return DigestService(service)


def at_eight(clock: ManualClock) -> None:
    """The ward policy says nothing, so the digest comes at the default 08:00 (London)."""
    now = clock.now()
    clock.set(now.replace(hour=8, minute=0, second=0, microsecond=0))


class TestOncePerDay:
    def test_not_before_its_time_then_once(
        self, digests: DigestService, clock: ManualClock
    ) -> None:
        assert digests.digest_due() is None  # 03:00
        clock.set(clock.now().replace(hour=7, minute=59))
        assert digests.digest_due() is None
        at_eight(clock)
        digest = digests.digest_due()
        assert digest is not None
        assert digest.until - digest.since >= timedelta(hours=24)
        assert digests.digest_due() is None
        clock.advance(timedelta(hours=2))
        assert digests.digest_due() is None
        clock.advance(timedelta(days=1))
        assert digests.digest_due() is not None  # tomorrow's

    def test_a_worker_that_was_down_at_eight_sends_it_when_back(
        self, digests: DigestService, clock: ManualClock
    ) -> None:
        clock.set(clock.now().replace(hour=11, minute=30))
        assert digests.digest_due() is not None

    def test_no_digest_when_the_policy_turns_it_off(
        self, db, policy: Policy, targets: dict[str, MemoryTarget], clock: ManualClock
    ) -> None:  # type: ignore[no-untyped-def]
        quiet = policy.model_copy(update={"digest_at": None})
        at_eight(clock)
        assert (
            DigestService(AccessService(CoreDeps(db, quiet, targets, clock))).digest_due() is None
        )

    @pytest.mark.parametrize(
        "db", [pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"], indirect=True
    )
    def test_four_workers_at_eight_send_one(
        self, service: AccessService, clock: ManualClock, targets: dict[str, MemoryTarget]
    ) -> None:
        at_eight(clock)
        workers = [
            DigestService(
                AccessService(CoreDeps(service.db, service.policy, targets, clock, worker=f"w{n}"))
            )
            for n in range(4)
        ]
        results, errors = all_at_once(4, lambda n: workers[n].digest_due())
        assert errors == []
        assert sum(r is not None for r in results) == 1


class TestContent:
    def test_what_the_managers_read(
        self,
        service: AccessService,
        digests: DigestService,
        clock: ManualClock,
        targets: dict[str, MemoryTarget],
    ) -> None:
        clock.set(clock.now().replace(hour=8, minute=30))  # after yesterday's digest
        # Clinical: one approved after 2 minutes, one denied after 4.
        for person, wait, approve in ((AMIRA, 2, True), (CHLOE, 4, False)):
            req = service.request(person, "pharmacy-db", "read", timedelta(minutes=30), WHY)
            clock.advance(timedelta(minutes=wait))
            if approve:
                service.approve(req.id, GITA)
            else:
                service.deny(req.id, GITA, "use the order set tool instead")
        # Engineering, two approvers, 20 minutes.
        eng = service.request(DEV, "pharmacy-db", "owner", timedelta(hours=2), WHY, "CHG0012345")
        clock.advance(timedelta(minutes=20))
        service.approve(eng.id, ERIN)
        service.approve(eng.id, FARID)
        # A break-glass use that nobody reviews in time, and a revoke that fails.
        glass = service.break_glass(CHLOE, "pharmacy-db", "read", "pharmacy system down, ED")
        clock.advance(timedelta(hours=1))
        service.expire_due()  # the clinical grant and the break-glass end
        clock.advance(timedelta(hours=1))
        targets["pharmacy-db"].down = True
        service.expire_due()
        assert service.get(eng.id).state == S.REVOKE_FAILED
        targets["pharmacy-db"].down = False
        clock.advance(timedelta(days=1))
        at_eight(clock)

        digest = digests.digest_due()

        assert digest is not None
        assert [e.view.id for e in digest.break_glass] == [glass.id]
        assert digest.overdue_reviews == ()  # due 24 h after the use: at about 09:00
        latency = {p.path: p for p in digest.latency}
        assert latency["clinical"].decisions == 2
        assert latency["clinical"].p50 == timedelta(minutes=3)  # median of 2 and 4
        assert latency["clinical"].p95 == timedelta(minutes=4)
        assert latency["engineering"].p50 == timedelta(minutes=20)
        assert [v.id for v in digest.revoke_failures] == [eng.id]
        assert digest.failed_revoke_attempts == 1
        assert digest.longest[0].view.id == eng.id  # still held: counted until now
        assert dict(digest.most_frequent)["amira@ward.nhs.uk"] == 1
        assert digest.granted == 3

        clock.advance(timedelta(hours=2))
        later = digests.digest(digest.since, clock.now(), digest.day)
        assert [v.id for v in later.overdue_reviews] == [glass.id]


class TestEditedTimes:
    def test_an_event_whose_time_column_was_edited_is_not_counted_in_a_day_it_was_not(
        self,
        service: AccessService,
        digests: DigestService,
        clock: ManualClock,
        targets: dict[str, MemoryTarget],
    ) -> None:
        """Someone with database rights moves yesterday's failed revoke into today by its
        indexed time: the digest goes by the hashed time (and `audit verify` names the edit)."""
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), WHY)
        service.approve(req.id, GITA)
        targets["pharmacy-db"].down = True
        service.revoke(req.id, AMIRA, "done with the order set")
        targets["pharmacy-db"].down = False
        clock.advance(timedelta(days=2))
        at_eight(clock)
        today = clock.now() - timedelta(hours=1)
        with as_an_attacker(service.db) as conn:
            conn.execute(
                sa.update(AuditEvent).where(AuditEvent.action == "revoke.failed").values(at=today)
            )
        digest = digests.digest(clock.now() - timedelta(days=1), clock.now(), clock.now().date())
        assert digest.failed_revoke_attempts == 0
