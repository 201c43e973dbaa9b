"""Access on the target as its holder changes it through Slack (app/grants/listeners.py):
`/jit extend` and `/jit revoke`, and the App Home's Extend and Revoke buttons, sent as signed
requests to the running app."""

from __future__ import annotations

from datetime import timedelta

from app.access import AccessService
from app.requests.messages import APPROVE_ACTION
from app.store.models import RequestState as S
from tests.fakes.memory_adapter import MemoryTarget
from tests.slack_harness import RunningApp, SlackOnSqlite, ask


def approved(slack: RunningApp) -> int:
    """Amira asks for pharmacy-db:read; Ben, on call, approves from his card."""
    rid = ask(slack)
    slack.fake.wait_for("chat.postMessage", 3)
    slack.click(APPROVE_ACTION, str(rid), "U0BEN")
    slack.fake.wait_for("chat.update", 3)
    return rid


class TestExtendAndRevoke(SlackOnSqlite):
    def test_extend_and_revoke(
        self, slack: RunningApp, service: AccessService, targets: dict[str, MemoryTarget]
    ) -> None:
        rid = approved(slack)
        slack.command("/jit", f"extend {rid} 30m", "U0AMIRA")
        assert f"#{rid} now ends at 04:00." in slack.replies(2)[-1]
        slack.command("/jit", f"revoke #{rid} done early", "U0AMIRA")
        assert "Ended" in slack.replies(3)[-1]
        assert not targets["pharmacy-db"].holds("amira", "pharmacy_read")

    def test_extend_and_revoke_from_home(
        self, slack: RunningApp, service: AccessService, targets: dict[str, MemoryTarget]
    ) -> None:
        rid = approved(slack)
        slack.click("home_extend", str(rid), "U0AMIRA", channel=None, view={"id": "VHOME"})
        slack.fake.wait_for("views.publish", 1, user_id="U0AMIRA")
        slack.settle()
        view = service.get(rid)
        assert view.expires_at == view.granted_at + timedelta(hours=1)
        slack.click("home_revoke", str(rid), "U0AMIRA", channel=None, view={"id": "VHOME"})
        slack.fake.wait_for("chat.update", 6)
        assert service.get(rid).state == S.ENDED
        assert not targets["pharmacy-db"].holds("amira", "pharmacy_read")
