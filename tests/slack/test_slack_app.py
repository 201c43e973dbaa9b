"""The Slack shell over real HTTP (app/web.py, app/slack): signatures checked, replays refused,
who may ask at all, Slack's retried events handled once, health. What each feature does with a
request is tested beside it (tests/requests/test_through_slack.py and the like)."""

from __future__ import annotations

import time

from app.access import AccessService
from tests.slack_harness import REQUEST, RunningApp, SlackOnSqlite


class TestSignatures(SlackOnSqlite):
    def test_a_bad_signature_is_refused_and_nothing_happens(self, slack: RunningApp) -> None:
        response = slack.post("command=%2Fjit&text=request+x", signature="v0=deadbeef")
        assert response.status_code == 401
        # Only start-up's calls: the token's check and which workspace it belongs to.
        assert {c.method for c in slack.fake.calls} == {"auth.test"}

    def test_a_stale_timestamp_is_refused(self, slack: RunningApp) -> None:
        response = slack.post("command=%2Fjit&text=help", timestamp=int(time.time()) - 301)
        assert response.status_code == 401

    def test_a_replayed_request_is_refused(self, slack: RunningApp) -> None:
        body = "command=%2Fjit&text=help&user_id=U0AMIRA&team_id=T0WARD"
        now = int(time.time())
        assert slack.post(body, timestamp=now).status_code == 200
        assert slack.post(body, timestamp=now).status_code == 409

    def test_unsigned_ssl_check_carrying_a_payload_does_nothing(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        body = (
            "ssl_check=1&command=%2Fjit&user_id=U0AMIRA&team_id=T0WARD"
            "&text=request+pharmacy-db%3Aread+30m+sneaky+little+request"
        )
        response = slack.http.post(
            f"{slack.url}/slack/events",
            content=body.encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        # Refused before Bolt, whose ssl_check shortcut would answer 200 to anyone.
        assert (response.status_code, response.text) == (401, "signed requests only")
        slack.settle()
        assert service.requests_of_key("amira@ward.nhs.uk") == []
        assert {c.method for c in slack.fake.calls} == {"auth.test"}


class TestWhoMayAsk(SlackOnSqlite):
    def test_a_deactivated_or_guest_account_cannot_ask(self, slack: RunningApp) -> None:
        for user in ("U0GONE", "U0GUEST"):
            slack.command("/jit", f"request {REQUEST}", user)
        replies = slack.replies(2)
        assert all("deactivated, a guest or a bot" in r for r in replies)


class TestRetriedEvents(SlackOnSqlite):
    def test_a_retried_event_is_handled_once(self, slack: RunningApp) -> None:
        event = {"type": "app_home_opened", "user": "U0BEN", "tab": "home"}
        slack.event(event, "Ev77")
        slack.event(event, "Ev77", retry=1)
        slack.fake.wait_for("views.publish", 1)
        slack.settle()
        assert len(slack.fake.calls_to("views.publish")) == 1


class TestHealth(SlackOnSqlite):
    def test_healthz_and_readyz(self, slack: RunningApp) -> None:
        assert slack.http.get(f"{slack.url}/healthz").text == "ok"
        assert slack.http.get(f"{slack.url}/readyz").status_code == 200
