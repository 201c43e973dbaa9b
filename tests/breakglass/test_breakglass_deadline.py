"""A break-glass review has a deadline per policy (here the Caldicott Guardian's 72 hours);
when it passes undecided, the review is escalated once, to security, the WardKey admins and
whom the policy names (the Caldicott Guardian by DM, and their channel), and audited."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from app.access import AccessService
from app.breakglass.messages import CONFIRM_ACTION
from app.clock import ManualClock
from app.digest import jobs as digest_jobs
from app.policy import Policy
from app.reviews import jobs as review_jobs
from app.reviews.service import ReviewStep
from app.store.models import AuditEvent
from tests.breakglass.test_breakglass_budgets import job_deps_for, ward_policy
from tests.conftest import AMIRA, NIGHT_SHIFT, audit_actions
from tests.lifecycle.test_limits_hold import last_event
from tests.slack_harness import RunningApp, SlackOnSqlite

WHY = "pharmacy system down in ED"


class TestCaldicottDeadline(SlackOnSqlite):
    @pytest.fixture
    def policy(self, tmp_path: Path) -> Policy:
        return ward_policy(
            tmp_path,
            groups={"caldicott": ["farid@ward.nhs.uk"]},
            review_within="72h",
            review_reminder_every="1d",
            review_escalate_to=[{"group": "caldicott"}],
            review_escalate_channel="C0CALD",
        )

    def test_a_missed_deadline_is_escalated_once_to_the_caldicott_guardian(
        self, slack: RunningApp, service: AccessService, clock: ManualClock
    ) -> None:
        view = service.break_glass(AMIRA, "pharmacy-db", "read", WHY, timedelta(minutes=30))
        assert view.review is not None
        assert view.review.due_at == clock.now() + timedelta(hours=72)
        clock.advance(timedelta(minutes=31))
        service.expire_due()
        deps = job_deps_for(slack, service)
        review_jobs.review(deps)  # sent to the reviewers
        clock.advance(timedelta(hours=71))
        review_jobs.review(deps)
        assert slack.fake.calls_to("chat.postMessage", channel="C0CALD") == []
        assert not [
            c
            for c in slack.fake.calls_to("chat.postMessage", channel="U0FARID")
            if "overdue" in c.args["text"]
        ]

        clock.advance(timedelta(hours=1))  # 72 h 31 m after it began: past due
        steps = review_jobs.review(deps)
        assert (view.id, ReviewStep.OVERDUE) in steps
        escalated = last_event(service, view.id, "review.overdue")
        assert escalated["escalated_to"] == ["farid@ward.nhs.uk"]
        assert escalated["escalated_channel"] == "C0CALD"
        said = f"The review of break-glass #{view.id}"
        to_channel = slack.fake.wait_for("chat.postMessage", 1, channel="C0CALD")
        assert said in to_channel[0].args["text"] and "is overdue" in to_channel[0].args["text"]
        to_farid = [
            c
            for c in slack.fake.wait_for("chat.postMessage", 1, channel="U0FARID")
            if "is overdue" in c.args["text"]
        ]
        assert len(to_farid) == 1 and said in to_farid[0].args["text"]

        # Once: later sweeps remind the reviewers, never escalate again.
        for _ in range(3):
            clock.advance(timedelta(days=1))
            review_jobs.review(deps)
        assert audit_actions(service, view.id).count("review.overdue") == 1
        assert len(slack.fake.calls_to("chat.postMessage", channel="C0CALD")) == 1
        assert (
            sum(
                "is overdue" in c.args["text"]
                for c in slack.fake.calls_to("chat.postMessage", channel="U0FARID")
            )
            == 1
        )


class TestDigest(SlackOnSqlite):
    @pytest.fixture
    def policy(self, tmp_path: Path) -> Policy:
        return ward_policy(
            tmp_path,
            limits={
                "per_person": {"uses_per_day": 1, "time_per_day": "2h"},
                "per_group": {"clinical-systems": {"uses_per_day": 4}},
            },
        )

    def test_the_digest_shows_budgets_used_and_flags_raised(
        self, slack: RunningApp, service: AccessService, clock: ManualClock
    ) -> None:
        first = service.break_glass(AMIRA, "pharmacy-db", "read", WHY, timedelta(minutes=30))
        clock.advance(timedelta(minutes=31))
        service.expire_due()
        slack.command("/breakglass", f"pharmacy-db:read {WHY}", "U0AMIRA")
        held = int(slack.replies(1)[-1].split("#")[1].split(" ")[0])
        slack.settle()
        slack.click(CONFIRM_ACTION, str(held), "U0BEN")
        slack.settle()
        clock.advance(timedelta(minutes=20))
        service.revoke(held, AMIRA, "pharmacy back up")
        clock.set(NIGHT_SHIFT.replace(hour=8))  # 08:00 in London: the digest's time
        digest_jobs.digest(job_deps_for(slack, service))

        digest = next(
            c
            for c in slack.fake.wait_for("chat.postMessage", 1, channel="C0MGR")
            if c.args["text"].startswith("WardKey daily digest")
        )
        shown = json.dumps(digest.args["blocks"], ensure_ascii=False)
        assert "*Break-glass budgets used*" in shown
        # 31 minutes, then 20 (revoked): 51 minutes in all, two uses against one a day.
        assert "Amira Khan: 2 uses, 51m (limit 1 a day and 2h a day)" in shown
        assert "clinical-systems (group): 2 uses, 51m (limit 4 a day)" in shown
        assert "1 use needed a second person; 1 confirmed." in shown
        assert "*Break-glass flags raised*" in shown
        assert (
            f"#{first.id} Amira Khan: ⚑ no one in clinical-systems asked for pharmacy-db in 30 days"
            in shown
        )
        with service.db.read() as session:
            body = session.scalar(select(AuditEvent.body).where(AuditEvent.action == "digest.sent"))
        sent = json.loads(body or "{}")["data"]
        assert sent["break_glass_flags"] == 1
        assert sent["break_glass_held"] == 1 and sent["break_glass_confirmed"] == 1
