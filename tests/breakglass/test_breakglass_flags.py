"""What the security alert and the review card flag about a break-glass use, each flag in the
situation that raises it and absent otherwise, through Slack: used right after a denial of the
same access, outside the person's usual hours, on a target unusual for their groups, and by
several people on the same target at once. Each is recorded in the use's audit event."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from app.access import AccessService
from app.clock import ManualClock
from app.policy import Policy
from app.requests.messages import DENY_ACTION, DENY_BLOCK, DENY_INPUT, DENY_VIEW
from app.reviews import jobs as review_jobs
from app.reviews.service import ReviewService
from app.store.models import RequestState as S
from tests.breakglass.test_breakglass_budgets import job_deps_for, ward_policy
from tests.conftest import AMIRA, BEN, HANA, NIGHT_SHIFT
from tests.lifecycle.test_limits_hold import last_event
from tests.slack_harness import RunningApp, SlackOnSqlite

EMERGENCY = "pharmacy-db:read pharmacy system down in ED"
WHY = "fix stuck order set on ward 12"


def break_glass(slack: RunningApp, user: str = "U0AMIRA") -> tuple[int, str]:
    """`/breakglass` by `user`; the use's number and the security channel's alert about it."""
    before = len(slack.fake.calls_to("response_url"))
    slack.command("/breakglass", EMERGENCY, user)
    reply = slack.replies(before + 1)[-1]
    slack.settle()
    rid = int(reply.split("#")[1].split(":")[0].split(" ")[0])
    alerts = [
        c.args["text"]
        for c in slack.fake.calls_to("chat.postMessage", channel="C0SEC")
        if c.args["text"].startswith(f"🔴 Break-glass #{rid}:")
    ]
    assert len(alerts) == 1, (reply, alerts)
    return rid, alerts[0]


def recorded(service: AccessService, rid: int) -> dict[str, str]:
    """The flags the use's audit event records: {code: words}."""
    flags = last_event(service, rid, "breakglass.started")["flags"]
    return {f["code"]: f["words"] for f in flags}


def asked_earlier(service: AccessService, clock: ManualClock, at: Any, who: Any = AMIRA) -> None:
    """A request for the access made (and withdrawn) at `at`."""
    clock.set(at)
    view = service.request(who, "pharmacy-db", "read", timedelta(minutes=30), WHY)
    service.cancel(view.id, who)


class TestAfterADenial(SlackOnSqlite):
    def deny(self, slack: RunningApp, service: AccessService) -> int:
        slack.command("/jit", f"request pharmacy-db:read 30m {WHY}", "U0AMIRA")
        slack.settle()
        denied = max(v.id for v in service.requests_of_key("amira@ward.nhs.uk"))
        slack.click(DENY_ACTION, str(denied), "U0BEN")
        meta = slack.fake.wait_for("views.open", 1)[0].args["view"]["private_metadata"]
        slack.submit_view(
            DENY_VIEW, {DENY_BLOCK: {DENY_INPUT: {"value": "not on shift"}}}, "U0BEN", meta
        )
        slack.settle()
        assert service.get(denied).state == S.DENIED
        return denied

    def test_break_glass_minutes_after_a_denial_is_flagged_on_the_alert_and_the_card(
        self, slack: RunningApp, service: AccessService, clock: ManualClock
    ) -> None:
        denied = self.deny(slack, service)
        clock.advance(timedelta(minutes=7))
        rid, alert = break_glass(slack)
        words = f"used 7m after #{denied}, a denied request for the same access"
        assert recorded(service, rid)["after_denial"] == words
        assert f"*Flags*\n• ⚑ {words}" in alert
        # Its review card, when the use ends, shows the same flag.
        clock.advance(timedelta(hours=1, minutes=1))
        service.expire_due()
        review_jobs.review(job_deps_for(slack, service))
        card = slack.fake.wait_for("chat.postMessage", 1, channel="C0MGR")[-1]
        assert f"⚑ {words}" in json.dumps(card.args["blocks"], ensure_ascii=False)

    def test_a_denial_longer_ago_than_the_window_is_not_flagged(
        self, slack: RunningApp, service: AccessService, clock: ManualClock
    ) -> None:
        self.deny(slack, service)
        clock.advance(timedelta(hours=2, minutes=1))  # after_denial_within: 2h by default
        rid, alert = break_glass(slack)
        assert "after_denial" not in recorded(service, rid)
        assert "denied request" not in alert


