"""Only the trust's own Slack people may use WardKey, whatever e-mail an account carries.

Approvers are policy members named by e-mail, and anyone can put an approver's address on an
account in a workspace of their own. Every story here is a correctly signed request, as Slack
would send it: a valid signature proves Slack sent it, not that the sender is one of ours.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest

from app.access import AccessService
from app.demo.slack_driver import SlackDriver
from app.demo.slack_fake import SlackUser, new_trigger_id
from app.directory import OUTSIDER, Workspace
from app.requests.messages import APPROVE_ACTION, DENY_BLOCK, DENY_INPUT, DENY_VIEW
from app.reviews.messages import REVIEW_JUSTIFIED
from app.store.models import RequestState as S
from tests.slack_harness import RunningApp, SlackOnSqlite, run_app

REQUEST = "request pharmacy-db:read 30m fix stuck order set on ward 12"
# Someone's own workspace, with the addresses of Ben (an on-call approver) and Chloe on accounts.
MALLORY = SlackUser("U0MALLORY", "ben@ward.nhs.uk", "Ben Hughes", team_id="T0EVIL")
MALLORY_AS_CHLOE = SlackUser("U0MAL2", "chloe@ward.nhs.uk", "Chloe Evans", team_id="T0EVIL")
# A supplier's engineer in a Slack Connect channel shared with the trust, who has Ben's address.
PARTNER = SlackUser("U0PARTNER", "ben@ward.nhs.uk", "Ben Hughes", team_id="T0PARTNER")
# An account Slack shows the app but that is in no channel shared with it (`is_stranger`).
STRANGER = SlackUser(
    "U0STRANGE", "ben@ward.nhs.uk", "Ben Hughes", team_id="T0PARTNER", is_stranger=True
)


def from_team(slack: RunningApp, team: str) -> SlackDriver:
    """The same Slack, sending requests from another workspace."""
    return dataclasses.replace(slack, team=team)


def click_in_shared_channel(
    slack: RunningApp, action_id: str, value: str, user: str, user_team: str | None
) -> None:
    """A click in a channel of the trust's workspace (T0WARD) by a member of another one: Slack
    says where it happened (`team`) and, when it knows it, the clicker's own (`user.team_id`)."""
    who: dict[str, Any] = {"id": user, "username": user.lower()}
    if user_team is not None:
        who["team_id"] = user_team
    payload = {
        "type": "block_actions",
        "team": {"id": "T0WARD", "domain": "ward"},
        "user": who,
        "api_app_id": "A0WARDKEY",
        "trigger_id": new_trigger_id(),
        "response_url": slack.fake.response_url("action"),
        "channel": {"id": "C0SHARED"},
        "container": {"type": "message", "channel_id": "C0SHARED", "message_ts": "1.000100"},
        "message": {"ts": "1.000100", "text": "card"},
        "actions": [{"type": "button", "action_id": action_id, "value": value}],
    }
    assert slack.post(urlencode({"payload": json.dumps(payload)})).status_code == 200


def submit_deny(slack: RunningApp, rid: int, user: str, user_team: str | None) -> dict[str, Any]:
    who: dict[str, Any] = {"id": user}
    if user_team is not None:
        who["team_id"] = user_team
    payload = {
        "type": "view_submission",
        "team": {"id": "T0WARD", "domain": "ward"},
        "user": who,
        "api_app_id": "A0WARDKEY",
        "view": {
            "id": "V0DENY",
            "type": "modal",
            "callback_id": DENY_VIEW,
            "private_metadata": json.dumps({"id": rid, "channel": None}),
            "state": {"values": {DENY_BLOCK: {DENY_INPUT: {"value": "not tonight, sorry"}}}},
            "hash": "1",
        },
    }
    response = slack.post(urlencode({"payload": json.dumps(payload)}))
    assert response.status_code == 200
    return response.json() if response.content else {}


def ask(slack: RunningApp) -> int:
    """Amira, of the trust's workspace, asks for pharmacy-db:read; the cards go out."""
    slack.command("/jit", REQUEST, "U0AMIRA")
    reply = slack.replies()[-1]
    assert reply.startswith("Request #"), reply
    slack.settle()
    return int(reply.split("#")[1].split(" ")[0])


