"""Escalation driven by the injected clock: approvers reminded at half the path's approval SLA,
the request escalated at the SLA to people who could not decide before, and all of it in Slack."""

from __future__ import annotations

from datetime import timedelta

import pytest

from app.access import AccessService
from app.clock import ManualClock
from app.directory import SlackDirectory
from app.lifecycle.deps import CoreDeps
from app.notify.notifier import Notifier
from app.requests import jobs as request_jobs
from app.scheduler import job_deps
from app.slack.app import web_client
from app.store import Database
from app.store.models import RequestState as S
from tests.conftest import AMIRA
from tests.slack_harness import run_app

REASON = "fix stuck order set on ward 12"


class TestEscalation:
    """The clinical path: approval SLA 10 minutes; the on-call rota escalates to the managers."""

    @pytest.fixture
    def rota_only(self, db: Database, targets: dict, clock: ManualClock) -> AccessService:
        # The ward's clinical path, approved by the on-call rota alone, so that escalation
        # brings in people (the managers) who could not decide before.
        import yaml

        from app.policy import parse_policy
        from tests.policy.test_policy import ward

        data = ward()
        data["paths"]["clinical"]["approvers"] = [{"rota": "clinical-oncall"}]
        data["oncall"]["clinical-oncall"]["on_call"] = 2  # so an on-call requester leaves one
        policy = parse_policy(yaml.safe_dump(data))
        return AccessService(CoreDeps(db, policy, targets, clock, pause=lambda _: None))

    def test_reminded_at_half_the_sla_then_escalated(
        self, rota_only: AccessService, clock: ManualClock
    ) -> None:
        from tests.conftest import HANA

        service = rota_only
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)
        with pytest.raises(Exception, match="not an approver"):
            service.approve(req.id, HANA)
        clock.advance(timedelta(minutes=4))
        assert service.escalate_overdue() == []
        clock.advance(timedelta(minutes=1))
        assert service.escalate_overdue() == [(req.id, 1)]
        assert service.escalate_overdue() == []
        clock.advance(timedelta(minutes=5))
        assert service.escalate_overdue() == [(req.id, 2)]
        # Now the escalation group may decide, and the wait is on the record.
        done = service.approve(req.id, HANA)
        assert done.state == S.ACTIVE
        from app.store import AuditEvent

        with service.db.read() as session:
            approved = session.query(AuditEvent).filter_by(action="request.approved").one()
        assert '"waited_seconds":600' in approved.body

    def test_the_escalation_reaches_slack(
        self, rota_only: AccessService, clock: ManualClock
    ) -> None:
        for slack in run_app(rota_only):
            client = web_client(slack.fake.token, slack.fake.api_url)
            notifier = Notifier(client, rota_only, SlackDirectory(client))
            deps = job_deps(rota_only, notifier.outbox)
            rota_only.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)
            notifier.deliver_now()
            clock.advance(timedelta(minutes=5))
            request_jobs.escalate(deps)
            reminder = slack.fake.wait_for("chat.postMessage", 2, channel="U0BEN")[-1]
            assert "has waited 5m" in reminder.args["text"]
            clock.advance(timedelta(minutes=5))
            request_jobs.escalate(deps)
            new_cards = [
                c.args["channel"]
                for c in slack.fake.calls_to("chat.postMessage")
                if c.args.get("blocks") and c.args["channel"] not in ("U0BEN", "U0CHLOE")
            ]
            assert sorted(new_cards) == ["U0GITA", "U0HANA"]
            update = slack.fake.wait_for("chat.update", 1)[0]
            assert "escalated" in update.args["text"]
            told = slack.fake.wait_for("chat.postMessage", 1, channel="U0AMIRA")[0]
            assert "escalated" in told.args["text"]
