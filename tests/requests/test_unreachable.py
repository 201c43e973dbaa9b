"""No dead end at 3 am: when Slack reaches no approver, the nurse is told at once what happened
and what to do, the request goes straight to the escalation group, and security and the WardKey
admins are alerted; and what WardKey tells people after delivery is only what Slack took.

Every story runs through the real app over signed HTTP against the fake Slack Web API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.access import AccessService
from app.blockkit import inert
from app.clock import ManualClock
from app.demo.slack_fake import Call, SlackChannel, SlackUser
from app.directory import SlackDirectory
from app.notify.notifier import Notifier
from app.oncall import OnCall
from app.policy import Policy, parse_policy
from app.policy.rules import approvers_at
from app.requests import jobs as request_jobs
from app.requests.messages import APPROVE_ACTION
from app.scheduler import JobDeps, job_deps
from app.slack.app import web_client
from app.store.models import RequestState as S
from tests.conftest import AMIRA, ERIN, HERE
from tests.conftest import audit_actions as actions
from tests.slack_harness import RunningApp, SlackOnSqlite

REQUEST = "pharmacy-db:read 30m fix stuck order set on ward 12"


def ward_policy(**changes: Any) -> Policy:
    """The test trust's policy with the clinical path approved by its on-call rota alone (Ben
    and Chloe both on call, so one can approve the other; the managers are its escalation
    group), and `changes` applied to the rota and path."""
    data = yaml.safe_load((HERE / "data" / "ward_policy.yaml").read_text())
    data["paths"]["clinical"]["approvers"] = [{"rota": "clinical-oncall"}]
    data["oncall"]["clinical-oncall"]["on_call"] = 2
    data["oncall"]["clinical-oncall"].update(changes.pop("rota", {}))
    data["paths"]["clinical"].update(changes.pop("path", {}))
    assert not changes
    return parse_policy(yaml.safe_dump(data), "test policy")


def ask(slack: RunningApp, text: str = REQUEST, user: str = "U0AMIRA") -> int:
    before = len(slack.fake.calls_to("response_url"))
    assert slack.command("/jit", f"request {text}", user).status_code == 200
    reply = slack.replies(before + 1)[-1]
    assert reply.startswith("Request #"), reply
    slack.settle()
    return int(reply.split("#")[1].split(" ")[0])


def posts_to(slack: RunningApp, channel: str) -> list[Call]:
    return slack.fake.calls_to("chat.postMessage", channel=channel)


def texts(calls: list[Call]) -> str:
    return "\n".join(c.args.get("text", "") + json.dumps(c.args.get("blocks") or []) for c in calls)


class UnreachableStory(SlackOnSqlite):
    @pytest.fixture
    def slack(self, service: AccessService) -> Iterator[RunningApp]:
        from tests.slack_harness import run_app

        for running in run_app(service):
            running.fake.add_channel(SlackChannel("C0SEC", "security-alerts", is_private=True))
            running.fake.add_channel(SlackChannel("C0MGR", "manager-reviews"))
            yield running

    def job_deps(self, slack: RunningApp, service: AccessService) -> JobDeps:
        client = web_client(slack.fake.token, slack.fake.api_url)
        notifier = Notifier(client, service, SlackDirectory(client))
        return job_deps(service, notifier.outbox)

    def assert_nobody_reached_story(
        self, slack: RunningApp, service: AccessService, rid: int, why: str
    ) -> None:
        """What every unreachable story promises, each checked where the person sees it."""
        assert "approval.unreachable" in actions(service, rid)
        assert service.get(rid).escalation_level == 3
        # The escalation group (the managers) has the card at once, with Approve and Deny.
        for manager in ("U0GITA", "U0HANA"):
            cards = [c for c in posts_to(slack, manager) if APPROVE_ACTION in texts([c])]
            assert len(cards) == 1, manager
            assert "no clinical approver could be reached" in cards[0].args["text"]
        # Security, by name, with why and who has it now.
        alert = texts(posts_to(slack, "C0SEC"))
        assert f"No approver could be reached for request #{rid}" in alert
        assert "Amira Khan" in alert and why in alert
        assert "escalated at once to Gita Rao and Hana Novak" in alert
        # Every WardKey admin (Gita) is told directly too.
        assert f"No approver could be reached for request #{rid}" in texts(
            posts_to(slack, "U0GITA")
        )
        # The requester: what happened, the exact break-glass command, who to phone.
        told = texts(posts_to(slack, "U0AMIRA"))
        assert f"No clinical approver could be reached in Slack for your request #{rid}" in told
        assert "It has gone straight to Gita Rao and Hana Novak instead." in told
        assert "`/breakglass pharmacy-db:read what is happening, in a few words`" in told
        assert "Phone Gita Rao (Head of IT operations) and Hana Novak (Duty manager)" in told
        assert "WardKey has alerted #security-alerts and Gita Rao." in told
        assert "ben@" not in told and "(s)" not in told


class TestNobodyOnCallIsInSlack(UnreachableStory):
    @pytest.fixture
    def policy(self) -> Policy:
        return ward_policy(rota={"members": ["locum1@ward.nhs.uk", "locum2@ward.nhs.uk"]})

    def test_the_nurse_is_told_at_once_and_the_managers_can_approve(
        self, slack: RunningApp, service: AccessService, clock: ManualClock
    ) -> None:
        rid = ask(slack)
        self.assert_nobody_reached_story(
            slack, service, rid, inert("locum1@ward.nhs.uk has no account in this Slack workspace")
        )
        # The SLA passing adds nothing: it was escalated at once.
        clock.advance(timedelta(minutes=11))
        sent = len(slack.fake.calls_to("chat.postMessage"))
        request_jobs.escalate(self.job_deps(slack, service))
        assert len(slack.fake.calls_to("chat.postMessage")) == sent
        assert actions(service, rid).count("approval.escalated") == 0
        # A manager decides from the card that reached her.
        assert slack.click(APPROVE_ACTION, str(rid), "U0HANA").status_code == 200
        slack.settle()
        assert service.get(rid).state == S.ACTIVE
        assert "Approved by Hana Novak" in posts_to(slack, "U0AMIRA")[-1].args["text"]


class TestARotaWhoseSourceCannotBeRead(UnreachableStory):
    """The policy reference's promise for a rota read from a rostering export: once the last
    good read is older than `stale_after`, nobody from the rota may approve and its escalation
    group is told, by the request's card at once."""

    AT = datetime(2026, 3, 29, 13, 0, tzinfo=UTC)  # 14:00 in London: Ben on the roster

    @pytest.fixture
    def roster(self, tmp_path: Path) -> Path:
        export = tmp_path / "ward7.csv"
        export.write_bytes((HERE / "data" / "ward7_roster.csv").read_bytes())
        return export

    @pytest.fixture
    def clock(self) -> ManualClock:
        return ManualClock(self.AT)

    @pytest.fixture
    def policy(self, roster: Path, clock: ManualClock) -> Iterator[Policy]:
        data = yaml.safe_load((HERE / "data" / "ward_policy.yaml").read_text())
        data["paths"]["clinical"]["approvers"] = [{"rota": "clinical-oncall"}]
        source = {"roster": {"file": str(roster), "format": "csv"}, "stale_after": "1h"}
        data["oncall"]["clinical-oncall"] = {"source": source, "escalation": "managers"}
        policy = parse_policy(yaml.safe_dump(data), "test policy")
        with httpx.Client() as client:
            yield policy.with_on_call(OnCall(policy, clock, client=client, env={}))

    def test_past_stale_after_the_escalation_group_gets_the_request_at_once(
        self, slack: RunningApp, service: AccessService, clock: ManualClock, roster: Path
    ) -> None:
        assert "ben@ward.nhs.uk" in approvers_at(service.policy, "clinical", clock.now())
        roster.unlink()  # the export is no longer published
        clock.advance(timedelta(hours=1, minutes=6))  # reads failing since; the last is stale
        assert approvers_at(service.policy, "clinical", clock.now()) == []
        rid = ask(slack)
        self.assert_nobody_reached_story(
            slack, service, rid, "nobody is on duty to approve the clinical path"
        )
        assert "U0BEN" not in {c.args["channel"] for c in slack.fake.calls_to("chat.postMessage")}


