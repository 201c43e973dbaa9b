"""What WardKey tells people of a grant it has done, it has done: every "admins are told" and
"alerted" in a message about a failed grant or revoke is backed by the message really sent,
through the same doors people use (signed Slack requests to the running app)."""

from __future__ import annotations

import json

from app.access import AccessService
from app.requests.messages import APPROVE_ACTION
from app.store.models import RequestState as S
from tests.fakes.memory_adapter import MemoryTarget
from tests.slack_harness import RunningApp, SlackOnSqlite, ask


class TestAGrantTheTargetRefuses(SlackOnSqlite):
    def test_the_security_channel_and_every_admin_are_told_as_the_card_says(
        self, slack: RunningApp, service: AccessService, targets: dict[str, MemoryTarget]
    ) -> None:
        rid = ask(slack)
        slack.fake.wait_for("chat.postMessage", 3)
        targets["pharmacy-db"].down = True  # the pharmacy database stops answering at 03:00
        slack.click(APPROVE_ACTION, str(rid), "U0BEN")
        slack.settle()

        assert service.get(rid).state == S.GRANT_FAILED
        cards = slack.fake.wait_for("chat.update", 3)
        assert all("WardKey admins are told" in json.dumps(c.args["blocks"]) for c in cards)
        # …and they are: the security channel and Gita, the ward's WardKey admin.
        alert = slack.fake.wait_for("chat.postMessage", 1, channel="C0SEC")[0]
        assert f"Grant failed: #{rid}" in alert.args["text"]
        to_admin = slack.fake.wait_for("chat.postMessage", 1, channel="U0GITA")
        assert any(f"Grant failed: #{rid}" in m.args["text"] for m in to_admin)
        dm = slack.fake.wait_for("chat.postMessage", 1, channel="U0AMIRA")[0]
        assert "WardKey admins are told" in dm.args["text"]

    def test_with_the_security_channel_archived_the_admins_cards_and_requester_still_hear(
        self, slack: RunningApp, service: AccessService, targets: dict[str, MemoryTarget]
    ) -> None:
        slack.fake.archived.add("C0SEC")
        rid = ask(slack)
        targets["pharmacy-db"].down = True
        slack.click(APPROVE_ACTION, str(rid), "U0BEN")
        slack.settle()
        assert service.get(rid).state == S.GRANT_FAILED
        to_admin = slack.fake.wait_for("chat.postMessage", 1, channel="U0GITA")
        assert any(f"Grant failed: #{rid}" in m.args["text"] for m in to_admin)
        cards = slack.fake.wait_for("chat.update", 3)
        assert all("could not grant it" in json.dumps(c.args["blocks"]) for c in cards)
        dm = slack.fake.wait_for("chat.postMessage", 1, channel="U0AMIRA")[0]
        assert "WardKey admins are told" in dm.args["text"]


class TestARevokeThatFails(SlackOnSqlite):
    def test_the_card_says_security_is_alerted_and_the_security_channel_is(
        self, slack: RunningApp, service: AccessService, targets: dict[str, MemoryTarget]
    ) -> None:
        rid = ask(slack)
        slack.click(APPROVE_ACTION, str(rid), "U0BEN")
        slack.settle()
        targets["pharmacy-db"].down = True
        slack.command("/jit", f"revoke {rid} done early", "U0AMIRA")
        slack.settle()
        assert service.get(rid).state == S.REVOKE_FAILED
        cards = [c for c in slack.fake.calls_to("chat.update") if "Ending failed" in str(c.args)]
        assert cards and all("alerts the security channel" in str(c.args) for c in cards)
        alert = slack.fake.wait_for("chat.postMessage", 1, channel="C0SEC")
        assert any(f"Revoke failed: #{rid}" in m.args["text"] for m in alert)

    def test_with_the_security_channel_archived_the_admins_are_alerted_instead(
        self, slack: RunningApp, service: AccessService, targets: dict[str, MemoryTarget]
    ) -> None:
        rid = ask(slack)
        slack.click(APPROVE_ACTION, str(rid), "U0BEN")
        slack.settle()
        assert service.get(rid).state == S.ACTIVE
        slack.fake.archived.add("C0SEC")
        targets["pharmacy-db"].down = True
        slack.command("/jit", f"revoke {rid} done early", "U0AMIRA")
        slack.settle()
        assert service.get(rid).state == S.REVOKE_FAILED
        to_admin = slack.fake.wait_for("chat.postMessage", 1, channel="U0GITA")
        assert any(f"Revoke failed: #{rid}" in m.args["text"] for m in to_admin)
