"""Timers driven by the injected clock: warnings before expiry (once per expiry, again after an
extension, never twice however many workers run the sweep)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest

from app.access import AccessService
from app.clock import ManualClock
from app.directory import SlackDirectory
from app.grants import jobs as grant_jobs
from app.grants.messages import HOME_EXTEND
from app.notify.notifier import Notifier
from app.scheduler import job_deps
from app.slack.app import web_client
from app.store.models import RequestState as S
from tests.conftest import AMIRA, BEN
from tests.slack_harness import RunningApp, run_app

REASON = "fix stuck order set on ward 12"


def approved(service: AccessService, minutes: int = 30) -> int:
    req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=minutes), REASON)
    assert service.approve(req.id, BEN).state == S.ACTIVE
    return req.id


class TestExpiryWarnings:
    def test_warned_once_when_the_paths_warning_time_begins(
        self, service: AccessService, clock: ManualClock
    ) -> None:
        rid = approved(service)  # 03:00 to 03:30; the clinical path warns 10 minutes before
        clock.advance(timedelta(minutes=19))
        assert service.warn_expiring() == []
        clock.advance(timedelta(minutes=1))
        assert service.warn_expiring() == [rid]
        clock.advance(timedelta(minutes=1))
        assert service.warn_expiring() == []
        assert service.get(rid).state == S.ACTIVE

    def test_an_extension_makes_a_new_warning_due(
        self, service: AccessService, clock: ManualClock
    ) -> None:
        rid = approved(service)
        clock.advance(timedelta(minutes=21))
        assert service.warn_expiring() == [rid]
        service.extend(rid, AMIRA, timedelta(minutes=30))  # now ends at 04:00
        assert service.warn_expiring() == []
        clock.advance(timedelta(minutes=30))  # 03:51
        assert service.warn_expiring() == [rid]

    def test_many_workers_warn_once(self, service: AccessService, clock: ManualClock) -> None:
        rid = approved(service)
        clock.advance(timedelta(minutes=25))
        warned: list[int] = []
        barrier = threading.Barrier(6)

        def worker() -> None:
            barrier.wait()
            warned.extend(service.warn_expiring())

        threads = [threading.Thread(target=worker) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert warned == [rid]


@pytest.fixture
def slack(service: AccessService) -> Iterator[RunningApp]:
    yield from run_app(service)


def test_the_holder_gets_a_dm_and_extends_from_it(
    slack: RunningApp, service: AccessService, clock: ManualClock
) -> None:
    client = web_client(slack.fake.token, slack.fake.api_url)
    notifier = Notifier(client, service, SlackDirectory(client))
    deps = job_deps(service, notifier.outbox)
    rid = approved(service)
    clock.advance(timedelta(minutes=22))
    assert grant_jobs.warn(deps) == [rid]
    # (Amira's "access active" DM from the approval comes first; the warning has buttons.)
    dms = slack.fake.wait_for("chat.postMessage", 2, channel="U0AMIRA")
    card = json.dumps([dm.args.get("blocks") for dm in dms])
    assert "ends in 8m, at 03:30" in card
    assert "Extend 30m" in card and "Revoke now" in card

    slack.click(HOME_EXTEND, str(rid), "U0AMIRA", channel="D0AMIRA")
    reply = slack.fake.wait_for("chat.postEphemeral", 1)[0]
    assert reply.args["text"] == f"#{rid} now ends at 04:00."
    assert service.get(rid).state == S.ACTIVE