class TestEveryApproverIsDeactivated(UnreachableStory):
    @pytest.fixture
    def policy(self) -> Policy:
        return ward_policy(rota={"members": ["gone@ward.nhs.uk", "locum@ward.nhs.uk"]})

    def test_a_deactivated_account_is_not_taken_for_an_approver(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        slack.fake.add_user(SlackUser("U0LOCUM", "locum@ward.nhs.uk", "Lee Locum", deleted=True))
        rid = ask(slack)
        # Slack would take a message to a deactivated account; WardKey sends it none.
        assert posts_to(slack, "U0GONE") == posts_to(slack, "U0LOCUM") == []
        self.assert_nobody_reached_story(
            slack, service, rid, "Left Trust's Slack account is deactivated"
        )


class TestSlackRefusesEveryCard(UnreachableStory):
    @pytest.fixture
    def policy(self) -> Policy:
        return ward_policy(path={"channel": "C0CLIN"})

    def test_the_last_refused_card_makes_it_unreachable(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        # Slack refuses the DMs to Ben and Chloe (on call), and WardKey is not in the
        # clinical channel.
        slack.fake.refuse("U0BEN", "user_not_found")
        slack.fake.refuse("U0CHLOE", "user_not_found")
        slack.fake.add_channel(SlackChannel("C0CLIN", "clinical-approvers", is_member=False))
        rid = ask(slack)
        refused = [c for c in slack.fake.calls if c.method == "chat.postMessage" and c.status]
        assert {c.response.get("error") for c in refused} >= {"user_not_found", "not_in_channel"}
        self.assert_nobody_reached_story(
            slack, service, rid, "Slack refused the card to Ben Hughes (no such user)"
        )
        assert "#clinical-approvers (WardKey is not in the channel)" in texts(
            posts_to(slack, "C0SEC")
        )


class TestOneCardIsEnough(UnreachableStory):
    @pytest.fixture
    def policy(self) -> Policy:
        return ward_policy(path={"channel": "C0CLIN"})

    def test_a_refused_card_beside_a_delivered_one_alerts_nobody(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        slack.fake.refuse("U0BEN", "user_not_found")
        slack.fake.refuse("U0CHLOE", "user_not_found")
        slack.fake.add_channel(SlackChannel("C0CLIN", "clinical-approvers"))
        rid = ask(slack)
        assert len(posts_to(slack, "C0CLIN")) == 1
        assert "approval.unreachable" not in actions(service, rid)
        assert posts_to(slack, "C0SEC") == []
        assert "could be reached" not in texts(posts_to(slack, "U0AMIRA"))


class TestEscalationSaysOnlyWhatWasDelivered(UnreachableStory):
    @pytest.fixture
    def policy(self) -> Policy:
        return ward_policy()

    def test_a_refused_escalation_card_is_not_counted(
        self, slack: RunningApp, service: AccessService, clock: ManualClock
    ) -> None:
        rid = ask(slack)
        assert len(posts_to(slack, "U0BEN")) == 1  # the on-call lead has the card
        slack.fake.refuse("U0GITA", "user_not_found")
        clock.advance(timedelta(minutes=11))
        request_jobs.escalate(self.job_deps(slack, service))
        told = posts_to(slack, "U0AMIRA")[-1].args["text"]
        assert (
            told
            == f"Your request #{rid} has waited 11m, so it has been escalated to Hana Novak too."
        )

    def test_no_escalation_card_delivered_says_so_and_what_to_do(
        self, slack: RunningApp, service: AccessService, clock: ManualClock
    ) -> None:
        rid = ask(slack)
        slack.fake.refuse("U0GITA", "user_not_found")
        slack.fake.refuse("U0HANA", "user_not_found")
        clock.advance(timedelta(minutes=11))
        request_jobs.escalate(self.job_deps(slack, service))
        told = posts_to(slack, "U0AMIRA")[-1].args["text"]
        assert f"Your request #{rid} has waited 11m and nobody further could be reached" in told
        assert "`/breakglass pharmacy-db:read" in told
        assert "escalated to" not in told


class TestAnExtensionNobodyCanApprove(UnreachableStory):
    def test_the_holder_is_told_their_access_carries_on_and_whom_to_phone(
        self, slack: RunningApp, service: AccessService, clock: ManualClock
    ) -> None:
        # Dev holds pharmacy-db:owner, approved by Erin and Farid (engineering asks for two).
        rid = ask(slack, "pharmacy-db:owner 1h restart the results feed CHG0012345", "U0DEV")
        for lead in ("U0ERIN", "U0FARID"):
            slack.click(APPROVE_ACTION, str(rid), lead)
            slack.settle()
        assert service.get(rid).state == S.ACTIVE
        # Later every infrastructure lead's DM is refused; Dev asks for 30 more minutes.
        for lead in ("U0ERIN", "U0FARID", "U0GITA"):
            slack.fake.refuse(lead, "account_inactive")
        clock.advance(timedelta(minutes=40))
        slack.command("/jit", f"extend {rid} 30m", "U0DEV")
        slack.settle()
        assert "approval.unreachable" in actions(service, rid)
        told = texts(posts_to(slack, "U0DEV"))
        assert f"for your extension of your access #{rid}" in told
        assert "The engineering path has no escalation group to send it to." in told
        assert "Your access carries on until 04:00." in told
        assert "Phone Gita Rao (Head of IT operations)." in told  # the WardKey admins
        alert = texts(posts_to(slack, "C0SEC"))
        assert "Slack refused the card to Erin Walsh (account deactivated)" in alert


class TestRecordedOnce:
    """The service's side, on SQLite and PostgreSQL: recorded once, audited, escalated."""

    def test_recorded_once_and_only_while_waiting(
        self, service: AccessService, clock: ManualClock
    ) -> None:
        view = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REQUEST)
        marked = service.approvers_unreachable(view.id, "nobody is on duty")
        assert marked is not None and marked.escalation_level == 3
        assert service.approvers_unreachable(view.id, "again") is None
        assert actions(service, view.id).count("approval.unreachable") == 1
        assert service.unreachable_reason(view.id) == "nobody is on duty"
        # Past the SLA, the escalation sweep adds nothing: it was escalated at once.
        clock.advance(timedelta(minutes=11))
        assert service.escalate_overdue() == []
        # A request already decided is not marked.
        other = service.request(
            AMIRA, "directory", "helpdesk", timedelta(minutes=30), REQUEST, "INC0012345"
        )
        service.deny(other.id, ERIN, "not tonight")
        assert service.approvers_unreachable(other.id, "too late") is None
        assert "approval.unreachable" not in actions(service, other.id)
