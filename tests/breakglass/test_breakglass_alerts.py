"""Break-glass through the same door people use (a signed /breakglass to the running app): access
at once, and who is alerted (app/breakglass/flows.py): the security channel and the reviewers on
duty hear at once, and the review card lists those and only those Slack took."""

from __future__ import annotations

from app.access import AccessService
from app.clock import ManualClock
from app.reviews.service import ReviewService
from tests.fakes.memory_adapter import MemoryTarget
from tests.slack_harness import RunningApp, SlackOnSqlite


class TestBreakGlassAlerts(SlackOnSqlite):
    def test_break_glass_grants_at_once_and_alerts_security(
        self, slack: RunningApp, targets: dict[str, MemoryTarget]
    ) -> None:
        slack.command("/breakglass", "pharmacy-db:read pharmacy system down in ED", "U0AMIRA")
        alert = slack.fake.wait_for("chat.postMessage", 1, channel="C0SEC")[0]
        assert "Break-glass" in alert.args["text"]
        assert targets["pharmacy-db"].holds("amira", "pharmacy_read")
        assert "will be reviewed" in slack.replies()[-1]

    def test_security_and_the_reviewers_are_told_at_once_and_the_review_names_them(
        self, slack: RunningApp, service: AccessService, clock: ManualClock
    ) -> None:
        slack.command("/breakglass", "pharmacy-db:read pharmacy system down in ED", "U0AMIRA")
        slack.settle()
        rid = int(slack.replies()[-1].split("#")[1].split(":")[0])
        alert = slack.fake.wait_for("chat.postMessage", 1, channel="C0SEC")[0]
        assert f"Break-glass #{rid}" in alert.args["text"]
        for reviewer in ("U0GITA", "U0HANA"):  # the managers review break-glass
            dm = slack.fake.wait_for("chat.postMessage", 1, channel=reviewer)[0]
            assert f"Break-glass #{rid}" in dm.args["text"]
        summary = ReviewService(service).break_glass_summary(rid)
        assert summary.alerted == ("C0SEC", "U0GITA", "U0HANA")

    def test_an_alert_slack_refused_is_not_claimed_as_sent(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        slack.fake.archived.add("C0SEC")  # someone archived the security channel
        slack.command("/breakglass", "pharmacy-db:read pharmacy system down in ED", "U0AMIRA")
        slack.settle()
        rid = int(slack.replies()[-1].split("#")[1].split(":")[0])
        assert ReviewService(service).break_glass_summary(rid).alerted == ("U0GITA", "U0HANA")