class TestOutsideUsualHours(SlackOnSqlite):
    def test_from_their_own_history_a_3am_use_by_a_day_worker_is_flagged(
        self, slack: RunningApp, service: AccessService, clock: ManualClock
    ) -> None:
        # Five weekday mornings at 10:00 Amira asked for access; never at night.
        for days in range(1, 6):
            asked_earlier(service, clock, NIGHT_SHIFT - timedelta(days=days, hours=-7))
        clock.set(NIGHT_SHIFT)  # 03:00
        rid, alert = break_glass(slack)
        words = (
            "at 03:00: none of their 5 requests in 30 days was within an hour of this time of day"
        )
        assert recorded(service, rid)["outside_hours"] == words
        assert f"⚑ {words}" in alert

    def test_a_use_at_their_usual_time_or_with_too_little_history_is_not_flagged(
        self, slack: RunningApp, service: AccessService, clock: ManualClock
    ) -> None:
        for days in range(1, 5):  # four requests: too few to say what is usual
            asked_earlier(service, clock, NIGHT_SHIFT - timedelta(days=days))
        clock.set(NIGHT_SHIFT)
        rid, alert = break_glass(slack)
        assert "outside_hours" not in recorded(service, rid)
        clock.advance(timedelta(hours=2))
        service.revoke(rid, AMIRA)
        ReviewService(service).decide_review(
            rid, HANA, justified=True, note="pharmacy outage, confirmed"
        )
        # Five now (the use itself is one of her requests), all near 03:00: 03:30 is usual.
        clock.advance(timedelta(days=1, hours=-2, minutes=30))
        again, alert = break_glass(slack)
        assert "outside_hours" not in recorded(service, again)
        assert "usual hours" not in alert and "time of day" not in alert


class TestOutsideSetHours(SlackOnSqlite):
    @pytest.fixture
    def policy(self, tmp_path: Path) -> Policy:
        return ward_policy(tmp_path, flags={"usual_hours": "07:00-19:00"})

    def test_the_policy_s_hours_flag_3am_and_not_10am(
        self, slack: RunningApp, service: AccessService, clock: ManualClock
    ) -> None:
        rid, alert = break_glass(slack)  # 03:00
        assert recorded(service, rid)["outside_hours"] == (
            "at 03:00, outside the usual hours 07:00-19:00"
        )
        assert "⚑ at 03:00, outside the usual hours 07:00-19:00" in alert
        service.revoke(rid, AMIRA)
        clock.advance(timedelta(hours=7))  # 10:00
        later, alert = break_glass(slack, "U0CHLOE")
        assert "outside_hours" not in recorded(service, later)
        assert "usual hours" not in alert


class TestUnusualTarget(SlackOnSqlite):
    def test_a_target_no_one_in_their_groups_asked_for_in_30_days_is_flagged(
        self, slack: RunningApp, service: AccessService, clock: ManualClock
    ) -> None:
        asked_earlier(service, clock, NIGHT_SHIFT - timedelta(days=31), who=BEN)
        clock.set(NIGHT_SHIFT)
        rid, alert = break_glass(slack)
        words = "no one in clinical-systems asked for pharmacy-db in 30 days"
        assert recorded(service, rid)["unusual_target"] == words
        assert f"⚑ {words}" in alert

    def test_a_target_their_group_asked_for_lately_is_not(
        self, slack: RunningApp, service: AccessService, clock: ManualClock
    ) -> None:
        asked_earlier(service, clock, NIGHT_SHIFT - timedelta(days=2), who=BEN)
        clock.set(NIGHT_SHIFT)
        rid, alert = break_glass(slack)
        assert "unusual_target" not in recorded(service, rid)
        assert "no one in" not in alert


class TestSeveralAtOnce(SlackOnSqlite):
    def test_a_second_person_breaking_glass_on_the_same_target_within_15m_is_flagged(
        self, slack: RunningApp, service: AccessService, clock: ManualClock
    ) -> None:
        first, _alert = break_glass(slack)
        assert "crowd" not in recorded(service, first)
        clock.advance(timedelta(minutes=5))
        second, alert = break_glass(slack, "U0CHLOE")
        words = "2 people broke glass on pharmacy-db within 15m"
        flags = last_event(service, second, "breakglass.started")["flags"]
        crowd = next(f for f in flags if f["code"] == "crowd")
        assert crowd == {"code": "crowd", "words": words, "people": ["amira@ward.nhs.uk"]}
        assert f"⚑ {words}" in alert
        assert "@ward.nhs.uk" not in alert  # the channel sees no addresses

    def test_one_after_the_window_is_not(
        self, slack: RunningApp, service: AccessService, clock: ManualClock
    ) -> None:
        break_glass(slack)
        clock.advance(timedelta(minutes=16))
        second, alert = break_glass(slack, "U0CHLOE")
        assert "crowd" not in recorded(service, second)
        assert "broke glass on" not in alert
