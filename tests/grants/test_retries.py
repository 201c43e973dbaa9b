"""Transient target failures are retried with back-off and jitter; permanent ones are not; a
failed revoke is retried by the sweep on a slowing schedule, for ever, and alerts every time."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from app.access import AccessService
from app.clock import ManualClock
from app.grants import jobs as grant_jobs
from app.grants.service import revoke_retry_wait
from app.scheduler import job_deps
from app.store.models import RequestState as S
from tests.conftest import AMIRA, BEN
from tests.fakes.memory_adapter import MemoryTarget
from tests.slack_harness import RunningApp, run_app

REASON = "fix stuck order set on ward 12"


def approved(service: AccessService) -> int:
    req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)
    assert service.approve(req.id, BEN).state == S.ACTIVE
    return req.id


class TestWithinOneCall:
    def test_a_brief_outage_at_grant_is_ridden_out(
        self, service: AccessService, targets: dict[str, MemoryTarget], pauses: list[float]
    ) -> None:
        targets["pharmacy-db"].fail_next = 2  # the pre-grant check fails, then its retry
        rid = approved(service)
        assert targets["pharmacy-db"].holds("amira", "pharmacy_read")
        # Full jitter: each wait is anywhere from 0 to 0.5 s, then 0 to 1 s.
        assert len(pauses) == 2
        assert 0 <= pauses[0] <= 0.5 and 0 <= pauses[1] <= 1.0
        assert service.get(rid).state == S.ACTIVE

    def test_after_the_attempts_a_grant_fails_and_is_never_shown_active(
        self, service: AccessService, targets: dict[str, MemoryTarget], pauses: list[float]
    ) -> None:
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)
        targets["pharmacy-db"].down = True
        assert service.approve(req.id, BEN).state == S.GRANT_FAILED
        assert len(pauses) == 2  # three attempts (the target's default), two waits
        assert not targets["pharmacy-db"].holds("amira", "pharmacy_read")

    def test_a_permanent_refusal_is_not_retried(
        self, service: AccessService, targets: dict[str, MemoryTarget], pauses: list[float]
    ) -> None:
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)
        targets["pharmacy-db"].refuse = {"grant"}
        assert service.approve(req.id, BEN).state == S.GRANT_FAILED
        assert [c[0] for c in targets["pharmacy-db"].calls].count("grant") == 1
        assert pauses == []


class TestFailedRevokes:
    def test_the_retry_schedule_slows_down_and_never_stops(self) -> None:
        waits = [revoke_retry_wait(n) for n in (1, 2, 3, 4, 5, 6, 50)]
        assert waits == [
            timedelta(seconds=30),
            timedelta(minutes=1),
            timedelta(minutes=2),
            timedelta(minutes=4),
            timedelta(minutes=8),
            timedelta(minutes=15),
            timedelta(minutes=15),
        ]

    def test_the_sweep_retries_only_when_due(
        self, service: AccessService, targets: dict[str, MemoryTarget], clock: ManualClock
    ) -> None:
        rid = approved(service)
        targets["pharmacy-db"].down = True
        clock.advance(timedelta(minutes=30))
        service.expire_due()
        deps = job_deps(service)
        assert grant_jobs.retry_revokes(deps) == []  # not due yet: nothing tried
        assert service.get(rid).revoke_attempts == 1
        clock.advance(timedelta(seconds=30))
        assert grant_jobs.retry_revokes(deps) == []  # tried, failed again
        assert service.get(rid).revoke_attempts == 2
        clock.advance(timedelta(seconds=59))
        grant_jobs.retry_revokes(deps)
        assert service.get(rid).revoke_attempts == 2  # the second wait is a minute
        targets["pharmacy-db"].down = False
        clock.advance(timedelta(seconds=1))
        assert grant_jobs.retry_revokes(deps) == [rid]
        assert service.get(rid).state == S.ENDED


@pytest.fixture
def slack(service: AccessService) -> Iterator[RunningApp]:
    yield from run_app(service)


def test_every_failed_try_alerts_security_and_the_holder_is_told_once(
    slack: RunningApp,
    service: AccessService,
    targets: dict[str, MemoryTarget],
    clock: ManualClock,
) -> None:
    from app.directory import SlackDirectory
    from app.notify.notifier import Notifier
    from app.slack.app import web_client

    client = web_client(slack.fake.token, slack.fake.api_url)
    deps = job_deps(service, Notifier(client, service, SlackDirectory(client)).outbox)
    rid = approved(service)
    targets["pharmacy-db"].down = True
    clock.advance(timedelta(minutes=30))
    grant_jobs.expire(deps)
    clock.advance(timedelta(seconds=30))
    grant_jobs.retry_revokes(deps)
    alerts = slack.fake.wait_for("chat.postMessage", 2, channel="C0SEC")
    assert all(f"Revoke failed: #{rid}" in a.args["text"] for a in alerts)
    assert "after 2 attempts" in alerts[1].args["text"]
    assert f"wardkey revoke resolve {rid}" in alerts[0].args["text"]
    to_holder = slack.fake.calls_to("chat.postMessage", channel="U0AMIRA")
    # Told once of the failure (the approval's "access active" DM came before it).
    assert len([c for c in to_holder if "Ending failed" in c.args["text"]]) == 1


def test_a_grant_that_timed_out_after_the_target_made_it_is_taken_back(
    service: AccessService, targets: dict[str, MemoryTarget]
) -> None:
    req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)
    targets["pharmacy-db"].lose_answer = {"grant"}
    failed = service.approve(req.id, BEN)
    assert failed.state == S.GRANT_FAILED
    assert "any access it may have given was removed" in (failed.grant_detail or "")
    assert not targets["pharmacy-db"].holds("amira", "pharmacy_read")


class TestATargetComingBack:
    def test_a_target_back_after_a_long_outage_has_its_revokes_retried_at_once(
        self, service: AccessService, targets: dict[str, MemoryTarget], clock: ManualClock
    ) -> None:
        """The pharmacy database is down for an hour; its failed revoke's back-off has grown
        to 15 minutes. The first probe after it answers again retries the revoke there and
        then, not at the end of the back-off."""
        rid = approved(service)
        target = targets["pharmacy-db"]
        target.down = True
        clock.advance(timedelta(minutes=30))
        service.expire_due()
        deps = job_deps(service)
        for _ in range(8):  # an hour of failed tries: the back-off is at its 15-minute cap
            clock.advance(revoke_retry_wait(service.get(rid).revoke_attempts))
            grant_jobs.retry_revokes(deps)
        assert revoke_retry_wait(service.get(rid).revoke_attempts) == timedelta(minutes=15)
        assert grant_jobs.probe(deps) == {"pharmacy-db": False}  # still down: nothing retried
        attempts = service.get(rid).revoke_attempts

        target.down = False
        clock.advance(timedelta(seconds=5))  # the next probe, minutes before the back-off ends
        assert grant_jobs.retry_revokes(deps) == []
        assert grant_jobs.probe(deps) == {"pharmacy-db": True}
        view = service.get(rid)
        assert view.state == S.ENDED
        assert not target.holds("amira", "pharmacy_read")
        assert grant_jobs.probe(deps) == {}  # nothing left failing: nothing asked

        # The probe asked one cheap question, with no retries, and the retry was one more try.
        assert view.revoke_attempts == attempts

    def test_a_target_that_answers_but_refuses_is_not_retried_every_probe(
        self, service: AccessService, targets: dict[str, MemoryTarget], clock: ManualClock
    ) -> None:
        """A revoke the target refuses for good (no such account) waits for its back-off:
        the target answering says nothing new, so probes do not turn it into an alert storm."""
        rid = approved(service)
        targets["pharmacy-db"].refuse = {"revoke"}
        clock.advance(timedelta(minutes=30))
        service.expire_due()
        deps = job_deps(service)
        for _ in range(3):
            clock.advance(timedelta(seconds=5))
            assert grant_jobs.probe(deps) == {"pharmacy-db": True}
        assert service.get(rid).revoke_attempts == 1
