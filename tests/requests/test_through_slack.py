"""Requests through Slack (app/requests/listeners.py, the App Home in app/requests/flows.py):
signed commands, clicks and forms sent to the running app over real HTTP, and the Web API calls
that follow on the fake Slack. Asking, approving and denying from the cards, `/jit` help, targets
and status, the request form, the App Home, two approvers at once, malformed and hostile text."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import pytest
from slack_sdk.errors import SlackApiError

from app.access import AccessService
from app.clock import ManualClock
from app.directory import SlackDirectory
from app.notify.notifier import Notifier
from app.requests.messages import APPROVE_ACTION, DENY_ACTION, DENY_BLOCK, DENY_INPUT, DENY_VIEW
from app.slack.app import web_client
from app.store.models import RequestState as S
from tests.fakes.memory_adapter import MemoryTarget
from tests.slack_harness import RunningApp, SlackOnSqlite, ask


class TestRequestAndApprove(SlackOnSqlite):
    def test_on_call_lead_approves_at_3am_and_every_card_updates(
        self, slack: RunningApp, service: AccessService, targets: dict[str, MemoryTarget]
    ) -> None:
        rid = ask(slack)
        cards = slack.fake.wait_for("chat.postMessage", 3)
        # Ben (on call), Gita and Hana (managers) each get the card in a DM.
        assert sorted(c.response["channel"] for c in cards) == ["D0BEN", "D0GITA", "D0HANA"]
        card = json.dumps(cards[0].args["blocks"])
        assert "Amira Khan, Clinical systems analyst" in card
        assert "No elevations in the last 30 days" in card
        assert APPROVE_ACTION in card and DENY_ACTION in card

        assert slack.click(APPROVE_ACTION, str(rid), "U0BEN").status_code == 200
        updates = slack.fake.wait_for("chat.update", 3)
        assert {u.args["channel"] for u in updates} == {"D0BEN", "D0GITA", "D0HANA"}
        assert all("Approved by Ben Hughes" in json.dumps(u.args["blocks"]) for u in updates)
        assert all(APPROVE_ACTION not in json.dumps(u.args["blocks"]) for u in updates)
        dm = slack.fake.wait_for("chat.postMessage", 1, channel="U0AMIRA")[0]
        assert "access active until 03:30" in dm.args["text"]
        assert service.get(rid).state == S.ACTIVE
        assert targets["pharmacy-db"].holds("amira", "pharmacy_read")

    def test_a_non_approver_click_changes_nothing(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        rid = ask(slack)
        slack.click(APPROVE_ACTION, str(rid), "U0CHLOE")
        note = slack.fake.wait_for("chat.postEphemeral", 1)[0]
        assert note.args["user"] == "U0CHLOE"
        assert "not an approver" in note.args["text"]
        assert service.get(rid).state == S.PENDING

    def test_the_requester_clicking_their_own_card(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        rid = ask(slack)
        slack.fake.wait_for("chat.postMessage", 3)
        slack.click(APPROVE_ACTION, str(rid), "U0AMIRA")
        note = slack.fake.wait_for("chat.postEphemeral", 1)[0]
        assert "your own request" in note.args["text"]
        assert service.get(rid).state == S.PENDING

    def test_a_double_click_approves_once(
        self, slack: RunningApp, service: AccessService, targets: dict[str, MemoryTarget]
    ) -> None:
        rid = ask(slack)
        slack.fake.wait_for("chat.postMessage", 3)
        slack.click(APPROVE_ACTION, str(rid), "U0BEN")
        slack.click(APPROVE_ACTION, str(rid), "U0BEN")
        note = slack.fake.wait_for("chat.postEphemeral", 1)[0]
        assert "already" in note.args["text"]
        slack.fake.wait_for("chat.update", 3)
        assert [c[0] for c in targets["pharmacy-db"].calls].count("grant") == 1

    def test_a_click_after_the_request_timed_out(
        self, slack: RunningApp, service: AccessService, clock: object
    ) -> None:
        rid = ask(slack)
        clock.advance(timedelta(minutes=31))  # type: ignore[attr-defined]
        service.time_out_overdue()
        slack.click(APPROVE_ACTION, str(rid), "U0BEN")
        note = slack.fake.wait_for("chat.postEphemeral", 1)[0]
        assert "timed out" in note.args["text"]

    def test_approval_card_survives_a_rate_limit(
        self, slack: RunningApp, service: AccessService, clock: ManualClock
    ) -> None:
        slack.fake.rate_limit("chat.postMessage", times=1, retry_after=1)
        ask(slack)
        assert any(c.status == 429 for c in slack.fake.calls)
        # The card waits in the outbox as Slack asked; the deliver sweep sends it after that.
        clock.advance(timedelta(seconds=1))
        client = web_client(slack.fake.token, slack.fake.api_url)
        Notifier(client, service, SlackDirectory(client)).outbox.deliver_due()
        assert len(slack.fake.wait_for("chat.postMessage", 3, timeout=8)) == 3


class TestDeny(SlackOnSqlite):
    def test_deny_asks_for_a_reason_and_tells_the_requester(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        rid = ask(slack)
        slack.click(DENY_ACTION, str(rid), "U0BEN")
        opened = slack.fake.wait_for("views.open", 1)[0]
        meta = opened.args["view"]["private_metadata"]

        empty = slack.submit_view(
            DENY_VIEW, {DENY_BLOCK: {DENY_INPUT: {"value": " "}}}, "U0BEN", meta
        )
        assert empty.json()["response_action"] == "errors"
        assert service.get(rid).state == S.PENDING

        done = slack.submit_view(
            DENY_VIEW,
            {DENY_BLOCK: {DENY_INPUT: {"value": "use the order set tool"}}},
            "U0BEN",
            meta,
        )
        assert done.status_code == 200
        assert service.get(rid).state == S.DENIED
        dm = slack.fake.wait_for("chat.postMessage", 1, channel="U0AMIRA")[0]
        assert "Denied by Ben Hughes" in dm.args["text"]
        assert "use the order set tool" in dm.args["text"]


class TestCommands(SlackOnSqlite):
    def test_help_targets_and_status(self, slack: RunningApp) -> None:
        assert "/jit request" in slack.command("/jit", "help", "U0AMIRA").json()["text"]
        slack.command("/jit", "targets", "U0AMIRA")
        targets = slack.replies()[-1]
        assert "`pharmacy-db:read` (clinical, up to 2h)" in targets, targets
        rid = ask(slack)
        slack.command("/jit", "status", "U0AMIRA")
        assert f"#{rid} `pharmacy-db:read`: ⏳ Waiting for approval" in slack.replies(3)[-1]


class TestRequestForm(SlackOnSqlite):
    def submit(
        self,
        slack: RunningApp,
        access: str,
        duration: str,
        reason: str,
        ticket: str = "",
        user: str = "U0AMIRA",
    ) -> dict[str, Any]:
        from app.requests import messages as v

        values = {
            v.ACCESS_BLOCK: {v.ACCESS_ACTION: {"selected_option": {"value": access}}},
            v.DURATION_BLOCK: {v.DURATION_ACTION: {"selected_option": {"value": duration}}},
            v.REASON_BLOCK: {v.REASON_ACTION: {"value": reason}},
            v.TICKET_BLOCK: {v.TICKET_ACTION: {"value": ticket}},
        }
        response = slack.submit_view(v.REQUEST_VIEW, values, user)
        assert response.status_code == 200
        return response.json() if response.content else {}

    def test_jit_alone_opens_a_form_with_only_what_i_may_ask_for(self, slack: RunningApp) -> None:
        assert slack.command("/jit", "", "U0AMIRA").status_code == 200
        opened = slack.fake.wait_for("views.open", 1)[0]
        view = opened.args["view"]
        options = view["blocks"][0]["element"]["options"]
        assert [o["value"] for o in options] == ["directory:helpdesk", "pharmacy-db:read"]
        assert "clinical, up to 2h" in options[1]["text"]["text"]

    def test_the_form_opens_in_time_while_slack_throttles_other_work(
        self, slack: RunningApp
    ) -> None:
        # Slack asks for a 4 s wait on App Home redraws; the form's trigger_id lives 3 s, so the
        # form must not queue behind them (the redraws wait in the outbox, holding no thread).
        slack.fake.rate_limit("views.publish", times=8, retry_after=4)
        others = ["U0BEN", "U0CHLOE", "U0DEV", "U0ERIN", "U0FARID", "U0GITA", "U0HANA", "U0VAL"]
        for n, user in enumerate(others):
            event = {"type": "app_home_opened", "user": user, "tab": "home"}
            assert slack.event(event, f"EvBusy{n}").status_code == 200
        deadline = time.monotonic() + 5
        while not any(c.status == 429 for c in slack.fake.calls):  # Slack is throttling
            assert time.monotonic() < deadline, "the App Home redraws did not start"
            time.sleep(0.02)
        assert slack.command("/jit", "", "U0AMIRA").status_code == 200
        opened = slack.fake.wait_for("views.open", 1, timeout=3)[0]
        assert opened.response["ok"], opened.response

    def test_a_late_trigger_is_refused_as_slack_does(self, slack: RunningApp) -> None:
        stale = f"{time.monotonic_ns() - 4_000_000_000}.0a1b"
        client = web_client(slack.fake.token, slack.fake.api_url)
        with pytest.raises(SlackApiError, match="expired_trigger_id"):
            client.views_open(trigger_id=stale, view={"type": "modal", "blocks": []})
        with pytest.raises(SlackApiError, match="invalid_trigger_id"):
            client.views_open(trigger_id="made-up", view={"type": "modal", "blocks": []})

    def test_choosing_a_role_narrows_durations_to_its_cap(self, slack: RunningApp) -> None:
        slack.command("/jit", "", "U0AMIRA")
        opened = slack.fake.wait_for("views.open", 1)[0].response["view"]
        payload_view = {"id": opened["id"], "hash": opened["hash"], "type": "modal"}
        slack.click("access_choice", "", "U0AMIRA", channel=None, view=payload_view)
        # A select sends selected_option rather than value; Bolt passes the action through.
        updated = slack.fake.wait_for("views.update", 1)[0].args["view"]
        durations = [o["value"] for o in updated["blocks"][1]["element"]["options"]]
        assert durations[-1] in ("2h", "4h")

    def test_a_refused_choice_in_the_form_is_told_to_the_chooser(self, slack: RunningApp) -> None:
        # The form was opened before the account became a guest's: choosing a role must say
        # why nothing happens rather than leave the form as it was without a word.
        payload_view = {"id": "V0FORM", "hash": "1", "type": "modal"}
        response = slack.click("access_choice", "", "U0GUEST", channel=None, view=payload_view)
        assert response.status_code == 200
        [told] = slack.fake.wait_for("chat.postMessage", 1, channel="U0GUEST")
        assert "deactivated, a guest or a bot" in told.args["text"]
        slack.settle()
        assert slack.fake.calls_to("views.update") == []

    def test_errors_appear_on_the_field(self, slack: RunningApp, service: AccessService) -> None:
        too_long = self.submit(slack, "pharmacy-db:read", "4h", "fix stuck order set on ward 12")
        assert too_long["response_action"] == "errors"
        assert "2h allowed" in too_long["errors"]["duration"]
        short = self.submit(slack, "pharmacy-db:read", "30m", "urgent")
        assert "at least 3 words" in short["errors"]["reason"]
        no_ticket = self.submit(slack, "directory:helpdesk", "1h", "reset locked ward accounts")
        assert "needs a ticket" in no_ticket["errors"]["ticket"]
        assert service.requests_of_key("amira@ward.nhs.uk") == []

    def test_a_good_submission_goes_to_the_approvers(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        assert self.submit(slack, "pharmacy-db:read", "30m", "fix stuck order set on ward 12") == {}
        assert len(slack.fake.wait_for("chat.postMessage", 3, timeout=5)) >= 3
        [mine] = service.requests_of_key("amira@ward.nhs.uk")
        assert mine.state == S.PENDING


class TestAppHome(SlackOnSqlite):
    def test_home_shows_my_access_and_what_waits_for_me(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        rid = ask(slack)
        slack.fake.wait_for("chat.postMessage", 3)
        slack.event({"type": "app_home_opened", "user": "U0BEN", "tab": "home"}, "Ev01")
        home = slack.fake.wait_for("views.publish", 1, user_id="U0BEN")[-1].args["view"]
        text = json.dumps(home)
        assert "Waiting for your approval" in text and f"*#{rid}*" in text

        slack.click(APPROVE_ACTION, str(rid), "U0BEN", channel=None, view={"id": "VHOME"})
        slack.fake.wait_for("chat.update", 3)
        slack.event({"type": "app_home_opened", "user": "U0AMIRA", "tab": "home"}, "Ev02")
        home = slack.fake.wait_for("views.publish", 1, user_id="U0AMIRA")[-1]
        text = json.dumps(home.args["view"])
        assert "30m left (until 03:30)" in text
        assert "home_extend" in text and "home_revoke" in text

    def test_only_homes_opened_this_shift_are_redrawn_as_things_change(
        self, slack: RunningApp, service: AccessService, clock: Any
    ) -> None:
        for n, user in enumerate(("U0BEN", "U0GITA")):  # two approvers look at their homes
            slack.event({"type": "app_home_opened", "user": user, "tab": "home"}, f"Ev1{n}")
        slack.fake.wait_for("views.publish", 2)
        rid = ask(slack)
        slack.settle()
        for approver in ("U0BEN", "U0GITA"):
            home = slack.fake.wait_for("views.publish", 2, user_id=approver)[-1]
            assert f"*#{rid}*" in json.dumps(home.args["view"])
        assert len(slack.fake.calls_to("views.publish")) == 4  # not Amira's, not Hana's

        clock.advance(timedelta(hours=13))  # they looked a shift ago
        service.time_out_overdue()  # the first request timed out meanwhile
        again = ask(slack)  # Gita, a manager, is still among its approvers
        slack.settle()
        assert service.get(again).state == S.PENDING
        assert len(slack.fake.calls_to("views.publish")) == 4

    def test_an_open_home_follows_each_change_that_concerns_me(self, slack: RunningApp) -> None:
        slack.event({"type": "app_home_opened", "user": "U0AMIRA", "tab": "home"}, "Ev20")
        slack.fake.wait_for("views.publish", 1, user_id="U0AMIRA")
        rid = ask(slack)
        slack.settle()
        pending = slack.fake.calls_to("views.publish", user_id="U0AMIRA")[-1]
        assert "YOUR PENDING REQUESTS" in json.dumps(pending.args["view"]).upper()
        assert f"*#{rid}*" in json.dumps(pending.args["view"])
        slack.click(APPROVE_ACTION, str(rid), "U0BEN")
        slack.settle()
        active = slack.fake.calls_to("views.publish", user_id="U0AMIRA")[-1]
        assert "30m left" in json.dumps(active.args["view"])
        assert "home_revoke" in json.dumps(active.args["view"])


class TestTwoApproversAtOnce(SlackOnSqlite):
    def test_two_on_call_approvers_clicking_together(
        self, slack: RunningApp, service: AccessService, targets: dict[str, MemoryTarget]
    ) -> None:
        import threading

        rid = ask(slack)
        slack.fake.wait_for("chat.postMessage", 3)
        clicks = [
            threading.Thread(target=slack.click, args=(APPROVE_ACTION, str(rid), who))
            for who in ("U0BEN", "U0GITA")
        ]
        for t in clicks:
            t.start()
        for t in clicks:
            t.join()
        note = slack.fake.wait_for("chat.postEphemeral", 1)[0]
        assert "already" in note.args["text"]
        slack.fake.wait_for("chat.update", 3)
        assert service.get(rid).state == S.ACTIVE
        assert len(service.get(rid).approvals) == 1
        assert [c[0] for c in targets["pharmacy-db"].calls].count("grant") == 1


class TestMalformedAndHostileText(SlackOnSqlite):
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("request", "Say what you need"),
            ("request pharmacy-db 30m fix the order set", "not a target and role"),
            ("request pharmacy-db:read soon fix the order set", "not a duration"),
            ("request x:y 30m " + "a" * 10_000, "keep it under 2,000"),
            ("request pharmacy-db:read' OR 1=1-- 30m drop it now", "not a target and role"),
            ("request *)(cn=*):admin 30m ldap games here", "not a target and role"),
            ("frobnicate", "I don't know 'frobnicate'"),
            ("extend twelve 30m", "not a request number"),
            ("request pharmacy-db:read 9999999999d fix it for ever", "more than a year"),
            ("extend 1 99999999999m", "more than a year"),
        ],
    )
    def test_malformed_commands_get_an_example_and_create_nothing(
        self, slack: RunningApp, service: AccessService, text: str, expected: str
    ) -> None:
        response = slack.command("/jit", text, "U0AMIRA")
        assert response.status_code == 200
        body = response.json()
        assert body["response_type"] == "ephemeral"
        assert expected in body["text"]
        assert "For example: `/jit" in body["text"]
        assert service.requests_of_key("amira@ward.nhs.uk") == []

    def test_a_channel_ping_in_the_reason_is_shown_but_never_pings(self, slack: RunningApp) -> None:
        ask(slack, "pharmacy-db:read 30m <!channel> please look at ward 12 orders")
        card = json.dumps(slack.fake.wait_for("chat.postMessage", 3)[0].args["blocks"])
        assert "<!channel>" not in card
        assert "&lt;!channel&gt;" in card

    def test_a_reason_dressed_as_wardkeys_own_words_shows_as_the_requesters_quoted_words(
        self, slack: RunningApp
    ) -> None:
        """Amira's reason tries to look like a security sign-off: bold, code, a link, a ping."""
        reason = (
            "*APPROVED BY SECURITY* `ok` _urgent_ ~x~ see https://evil.example/sso "
            "and wardkey-approve.example.com <!channel> <@U0GITA> <https://x.example|Approve>"
        )
        rid = ask(slack, f"pharmacy-db:read 30m {reason}")
        cards = slack.fake.wait_for("chat.postMessage", 3)
        for shown in [json.dumps(c.args["blocks"]) for c in cards] + [
            c.args["text"] for c in cards
        ]:
            for live in ("*APPROVED", "`ok`", "_urgent_", "~x~", "<!channel>", "<@U0GITA>"):
                assert live not in shown, live
            for link in ("https://", "evil.example", "approve.example.com", "<https"):
                assert link not in shown, link
        card = cards[0].args["blocks"]
        why = next(b for b in card if "Why" in b.get("text", {}).get("text", ""))
        assert why["text"]["verbatim"] is True  # Slack adds no links of its own either
        assert "\n> \u2217APPROVED BY SECURITY\u2217 \u02cbok\u02cb" in why["text"]["text"]
        assert "&lt;!channel&gt;" in why["text"]["text"]
        # Who asked is the account Slack verified, with its directory name, never typed text.
        who = card[1]["fields"][0]["text"]
        assert who == "*Who*\n<@U0AMIRA> (Amira Khan, Clinical systems analyst)"
        assert rid > 0

    def test_a_profile_name_cannot_dress_up_as_wardkey_either(self, slack: RunningApp) -> None:
        from app.demo.slack_fake import SlackUser

        slack.fake.add_user(
            SlackUser("U0AMIRA", "amira@ward.nhs.uk", "*Security team*", "<!here> `approved`")
        )
        ask(slack)
        blocks = slack.fake.wait_for("chat.postMessage", 3)[0].args["blocks"]
        card = json.dumps(blocks, ensure_ascii=False)
        assert "<@U0AMIRA> (\u2217Security team\u2217, &lt;!here&gt; \u02cbapproved\u02cb)" in card

    def test_break_glass_and_form_messages_quote_the_reason_inert(self, slack: RunningApp) -> None:
        slack.command(
            "/breakglass", "pharmacy-db:read *CLEARED BY SECURITY* see https://x.example", "U0AMIRA"
        )
        alert = slack.fake.wait_for("chat.postMessage", 1, channel="C0SEC")[0].args["text"]
        assert "<@U0AMIRA>" in alert
        assert "“\u2217CLEARED BY SECURITY\u2217 see https:\u2215\u2215x\u2024example”" in alert

        from app.requests import messages as v

        values = {
            v.ACCESS_BLOCK: {v.ACCESS_ACTION: {"selected_option": {"value": "pharmacy-db:read"}}},
            v.DURATION_BLOCK: {v.DURATION_ACTION: {"selected_option": {"value": "30m"}}},
            v.REASON_BLOCK: {v.REASON_ACTION: {"value": "*Approved* by `security` <!here>"}},
            v.TICKET_BLOCK: {v.TICKET_ACTION: {"value": ""}},
        }
        assert slack.submit_view(v.REQUEST_VIEW, values, "U0CHLOE").status_code == 200
        dm = slack.fake.wait_for("chat.postMessage", 1, channel="U0CHLOE")[0].args["text"]
        assert "“\u2217Approved\u2217 by \u02cbsecurity\u02cb &lt;!here&gt;”" in dm

    def test_zero_width_and_direction_marks_are_ignored_in_names(self, slack: RunningApp) -> None:
        rid = ask(slack, "pharmacy-db:\u200bread\u202e 30m fix stuck order set on ward 12")
        assert rid > 0
