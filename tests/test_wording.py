"""What WardKey says reads as a ward manager would write it: plurals right (one helper for
all of them), people by name, never an e-mail address where a name is known, no "(s)"."""

from __future__ import annotations

import ast
import json
from datetime import timedelta
from pathlib import Path

import pytest

from app.access import AccessService
from app.clock import ManualClock
from app.digest import jobs as digest_jobs
from app.directory import SlackDirectory
from app.notify.notifier import Notifier
from app.requests.messages import APPROVE_ACTION
from app.scheduler import job_deps
from app.slack.app import web_client
from app.wording import listed, plural
from tests.slack_harness import RunningApp, SlackOnSqlite

WHY = "pharmacy system down, patients waiting on ward 12"


@pytest.mark.parametrize(
    ("count", "word", "said"),
    [
        (0, "elevation", "0 elevations"),
        (1, "elevation", "1 elevation"),
        (2, "elevation", "2 elevations"),
        (1, "service account", "1 service account"),
        (3, "service account", "3 service accounts"),
        (1, "vendor", "1 vendor"),
        (2, "break-glass use", "2 break-glass uses"),
        (2, "person", "2 people"),
        (2, "match", "2 matches"),
    ],
)
def test_one_helper_says_every_count(count: int, word: str, said: str) -> None:
    assert plural(count, word) == said


def test_none_and_lists_read_as_sentences() -> None:
    assert plural(0, "elevation", zero="no elevations") == "no elevations"
    assert plural(2, "box", "boxes of gloves") == "2 boxes of gloves"
    assert listed([]) == ""
    assert listed(["Ben Hughes"]) == "Ben Hughes"
    assert listed(["Gita Rao", "Hana Novak"]) == "Gita Rao and Hana Novak"
    assert listed(["A", "B", "C"]) == "A, B and C"


class TestInSlack(SlackOnSqlite):
    def test_break_glass_answer_says_access_is_active_not_break_glass_twice(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        slack.command("/breakglass", f"pharmacy-db:read {WHY}", "U0AMIRA")
        slack.settle()
        answers = [c.args.get("text", "") for c in slack.fake.calls_to("response_url")]
        answer = next(a for a in answers if a.startswith("Break-glass #"))
        # 03:00 now; break-glass lasts the path's hour.
        assert answer.startswith("Break-glass #1: ✅ Access active until 04:00.")
        assert "✅ Break-glass;" not in answer

    def test_cards_and_dms_name_people_and_count_right(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        assert slack.command("/jit", f"request pharmacy-db:read 30m {WHY}", "U0AMIRA")
        slack.settle()
        cards = slack.fake.calls_to("chat.postMessage")
        card = next(c for c in cards if c.args["channel"] == "U0BEN")
        assert card.args["text"] == "Access request #1: pharmacy-db:read for Amira Khan"
        shown = json.dumps(card.args["blocks"], ensure_ascii=False)
        assert "No elevations in the last 30 days" in shown
        assert "⏳ Waiting for approval" in shown
        slack.click(APPROVE_ACTION, "1", "U0BEN")
        slack.settle()
        told = slack.fake.calls_to("chat.postMessage", channel="U0AMIRA")[-1].args["text"]
        assert "✅ Approved by Ben Hughes at 03:00; access active until 03:30" in told
        everything = json.dumps([c.args for c in slack.fake.calls], ensure_ascii=False)
        assert "ben@ward.nhs.uk" not in everything.replace('"email": "ben@ward.nhs.uk"', "")
        assert "(s)" not in everything

    def test_the_daily_digest_counts_in_words(
        self, slack: RunningApp, service: AccessService, clock: ManualClock
    ) -> None:
        slack.command("/breakglass", f"pharmacy-db:read {WHY}", "U0AMIRA")
        slack.settle()
        clock.advance(timedelta(hours=1))  # it ends on time, at 04:00
        service.expire_due()
        clock.set(clock.now().replace(hour=8, minute=0))
        client = web_client(slack.fake.token, slack.fake.api_url)
        notifier = Notifier(client, service, SlackDirectory(client))
        assert digest_jobs.digest(job_deps(service, notifier.outbox)) is not None
        posts = slack.fake.calls_to("chat.postMessage", channel="C0MGR")
        digest = next(c for c in posts if "daily digest" in c.args["text"])
        assert digest.args["text"].endswith(": 1 break-glass use, 0 overdue reviews")
        shown = json.dumps(digest.args["blocks"], ensure_ascii=False)
        assert "#1 Amira Khan `pharmacy-db:read` for 1h" in shown
        assert "1 grant given" in shown
        assert "0 failed revoke attempts in the window" in shown
        assert "Amira Khan: 1 elevation" in shown
        assert "(s)" not in shown and "amira@ward.nhs.uk" not in shown


def test_no_message_in_the_code_counts_with_a_bracketed_plural() -> None:
    """Every count a person reads goes through app.wording.plural: no string in app/ (other
    than docstrings, and the fake Slack's messages to test authors) says "(s)"."""
    root = Path(__file__).resolve().parent.parent / "app"
    found = []
    for path in root.rglob("*.py"):
        if path.name in ("slack_fake.py", "wording.py"):
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        found += [
            f"{path.relative_to(root)}:{node.lineno}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and "(s)" in node.value
            and id(node) not in docstrings
        ]
    assert found == [], found