class TestAnotherWorkspace(SlackOnSqlite):
    @pytest.fixture(autouse=True)
    def outsiders(self, slack: RunningApp) -> None:
        for user in (MALLORY, MALLORY_AS_CHLOE, PARTNER, STRANGER):
            slack.fake.add_user(user)

    def test_an_account_elsewhere_with_the_on_call_approvers_email_cannot_approve(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        rid = ask(slack)
        assert from_team(slack, "T0EVIL").click(APPROVE_ACTION, str(rid), "U0MALLORY").is_success
        slack.settle()
        [note] = slack.fake.calls_to("chat.postEphemeral", user="U0MALLORY")
        assert note.args["text"] == OUTSIDER
        assert service.get(rid).state == S.PENDING
        assert service.get(rid).approvals == ()

    def test_a_command_from_another_workspace_is_answered_at_once_and_creates_nothing(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        response = from_team(slack, "T0EVIL").command("/jit", REQUEST, "U0MAL2")
        assert response.json() == {"response_type": "ephemeral", "text": OUTSIDER}
        slack.settle()
        assert service.requests_of_key("chloe@ward.nhs.uk") == []
        assert slack.fake.calls_to("chat.postMessage") == []

    def test_a_form_from_another_workspace_changes_nothing(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        rid = ask(slack)
        answer = submit_deny(from_team(slack, "T0EVIL"), rid, "U0MALLORY", "T0EVIL")
        assert answer["response_action"] == "update"
        assert OUTSIDER in json.dumps(answer["view"])
        assert service.get(rid).state == S.PENDING

    def test_a_slack_connect_partner_in_a_shared_channel_cannot_approve(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        rid = ask(slack)
        click_in_shared_channel(slack, APPROVE_ACTION, str(rid), "U0PARTNER", "T0PARTNER")
        slack.settle()
        [note] = slack.fake.calls_to("chat.postEphemeral", user="U0PARTNER")
        assert note.args["text"] == OUTSIDER
        assert service.get(rid).state == S.PENDING

    def test_a_stranger_is_judged_by_their_account_not_by_the_channel_they_clicked_in(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        # Slack does not say the stranger's own workspace; users.info does (`is_stranger`).
        rid = ask(slack)
        click_in_shared_channel(slack, APPROVE_ACTION, str(rid), "U0STRANGE", None)
        answer = submit_deny(slack, rid, "U0STRANGE", None)
        slack.settle()
        [note] = slack.fake.calls_to("chat.postEphemeral", user="U0STRANGE")
        assert note.args["text"] == OUTSIDER
        assert answer["response_action"] == "errors"
        assert OUTSIDER in answer["errors"][DENY_BLOCK]
        assert service.get(rid).state == S.PENDING

    def test_a_review_click_from_an_account_elsewhere_is_refused(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        slack.command("/breakglass", "pharmacy-db:read pharmacy system down in ED", "U0AMIRA")
        slack.settle()
        [view] = service.requests_of_key("amira@ward.nhs.uk")
        # Someone with Gita's (a reviewer's) address, in a channel shared with the trust.
        slack.fake.add_user(SlackUser("U0FAKEGITA", "gita@ward.nhs.uk", "Gita", team_id="T0P"))
        click_in_shared_channel(slack, REVIEW_JUSTIFIED, str(view.id), "U0FAKEGITA", None)
        slack.settle()
        assert slack.fake.calls_to("views.open") == []
        [note] = slack.fake.calls_to("chat.postEphemeral", user="U0FAKEGITA")
        assert note.args["text"] == OUTSIDER

    def test_an_account_elsewhere_opening_the_app_home_sees_nothing(
        self, slack: RunningApp
    ) -> None:
        ask(slack)
        event = {"type": "app_home_opened", "user": "U0MALLORY", "tab": "home"}
        assert from_team(slack, "T0EVIL").event(event, "EvMallory").status_code == 200
        slack.settle()
        assert slack.fake.calls_to("views.publish", user_id="U0MALLORY") == []


class TestCardsGoOnlyToOurPeople(SlackOnSqlite):
    def test_an_approvers_address_found_only_on_an_outside_account_gets_no_card(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        # Slack's e-mail lookup finds the outside account with Ben's address first.
        slack.fake.users = {MALLORY.id: MALLORY, **slack.fake.users}
        rid = ask(slack)
        cards = slack.fake.calls_to("chat.postMessage")
        assert sorted(c.response["channel"] for c in cards) == ["D0GITA", "D0HANA"]
        assert service.get(rid).state == S.PENDING


class TestConfiguredWorkspaces(SlackOnSqlite):
    """SLACK_TEAM_IDS and SLACK_ENTERPRISE_ID: a trust on Enterprise Grid, with a second site."""

    @pytest.fixture
    def slack(self, service: AccessService) -> Iterator[RunningApp]:
        workspace = Workspace.configured("T0WARD", "E0TRUST")
        assert workspace is not None
        yield from run_app(service, workspace)

    def click_from(self, slack: RunningApp, rid: int, user: str, team: str, org: str) -> None:
        payload = {
            "type": "block_actions",
            "team": {"id": team, "domain": "site", "enterprise_id": org},
            "enterprise": {"id": org, "name": org},
            "user": {"id": user, "team_id": team},
            "api_app_id": "A0WARDKEY",
            "trigger_id": new_trigger_id(),
            "response_url": slack.fake.response_url("action"),
            "channel": {"id": "D0CARD"},
            "container": {"type": "message", "channel_id": "D0CARD", "message_ts": "1.000100"},
            "message": {"ts": "1.000100", "text": "card"},
            "actions": [{"type": "button", "action_id": APPROVE_ACTION, "value": str(rid)}],
        }
        assert slack.post(urlencode({"payload": json.dumps(payload)})).status_code == 200

    def test_a_sister_site_approves_and_another_org_cannot(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        # Ben works at the trust's second site, a workspace of the same org.
        slack.fake.add_user(
            SlackUser(
                "U0BEN", "ben@ward.nhs.uk", "Ben Hughes", team_id="T0SITE2", enterprise_id="E0TRUST"
            )
        )
        slack.fake.add_user(
            SlackUser(
                "W0OTHER", "ben@ward.nhs.uk", "Ben Hughes", team_id="T0OTH", enterprise_id="E0OTHER"
            )
        )
        rid = ask(slack)
        self.click_from(slack, rid, "W0OTHER", "T0OTH", "E0OTHER")
        slack.settle()
        assert service.get(rid).state == S.PENDING
        self.click_from(slack, rid, "U0BEN", "T0SITE2", "E0TRUST")
        slack.settle()
        deadline = time.monotonic() + 5
        while service.get(rid).state != S.ACTIVE:
            assert time.monotonic() < deadline, service.get(rid).state
            time.sleep(0.02)
        [note] = slack.fake.calls_to("chat.postEphemeral")
        assert (note.args["user"], note.args["text"]) == ("W0OTHER", OUTSIDER)


class TestWorkspaceRule:
    @pytest.mark.parametrize(
        ("teams", "org", "admitted"),
        [
            (["T0WARD"], None, True),
            (["T0WARD", "T0WARD"], None, True),
            (["T0WARD", "T0EVIL"], None, False),  # a partner, in our channel
            ([None, None], None, False),  # says nothing: fail closed
            (["T0SITE2"], "E0TRUST", True),
            (["T0SITE2"], "E0OTHER", False),
            (["T0WARD"], "E0OTHER", False),
        ],
    )
    def test_whose_workspace_counts(
        self, teams: list[str | None], org: str | None, admitted: bool
    ) -> None:
        workspace = Workspace(frozenset({"T0WARD"}), "E0TRUST")
        assert workspace.admits(teams, org) is admitted

    def test_the_token_s_own_workspace_by_default(self) -> None:
        assert Workspace.configured("", None) is None
        assert Workspace.of_token({"team_id": "T0WARD", "enterprise_id": "E0TRUST"}) == Workspace(
            frozenset({"T0WARD"})
        )
        org_wide = {"team_id": None, "enterprise_id": "E0TRUST", "is_enterprise_install": True}
        assert Workspace.of_token(org_wide) == Workspace(frozenset(), "E0TRUST")
        assert Workspace.configured(" T0A, T0B ,", None) == Workspace(frozenset({"T0A", "T0B"}))
