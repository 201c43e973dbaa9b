"""A nurse withdraws a request she no longer needs: `/jit cancel N`, or Cancel on her App Home,
on the reply to `/jit request` or on her DM about a form request. Through the running app, with
signed requests, against the fake Slack; the approvers' cards follow in place."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from app import audit
from app.access import AccessService
from app.clock import ManualClock
from app.lifecycle.errors import AlreadyDecided
from app.requests import messages as v
from app.requests.messages import APPROVE_ACTION, CANCEL_ACTION
from app.store.models import RequestState as S
from app.wording import clock_time
from tests.conftest import AMIRA, BEN, audit_actions
from tests.lifecycle.test_concurrency import all_at_once
from tests.lifecycle.test_limits_hold import last_event
from tests.slack_harness import RunningApp, SlackOnSqlite

REQUEST = "pharmacy-db:read 30m fix stuck order set on ward 12"
REASON = "fix stuck order set on ward 12"
APPROVERS = {"D0BEN", "D0GITA", "D0HANA"}  # Ben on call, Gita and Hana (managers)


def ask(slack: RunningApp, user: str = "U0AMIRA") -> int:
    """`/jit request …`: the reply names the request; its cards are out before anyone acts."""
    before = len(slack.fake.calls_to("response_url"))
    assert slack.command("/jit", f"request {REQUEST}", user).status_code == 200
    reply = slack.replies(before + 1)[-1]
    assert reply.startswith("Request #"), reply
    slack.settle()
    return int(reply.split("#")[1].split(" ")[0])


def cancelled_by(service: AccessService, clock: ManualClock, who: str = "Amira Khan") -> str:
    return f"↩️ Cancelled by {who} at {clock_time(clock.now(), service.policy.zone)}"


def card_updates(slack: RunningApp, rid: int) -> list[Any]:
    return [
        u
        for u in slack.fake.calls_to("chat.update")
        if u.args["text"].startswith(f"Access request #{rid}:")
    ]


def request_cancelled_events(service: AccessService, rid: int) -> int:
    return audit_actions(service, rid).count("request.cancelled")


def click_on_ephemeral(slack: RunningApp, action_id: str, value: str, user: str) -> None:
    """A click on an ephemeral message (the reply to a slash command), as Slack sends it:
    the container says so, and answers go to the click's response_url."""
    payload = {
        "type": "block_actions",
        "team": {"id": slack.team, "domain": "ward"},
        "user": {"id": user, "team_id": slack.team, "username": user.lower()},
        "api_app_id": "A0WARDKEY",
        "trigger_id": "1.2.3",
        "response_url": slack.fake.response_url("ephemeral"),
        "channel": {"id": "C0WARDOPS"},
        "container": {
            "type": "message",
            "message_ts": "1764460801.000200",
            "channel_id": "C0WARDOPS",
            "is_ephemeral": True,
        },
        "actions": [
            {
                "type": "button",
                "action_id": action_id,
                "block_id": f"cancel:{value}",
                "value": value,
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }
    response = slack.post(urlencode({"payload": json.dumps(payload)}))
    assert response.status_code == 200


def cancel_buttons(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        e
        for b in blocks
        if b.get("type") == "actions"
        for e in b["elements"]
        if e.get("action_id") == CANCEL_ACTION
    ]


class TestCancelCommand(SlackOnSqlite):
    def test_a_nurse_withdraws_her_request_and_every_card_says_so(
        self, slack: RunningApp, service: AccessService, clock: ManualClock
    ) -> None:
        rid = ask(slack)
        cards = slack.fake.wait_for("chat.postMessage", 3)
        assert {c.response["channel"] for c in cards} == APPROVERS
        clock.advance(timedelta(minutes=4))  # the order set came unstuck on its own

        slack.command("/jit", f"cancel {rid} the order set came unstuck", "U0AMIRA")
        reply = slack.replies(2)[-1]
        assert reply.startswith(f"Request #{rid} for `pharmacy-db:read` is cancelled")
        assert "nothing was granted" in reply
        slack.settle()

        cancelled = service.get(rid)
        assert cancelled.state == S.CANCELLED and cancelled.end_cause == "withdrawn_by_requester"
        updates = card_updates(slack, rid)
        assert {u.args["channel"] for u in updates} == APPROVERS
        for update in updates:
            shown = json.dumps(update.args["blocks"], ensure_ascii=False)
            assert cancelled_by(service, clock) + ": the order set came unstuck" in shown
            assert APPROVE_ACTION not in shown  # no decision left to take
        data = last_event(service, rid, "request.cancelled")
        assert data["cause"] == "withdrawn_by_requester" and data["by"] == "amira@ward.nhs.uk"
        # She was answered where she asked; no DM tells her what she just did.
        assert slack.fake.calls_to("chat.postMessage", channel="U0AMIRA") == []
        assert audit.verify(service.db).ok

    def test_only_the_requester_may_cancel(self, slack: RunningApp, service: AccessService) -> None:
        rid = ask(slack)
        slack.command("/jit", f"cancel {rid}", "U0BEN")  # Ben approves; he cannot withdraw it
        assert "Only the person who asked for request" in slack.replies(2)[-1]
        slack.command("/jit", f"cancel {rid}", "U0GITA")  # nor can a WardKey admin
        assert "Only the person who asked for request" in slack.replies(3)[-1]
        slack.settle()
        assert service.get(rid).state == S.PENDING
        assert card_updates(slack, rid) == []

    def test_active_access_is_not_cancelled_and_she_is_told_to_revoke(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        rid = ask(slack)
        slack.click(APPROVE_ACTION, str(rid), "U0BEN")
        slack.settle()
        assert service.get(rid).state == S.ACTIVE

        slack.command("/jit", f"cancel {rid}", "U0AMIRA")
        said = slack.replies(2)[-1]
        assert "access is active, so there is nothing to cancel" in said
        assert f"`/jit revoke {rid}`" in said
        assert service.get(rid).state == S.ACTIVE

    def test_cancelling_twice_says_it_was_already_cancelled(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        rid = ask(slack)
        slack.command("/jit", f"cancel {rid}", "U0AMIRA")
        slack.command("/jit", f"cancel #{rid}", "U0AMIRA")
        said = slack.replies(3)[-1]
        assert said.startswith(f"Request #{rid} was already cancelled.")
        assert "ask again with `/jit request`" in said
        assert request_cancelled_events(service, rid) == 1

    def test_usage_and_help(self, slack: RunningApp) -> None:
        assert "/jit cancel 42" in slack.command("/jit", "help", "U0AMIRA").json()["text"]
        for text, problem in [
            ("cancel", "Give the number of the request to cancel."),
            ("cancel soon", "'soon' is not a request number."),
        ]:
            body = slack.command("/jit", text, "U0AMIRA").json()
            assert body["text"] == f"{problem}\nFor example: `/jit cancel 42`"


class TestCancelButtons(SlackOnSqlite):
    def test_cancel_on_the_app_home(
        self, slack: RunningApp, service: AccessService, clock: ManualClock
    ) -> None:
        rid = ask(slack)
        slack.event({"type": "app_home_opened", "user": "U0AMIRA", "tab": "home"}, "EvHome1")
        home = slack.fake.wait_for("views.publish", 1, user_id="U0AMIRA")[-1].args["view"]
        [button] = cancel_buttons(home["blocks"])
        assert button["value"] == str(rid)
        assert button["confirm"]["title"]["text"] == f"Cancel request #{rid}?"

        slack.click(CANCEL_ACTION, str(rid), "U0AMIRA", channel=None, view={"id": "VHOME"})
        slack.settle()
        assert service.get(rid).state == S.CANCELLED
        redrawn = slack.fake.calls_to("views.publish", user_id="U0AMIRA")[-1].args["view"]
        assert cancel_buttons(redrawn["blocks"]) == []
        assert "Nothing waiting." in json.dumps(redrawn)
        assert {u.args["channel"] for u in card_updates(slack, rid)} == APPROVERS
        assert all(
            cancelled_by(service, clock) in json.dumps(u.args["blocks"], ensure_ascii=False)
            for u in card_updates(slack, rid)
        )

    def test_cancel_on_the_reply_to_jit_request(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        rid = ask(slack)
        reply = slack.fake.calls_to("response_url")[-1].args
        [button] = cancel_buttons(reply["blocks"])
        assert button["value"] == str(rid)

        click_on_ephemeral(slack, CANCEL_ACTION, str(rid), "U0AMIRA")
        slack.settle()
        assert service.get(rid).state == S.CANCELLED
        # The reply with the button is replaced by the outcome (no stale button left).
        answer = slack.fake.calls_to("response_url")[-1].args
        assert answer["replace_original"] is True
        assert answer["text"].startswith(f"Request #{rid} for `pharmacy-db:read` is cancelled")
        assert {u.args["channel"] for u in card_updates(slack, rid)} == APPROVERS

    def test_cancel_on_her_dm_about_a_form_request_updates_that_dm(
        self, slack: RunningApp, service: AccessService, clock: ManualClock
    ) -> None:
        values = {
            v.ACCESS_BLOCK: {v.ACCESS_ACTION: {"selected_option": {"value": "pharmacy-db:read"}}},
            v.DURATION_BLOCK: {v.DURATION_ACTION: {"selected_option": {"value": "30m"}}},
            v.REASON_BLOCK: {v.REASON_ACTION: {"value": REASON}},
            v.TICKET_BLOCK: {v.TICKET_ACTION: {"value": ""}},
        }
        assert slack.submit_view(v.REQUEST_VIEW, values, "U0AMIRA").status_code == 200
        slack.settle()
        [dm] = slack.fake.wait_for("chat.postMessage", 1, channel="U0AMIRA")
        assert "is with the clinical approvers" in dm.args["text"]
        [button] = cancel_buttons(dm.args["blocks"])
        rid = int(button["value"])

        where = dm.response["channel"], dm.response["ts"]
        slack.click(CANCEL_ACTION, str(rid), "U0AMIRA", channel=where[0], message_ts=where[1])
        slack.settle()
        assert service.get(rid).state == S.CANCELLED
        [updated] = [
            u
            for u in slack.fake.calls_to("chat.update")
            if (u.args["channel"], u.args["ts"]) == where
        ]
        assert cancelled_by(service, clock) in updated.args["text"]
        assert cancel_buttons(updated.args["blocks"]) == []
        assert {u.args["channel"] for u in card_updates(slack, rid)} == APPROVERS
        # That DM now says it; nothing new is posted to her about it.
        assert len(slack.fake.calls_to("chat.postMessage", channel="U0AMIRA")) == 1

    def test_her_dm_follows_an_approval_too(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        values = {
            v.ACCESS_BLOCK: {v.ACCESS_ACTION: {"selected_option": {"value": "pharmacy-db:read"}}},
            v.DURATION_BLOCK: {v.DURATION_ACTION: {"selected_option": {"value": "30m"}}},
            v.REASON_BLOCK: {v.REASON_ACTION: {"value": REASON}},
            v.TICKET_BLOCK: {v.TICKET_ACTION: {"value": ""}},
        }
        slack.submit_view(v.REQUEST_VIEW, values, "U0AMIRA")
        slack.settle()
        [dm] = slack.fake.wait_for("chat.postMessage", 1, channel="U0AMIRA")
        rid = int(cancel_buttons(dm.args["blocks"])[0]["value"])
        slack.click(APPROVE_ACTION, str(rid), "U0BEN")
        slack.settle()
        [updated] = [
            u for u in slack.fake.calls_to("chat.update") if u.args["ts"] == dm.response["ts"]
        ]
        assert "access active until" in updated.args["text"]
        assert cancel_buttons(updated.args["blocks"]) == []  # too late to cancel

    def test_someone_else_pressing_cancel_changes_nothing(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        rid = ask(slack)
        # The value is only routing data: Chloe, with a crafted click, is not the requester.
        slack.click(CANCEL_ACTION, str(rid), "U0CHLOE", channel="D0CHLOE")
        note = slack.fake.wait_for("chat.postEphemeral", 1)[0]
        assert note.args["user"] == "U0CHLOE"
        assert "Only the person who asked for request" in note.args["text"]
        assert service.get(rid).state == S.PENDING
        assert card_updates(slack, rid) == []

    def test_a_double_click_cancels_once(self, slack: RunningApp, service: AccessService) -> None:
        rid = ask(slack)
        clicks = [
            threading.Thread(
                target=slack.click,
                args=(CANCEL_ACTION, str(rid), "U0AMIRA"),
                kwargs={"channel": None, "view": {"id": "VHOME"}},
            )
            for _ in range(2)
        ]
        for t in clicks:
            t.start()
        for t in clicks:
            t.join()
        slack.settle()
        assert service.get(rid).state == S.CANCELLED
        assert request_cancelled_events(service, rid) == 1
        # The second click is told plainly, in a DM (it came from the App Home).
        told = slack.fake.calls_to("chat.postMessage", channel="U0AMIRA")
        assert any(f"Request #{rid} was already cancelled." in t.args["text"] for t in told)
        assert audit.verify(service.db).ok

    def test_slack_delivering_the_same_click_again_changes_nothing_more(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        rid = ask(slack)
        payload = {
            "type": "block_actions",
            "team": {"id": slack.team},
            "user": {"id": "U0AMIRA", "team_id": slack.team},
            "api_app_id": "A0WARDKEY",
            "trigger_id": "1.2.3",
            "container": {"type": "view", "view_id": "VHOME"},
            "view": {"id": "VHOME"},
            "actions": [{"type": "button", "action_id": CANCEL_ACTION, "value": str(rid)}],
        }
        body = urlencode({"payload": json.dumps(payload)})
        now = int(time.time())
        assert slack.post(body, timestamp=now).status_code == 200
        assert slack.post(body, timestamp=now).status_code == 409  # the inbox refuses it
        slack.settle()
        assert request_cancelled_events(service, rid) == 1


class TestAtOnce:  # on SQLite and on a real PostgreSQL
    def test_ten_cancels_at_once_apply_once(self, service: AccessService) -> None:
        """Two instances (or a double click in two processes) cancelling together."""
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)
        results, errors = all_at_once(10, lambda n: service.cancel(req.id, AMIRA))
        assert len(results) == 1, errors
        assert all(isinstance(e, AlreadyDecided) for e in errors), errors
        assert request_cancelled_events(service, req.id) == 1
        assert audit.verify(service.db).ok

    def test_a_cancel_and_an_approval_at_once_never_both_apply(
        self, service: AccessService
    ) -> None:
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)
        calls = [lambda: service.cancel(req.id, AMIRA), lambda: service.approve(req.id, BEN)]
        results, errors = all_at_once(2, lambda n: calls[n]())
        assert len(results) == 1 and len(errors) == 1, (results, errors)
        final = service.get(req.id).state
        assert final in (S.CANCELLED, S.ACTIVE)
        actions = audit_actions(service, req.id)
        assert ("request.cancelled" in actions) != ("request.approved" in actions)
