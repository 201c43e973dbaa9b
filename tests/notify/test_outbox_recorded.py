"""Messages no request causes (the digest, standing access, attestation rounds, orphaned
service accounts) are recorded in the outbox in the transaction that records what they report,
so a process that dies between the two loses none; the deliverer keeps its claims alive while
it works, and sends different lanes' messages at once."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from app.access import AccessService
from app.clock import ManualClock
from app.demo.slack_fake import FakeSlack
from app.digest.service import DigestService
from app.directory import SlackDirectory
from app.identities.service import IdentityService
from app.notify.notifier import Notifier
from app.notify.outbox import Outbox
from app.slack.app import web_client
from app.standing.service import StandingService
from app.store.models import OutboxItem
from tests.conftest import AMIRA, CHLOE, DEV
from tests.digest.test_digest import at_eight
from tests.fakes.memory_adapter import MemoryTarget
from tests.notify.test_outbox import REASON, waiting
from tests.slack_harness import WARD_USERS

READ = "pharmacy_read"


def notices(service: AccessService) -> list[tuple[str, str]]:
    with service.db.read() as session:
        return [
            (lane, action)
            for lane, action in session.execute(
                sa.select(OutboxItem.lane, OutboxItem.action)
                .where(OutboxItem.kind == "notice", OutboxItem.request_id.is_(None))
                .order_by(OutboxItem.id)
            )
        ]


def another_process(service: AccessService, fake: FakeSlack) -> Notifier:
    """A worker that did not record the change: it only finds the outbox rows."""
    client = web_client(fake.token, fake.api_url)
    return Notifier(client, service, SlackDirectory(client))


class TestRecordedWithWhatTheyReport:
    def test_the_digest_is_recorded_with_the_day_it_claims(
        self, service: AccessService, fake: FakeSlack, clock: ManualClock
    ) -> None:
        at_eight(clock)
        # The sweep's process dies here, untold.
        assert DigestService(service).digest_due() is not None
        assert notices(service) == [("digest", "digest.sent")]
        another_process(service, fake).outbox.deliver_due()
        channel = service.policy.channels.manager_reviews
        digests = [m for m in fake.posts() if m["channel"] == channel]
        assert len(digests) == 1 and "daily digest" in digests[0]["text"]
        assert waiting(service) == 0

    def test_one_looks_standing_findings_are_one_message(
        self, service: AccessService, fake: FakeSlack, targets: dict[str, MemoryTarget]
    ) -> None:
        targets["pharmacy-db"].members[READ] |= {"zoe", "wardkey_svc", "yusuf"}
        standing = StandingService(service)
        report = standing.find_standing()
        assert sorted(f.account for f in report.found) == ["wardkey_svc", "yusuf", "zoe"]
        assert notices(service) == [("security", "standing.found")] * 3
        another_process(service, fake).outbox.deliver_due()
        alerts = [
            m for m in fake.posts() if m["channel"] == service.policy.channels.security_alerts
        ]
        assert len(alerts) == 1, alerts
        for account in ("zoe", "wardkey_svc", "yusuf"):
            assert f"`{account}`" in alerts[0]["text"]
        assert waiting(service) == 0
        # Found again next hour: known, so not reported again.
        standing.find_standing()
        assert len(notices(service)) == 3

    def test_an_attestation_round_and_an_orphan_flag_carry_their_messages(
        self, service: AccessService, fake: FakeSlack
    ) -> None:
        accounts = IdentityService(service)
        accounts.attestation_follow_ups()
        accounts.flag_orphans({DEV.email or "": "owner is deactivated in Slack"}.get)
        assert notices(service) == [
            ("identity:svc-lab", "attestation.asked"),
            ("security", "orphans.found"),
        ]
        another_process(service, fake).outbox.deliver_due()
        texts = [m["text"] for m in fake.posts()]
        assert any("Is the service account svc-lab still needed?" in t for t in texts), texts
        assert any("no current owner" in t and "svc-lab" in t for t in texts), texts


class TestClaims:
    def test_a_living_deliverers_claims_are_renewed_and_a_dead_ones_lapse(
        self, service: AccessService, notifier: Notifier, clock: ManualClock
    ) -> None:
        service.request(AMIRA, "pharmacy-db", "read", timedelta(hours=1), REASON)
        living = Outbox(service.db, clock, notifier.outbox.client, notifier)
        claimed = living._claim()
        assert claimed
        living._hold(c.id for c in claimed)  # in a slow Slack call
        for _ in range(3):  # three leases pass; its heartbeat renews each third of one
            for _ in range(3):
                clock.advance(living.lease / 3)
                assert living.renew_held() == len(claimed)
            other = Outbox(service.db, clock, notifier.outbox.client, notifier)
            assert other._claim() == []
        # It dies (no more renewals): one lease later another process takes the work over.
        clock.advance(living.lease + timedelta(seconds=1))
        taken = Outbox(service.db, clock, notifier.outbox.client, notifier)._claim()
        assert [c.id for c in taken] == [c.id for c in claimed]
        assert all(c.uncertain for c in taken)  # so a post is looked for before it is sent again


@pytest.mark.parametrize(
    "db", [pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"], indirect=True
)
def test_background_threads_send_different_requests_messages_at_once(
    service: AccessService, notifier: Notifier, clock: ManualClock
) -> None:
    slow = FakeSlack(latency=0.05).start()
    try:
        for user in WARD_USERS:
            slow.add_user(user)
        client = web_client(slow.token, slow.api_url)
        renderer = Notifier(client, service, SlackDirectory(client))
        for person in (AMIRA, CHLOE):
            service.request(person, "pharmacy-db", "read", timedelta(hours=1), REASON)
        outbox = Outbox(service.db, clock, client, renderer, background=True, threads=4)
        outbox.kick()
        deadline = time.monotonic() + 60
        while waiting(service) and time.monotonic() < deadline:
            time.sleep(0.05)
        outbox.close()
        assert not any(t.is_alive() for t in outbox._threads)
        assert waiting(service) == 0
        assert slow.most_in_flight >= 2  # two lanes' messages were in Slack's hands at once
        # And each request's own messages still went out in order, once each.
        keys = [m["metadata"]["event_payload"]["key"] for m in slow.posts() if m.get("metadata")]
        assert len(keys) == len(set(keys))
    finally:
        slow.stop()
