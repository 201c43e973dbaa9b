"""Tickets that exist, through Slack: a path's ticket is checked in ServiceNow or Jira when
access is asked for, a closed, unknown or someone else's ticket is refused with the reason (an
ephemeral reply to /jit, an error on the form's ticket field), an open one reaches the approvers
with its title, state and link on the card, and a ticket system that does not answer refuses
(never open) while break-glass carries on.

Every story runs through the real app over signed HTTP against the fake Slack Web API, with the
ticket systems served by local fakes of their REST APIs (tests/fakes/servicenow.py,
tests/fakes/jira.py) and an injected clock.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import select

from app.access import AccessService
from app.clock import ManualClock
from app.demo.slack_fake import Call, SlackChannel
from app.directory import SlackDirectory
from app.lifecycle.deps import CoreDeps
from app.metrics import metrics_text
from app.notify.notifier import Notifier
from app.policy import Policy, parse_policy
from app.policy.model import PathTicket
from app.policy.tickets import TicketFacts, refusal
from app.requests import messages as v
from app.requests.messages import APPROVE_ACTION
from app.scheduler import JobDeps, job_deps
from app.slack.app import web_client
from app.store import AuditEvent, Database
from app.store.models import RequestState as S
from app.ticket_systems import TicketDesk, TicketNotFound, TicketUnreadable
from app.tickets import jobs as ticket_jobs
from app.tickets.overdue import tell_overdue_notes
from app.tickets.service import TicketService
from tests.conftest import HERE, audit_actions
from tests.fakes.jira import FakeJira, adf_text
from tests.fakes.memory_adapter import MemoryTarget
from tests.fakes.servicenow import FakeServiceNow
from tests.slack_harness import RunningApp, SlackOnSqlite
from tests.test_metrics import samples

ENV = {
    "SERVICENOW_USER": "svc_wardkey",
    "SERVICENOW_PASSWORD": "sn-pass-7731",
    "JIRA_EMAIL": "wardkey@ward.nhs.uk",
    "JIRA_TOKEN": "jira-token-ATATT3x",
}
ASK = "pharmacy-db:read 30m fix stuck order set on ward 12"
HELPDESK = "directory:helpdesk 1h reset locked ward accounts"
DOWN = "ServiceNow did not answer; try again, or /breakglass for an emergency."


@pytest.fixture
def servicenow() -> Iterator[FakeServiceNow]:
    """The trust's ServiceNow: Amira and Chloe in Clinical Systems, Dev in Infrastructure."""
    fake = FakeServiceNow().start()
    fake.accept_basic(ENV["SERVICENOW_USER"], ENV["SERVICENOW_PASSWORD"])
    amira = fake.user("amira@ward.nhs.uk", "Amira Khan")
    chloe = fake.user("chloe@ward.nhs.uk", "Chloe Evans")
    dev = fake.user("dev@ward.nhs.uk", "Dev Patel")
    clinical = fake.group("Clinical Systems", amira, chloe)
    infra = fake.group("Infrastructure", dev)
    fake.incident("INC0012345", "Pump order sets stuck on ward 12", "2", chloe, clinical)
    fake.incident("INC0012346", "Ward 9 label printer", "6", amira, clinical)
    fake.incident("INC0012347", "Core switch firmware", "2", dev, infra)
    fake.incident("INC0012348", "Theatre list not loading", "1", "", clinical)
    yield fake
    fake.stop()


@pytest.fixture
def jira() -> Iterator[FakeJira]:
    fake = FakeJira().start()
    fake.accept_basic(ENV["JIRA_EMAIL"], ENV["JIRA_TOKEN"])
    fake.issue(
        "WARD-42", "Reset locked accounts on ward 7", assignee=("amira@ward.nhs.uk", "Amira")
    )
    fake.issue("WARD-43", "Old printer queue", "Done", "done", ("amira@ward.nhs.uk", "Amira"))
    fake.issue("WARD-44", "Infra change", assignee=("dev@ward.nhs.uk", "Dev Patel"))
    yield fake
    fake.stop()


def ticketed(servicenow: FakeServiceNow, jira: FakeJira, **admin: Any) -> Policy:
    """The test trust with its clinical path checked in ServiceNow (assigned to the requester
    or their group) and its admin path in Jira (assigned to the requester)."""
    return parse_policy(yaml.safe_dump(ticketed_data(servicenow, jira, **admin)), "test policy")


def ticketed_data(servicenow: FakeServiceNow, jira: FakeJira, **admin: Any) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((HERE / "data" / "ward_policy.yaml").read_text())
    data["ticket_systems"] = {
        "servicenow": {
            "servicenow": {
                "instance_url": servicenow.base_url,
                "user_env": "SERVICENOW_USER",
                "password_env": "SERVICENOW_PASSWORD",
                "insecure": True,
            }
        },
        "jira": {
            "jira": {
                "url": jira.base_url,
                "email_env": "JIRA_EMAIL",
                "token_env": "JIRA_TOKEN",
                "insecure": True,
            }
        },
    }
    data["paths"]["clinical"]["ticket"] = {"system": "servicenow", "assigned": "requester_or_group"}
    del data["paths"]["admin"]["ticket_pattern"]
    data["paths"]["admin"]["ticket"] = {"system": "jira", "assigned": "requester", **admin}
    return data


def cards(slack: RunningApp, rid: int) -> list[Call]:
    return [
        c
        for c in slack.fake.calls_to("chat.postMessage")
        if APPROVE_ACTION in json.dumps(c.args.get("blocks") or [])
        and f"Access request #{rid}" in json.dumps(c.args.get("blocks") or [])
    ]


def reply(slack: RunningApp, text: str, command: str = "/jit") -> str:
    before = len(slack.fake.calls_to("response_url"))
    assert slack.command(command, text, "U0AMIRA").status_code == 200
    answer = slack.replies(before + 1)[-1]
    slack.settle()
    return answer


def submit(slack: RunningApp, access: str, reason: str, ticket: str, duration: str = "30m") -> Any:
    values = {
        v.ACCESS_BLOCK: {v.ACCESS_ACTION: {"selected_option": {"value": access}}},
        v.DURATION_BLOCK: {v.DURATION_ACTION: {"selected_option": {"value": duration}}},
        v.REASON_BLOCK: {v.REASON_ACTION: {"value": reason}},
        v.TICKET_BLOCK: {v.TICKET_ACTION: {"value": ticket}},
    }
    response = slack.submit_view(v.REQUEST_VIEW, values, "U0AMIRA")
    assert response.status_code == 200
    return response.json() if response.content else {}


class TicketStory(SlackOnSqlite):
    @pytest.fixture
    def policy(self, servicenow: FakeServiceNow, jira: FakeJira) -> Policy:
        return ticketed(servicenow, jira)

    @pytest.fixture
    def service(
        self,
        db: Database,
        policy: Policy,
        targets: dict[str, MemoryTarget],
        clock: ManualClock,
        pauses: list[float],
    ) -> Iterator[AccessService]:
        http = httpx.Client()
        yield AccessService(
            CoreDeps(db, policy, targets, clock, pause=pauses.append, tickets=TicketDesk(ENV, http))
        )
        http.close()


class TestServiceNowAtRequest(TicketStory):
    def test_a_resolved_ticket_is_refused_with_why_and_nothing_is_asked(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        answer = reply(slack, f"request {ASK} INC0012346")
        assert answer == "INC0012346 is Resolved in ServiceNow; ask with an open ticket."
        assert service.requests_of_key("amira@ward.nhs.uk") == []
        assert slack.fake.calls_to("chat.postMessage") == []

    def test_an_open_ticket_reaches_the_approvers_with_its_title_state_and_link(
        self, slack: RunningApp, service: AccessService, servicenow: FakeServiceNow
    ) -> None:
        answer = reply(slack, f"request {ASK} INC0012345")
        assert answer.startswith("Request #"), answer
        rid = int(answer.split("#")[1].split(" ")[0])
        slack.fake.wait_for("chat.postMessage", 3)
        sent = cards(slack, rid)
        assert len(sent) == 3
        sys_id = servicenow.tables["incident"][0]["sys_id"]
        link = f"<{servicenow.base_url}/incident.do?sys_id={sys_id}|INC0012345>"
        for card in sent:
            text = json.dumps(card.args["blocks"])
            # The state as ServiceNow showed it, and when: the card is not redrawn as it
            # changes (the final approval asks again).
            shown = f"*Ticket*\\n{link} \\u00b7 In Progress (checked 03:00)\\nPump order sets"
            assert shown in text, text
        # The instance was asked for that number alone, with the fields the card needs, and
        # (assigned to Chloe) whether Amira is in its assignment group.
        [lookup, member] = servicenow.calls_to("GET")
        assert lookup.path == "/api/now/table/incident"
        assert lookup.query["sysparm_query"] == "number=INC0012345"
        assert lookup.query["sysparm_display_value"] == "all"
        assert member.path == "/api/now/table/sys_user_grmember"
        assert member.query["sysparm_query"].endswith("^user.email=amira@ward.nhs.uk")
        view = service.get(rid)
        assert view.ticket_check is not None and view.ticket_check.state == "In Progress"

    def test_the_form_shows_the_refusal_on_its_ticket_field(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        answer = submit(slack, "pharmacy-db:read", "fix stuck order set on ward 12", "INC0012346")
        assert answer["response_action"] == "errors"
        assert answer["errors"] == {
            v.TICKET_BLOCK: "INC0012346 is Resolved in ServiceNow; ask with an open ticket."
        }
        assert service.requests_of_key("amira@ward.nhs.uk") == []

    def test_someone_elses_ticket_outside_her_groups_is_refused(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        answer = reply(slack, f"request {ASK} INC0012347")
        assert answer == (
            "INC0012347 is assigned to Dev Patel in ServiceNow, not to you or a group you are "
            "in; ask with your own ticket."
        )
        assert service.requests_of_key("amira@ward.nhs.uk") == []

    def test_a_ticket_nobody_is_assigned_in_her_group_passes(self, slack: RunningApp) -> None:
        assert reply(slack, f"request {ASK} INC0012348").startswith("Request #")

    def test_a_ticket_servicenow_does_not_have_is_refused(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        answer = reply(slack, f"request {ASK} INC0099999")
        assert answer == "INC0099999 was not found in ServiceNow (incident); check the number."
        assert service.requests_of_key("amira@ward.nhs.uk") == []

    def test_the_path_now_needs_a_ticket(self, slack: RunningApp) -> None:
        assert reply(slack, f"request {ASK}") == (
            "The clinical path needs a ticket number, like INC0012345."
        )


class TestCheckedAgainAtApproval(TicketStory):
    def ask(self, slack: RunningApp) -> int:
        answer = reply(slack, f"request {ASK} INC0012345")
        rid = int(answer.split("#")[1].split(" ")[0])
        slack.fake.wait_for("chat.postMessage", 3)
        return rid

    def test_a_ticket_resolved_while_waiting_cancels_the_request_at_approval(
        self,
        slack: RunningApp,
        service: AccessService,
        servicenow: FakeServiceNow,
        targets: dict[str, MemoryTarget],
    ) -> None:
        rid = self.ask(slack)
        servicenow.set_state("INC0012345", "6")
        slack.click(APPROVE_ACTION, str(rid), "U0BEN")
        slack.settle()
        view = service.get(rid)
        why = "INC0012345 was Resolved in ServiceNow when the request was approved"
        assert (view.state, view.end_reason) == (S.CANCELLED, why)
        assert not targets["pharmacy-db"].holds("amira", "pharmacy_read")
        told = slack.fake.wait_for("chat.postMessage", 1, channel="U0AMIRA", timeout=10)
        assert any(why in str(c.args.get("text")) for c in told), [
            c.args.get("text") for c in slack.fake.calls_to("chat.postMessage")
        ]

    def test_servicenow_down_at_approval_leaves_the_check_made_at_request(
        self,
        slack: RunningApp,
        service: AccessService,
        servicenow: FakeServiceNow,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        rid = self.ask(slack)
        servicenow.stop()
        slack.click(APPROVE_ACTION, str(rid), "U0BEN")
        slack.settle()
        assert service.get(rid).state == S.ACTIVE
        assert "ticket.recheck_unanswered" in caplog.text
        # The audit trail says the grant went ahead on the check made at request, and why.
        trail = audit_actions(service, rid)
        assert trail.index("ticket.recheck_unanswered") < trail.index("grant.succeeded"), trail
        with service.db.read() as session:
            body = session.scalars(
                select(AuditEvent.body).where(
                    AuditEvent.request_id == rid,
                    AuditEvent.action == "ticket.recheck_unanswered",
                )
            ).one()
        data = json.loads(body)["data"]
        assert (data["system"], data["ticket"]) == ("servicenow", "INC0012345")
        assert data["reason"]


class TestServiceNowDown(TicketStory):
    @pytest.mark.parametrize("how", ["stopped", "503", "429", "401"])
    def test_no_answer_refuses_with_the_documented_message_never_open(
        self, slack: RunningApp, service: AccessService, servicenow: FakeServiceNow, how: str
    ) -> None:
        if how == "stopped":
            servicenow.stop()
        elif how == "401":
            servicenow.credentials.clear()
        else:
            servicenow.failures = [int(how)] * 3
        assert reply(slack, f"request {ASK} INC0012345") == DOWN
        assert service.requests_of_key("amira@ward.nhs.uk") == []
        assert slack.fake.calls_to("chat.postMessage") == []

    def test_the_form_says_so_on_its_ticket_field(
        self, slack: RunningApp, servicenow: FakeServiceNow
    ) -> None:
        servicenow.stop()
        answer = submit(slack, "pharmacy-db:read", "fix stuck order set on ward 12", "INC0012345")
        assert answer["errors"] == {v.TICKET_BLOCK: DOWN}

    def test_break_glass_never_waits_on_a_ticket_system(
        self,
        slack: RunningApp,
        service: AccessService,
        servicenow: FakeServiceNow,
        targets: dict[str, MemoryTarget],
    ) -> None:
        servicenow.stop()
        reply(slack, "pharmacy-db:read pharmacy system down in ED", command="/breakglass")
        [use] = service.requests_of_key("amira@ward.nhs.uk")
        assert use.state == S.ACTIVE
        assert targets["pharmacy-db"].holds("amira", "pharmacy_read")


class TestServiceNowDownApproversCheck(TicketStory):
    """A path whose `ticket.when_down` is approver_checks: the request goes on, marked."""

    @pytest.fixture
    def policy(self, servicenow: FakeServiceNow, jira: FakeJira) -> Policy:
        data = ticketed_data(servicenow, jira)
        data["paths"]["clinical"]["ticket"]["when_down"] = "approver_checks"
        return parse_policy(yaml.safe_dump(data), "test policy")

    def test_the_card_says_not_checked_and_the_audit_records_no_answer(
        self, slack: RunningApp, service: AccessService, servicenow: FakeServiceNow
    ) -> None:
        servicenow.stop()
        answer = reply(slack, f"request {ASK} INC0012345")
        assert answer.startswith("Request #"), answer
        rid = int(answer.split("#")[1].split(" ")[0])
        slack.fake.wait_for("chat.postMessage", 3)
        for card in cards(slack, rid):
            assert (
                "*Ticket*\\nINC0012345\\n:warning: not checked: ServiceNow did not answer; "
                "check it before approving"
            ) in json.dumps(card.args["blocks"])
        with service.db.read() as session:
            created = session.scalar(
                select(AuditEvent.body).where(
                    AuditEvent.request_id == rid, AuditEvent.action == "request.created"
                )
            )
        assert json.loads(str(created))["data"]["ticket_check"]["answered"] is False


class TestJiraAtRequest(TicketStory):
    def test_a_done_issue_is_refused(self, slack: RunningApp, service: AccessService) -> None:
        answer = reply(slack, f"request {HELPDESK} [WARD-43]")
        assert answer == "WARD-43 is Done in Jira; ask with an open ticket."
        assert service.requests_of_key("amira@ward.nhs.uk") == []

    def test_an_issue_assigned_to_someone_else_is_refused(self, slack: RunningApp) -> None:
        assert reply(slack, f"request {HELPDESK} [WARD-44]") == (
            "WARD-44 is assigned to Dev Patel in Jira, not to you; ask with a ticket assigned "
            "to you."
        )

    def test_her_open_issue_reaches_the_approvers_with_its_link(
        self, slack: RunningApp, jira: FakeJira
    ) -> None:
        answer = reply(slack, f"request {HELPDESK} [WARD-42]")
        assert answer.startswith("Request #"), answer
        rid = int(answer.split("#")[1].split(" ")[0])
        slack.fake.wait_for("chat.postMessage", 2)
        [card, *_] = cards(slack, rid)
        text = json.dumps(card.args["blocks"])
        assert f"<{jira.base_url}/browse/WARD-42|WARD-42> \\u00b7 In Progress" in text
        assert "Reset locked accounts on ward 7" in text
        [lookup] = jira.calls_to("GET")
        assert (lookup.path, lookup.query) == (
            "/rest/api/3/issue/WARD-42",
            {"fields": "summary,status,assignee"},
        )


class TestAccessEndsWithTheTicket(TicketStory):
    """The admin path ends access when its Jira issue is resolved, and notes each grant and end
    on the issue."""

    @pytest.fixture
    def policy(self, servicenow: FakeServiceNow, jira: FakeJira) -> Policy:
        return ticketed(servicenow, jira, ends_access=True, notes=True)

    def deps(self, slack: RunningApp, service: AccessService) -> JobDeps:
        """What the tickets' jobs are given in a process whose notifier delivers to Slack."""
        client = web_client(slack.fake.token, slack.fake.api_url)
        return job_deps(service, Notifier(client, service, SlackDirectory(client)).outbox)

    def granted(self, slack: RunningApp, service: AccessService) -> int:
        """Amira asks for directory:helpdesk on WARD-42; Erin, an infra lead, approves."""
        answer = reply(slack, f"request {HELPDESK} [WARD-42]")
        rid = int(answer.split("#")[1].split(" ")[0])
        slack.fake.wait_for("chat.postMessage", 2)
        slack.click(APPROVE_ACTION, str(rid), "U0ERIN")
        slack.settle()
        assert service.get(rid).state == S.ACTIVE
        return rid

    def test_resolving_the_issue_ends_the_access_and_both_are_noted_on_it(
        self,
        slack: RunningApp,
        service: AccessService,
        jira: FakeJira,
        clock: ManualClock,
        targets: dict[str, MemoryTarget],
    ) -> None:
        rid = self.granted(slack, service)
        deps = self.deps(slack, service)
        assert ticket_jobs.ticket_notes(deps) != []
        [granted] = [adf_text(c) for c in jira.comments("WARD-42")]
        assert granted == (
            f"WardKey request #{rid}: directory:helpdesk granted to amira@ward.nhs.uk "
            "at 03:00 30 Nov 2026 GMT, approved by erin@ward.nhs.uk, until 04:00 30 Nov 2026 "
            "GMT. Reason: reset locked ward accounts"
        )
        # Still open a minute on: nothing ends, and the note is not written twice.
        clock.advance(timedelta(minutes=1))
        assert ticket_jobs.tickets(deps) == [] and ticket_jobs.ticket_notes(deps) == []
        assert service.get(rid).state == S.ACTIVE

        jira.move("WARD-42", "Resolved", "done")
        assert ticket_jobs.tickets(deps) == []  # asked at most once a minute
        clock.advance(timedelta(minutes=1))
        assert ticket_jobs.tickets(deps) == [rid]
        view = service.get(rid)
        assert view.state == S.ENDED and view.end_reason == "WARD-42 was Resolved in Jira"
        with service.db.read() as session:
            started = session.scalar(
                select(AuditEvent.body).where(
                    AuditEvent.request_id == rid, AuditEvent.action == "revoke.started"
                )
            )
        assert json.loads(str(started))["data"]["cause"] == "ticket_closed"
        assert not targets["directory"].holds("amira@ward.nhs.uk", "cn=helpdesk,ou=groups,dc=ward")
        told = slack.fake.wait_for("chat.postMessage", 1, channel="U0AMIRA", timeout=10)
        assert any("WARD-42 was Resolved in Jira" in str(c.args.get("text")) for c in told), [
            c.args.get("text") for c in slack.fake.calls_to("chat.postMessage")
        ]
        assert ticket_jobs.ticket_notes(deps) != []
        ended = adf_text(jira.comments("WARD-42")[-1])
        assert ended == (
            f"WardKey request #{rid}: directory:helpdesk for amira@ward.nhs.uk ended "
            "at 03:02 30 Nov 2026 GMT (WARD-42 was Resolved in Jira)."
        )

    def test_jira_down_ends_nothing_and_a_note_it_refused_is_sent_later(
        self,
        slack: RunningApp,
        service: AccessService,
        jira: FakeJira,
        clock: ManualClock,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        rid = self.granted(slack, service)
        deps = self.deps(slack, service)
        jira.failures = [503, 429]
        jira.retry_after = 300
        assert ticket_jobs.ticket_notes(deps) == []  # the comment failed: kept, logged, tried again
        assert "ticket.note_failed" in caplog.text and "HTTP 503" in caplog.text
        jira.move("WARD-42", "Resolved", "done")
        clock.advance(timedelta(minutes=1))
        assert ticket_jobs.tickets(deps) == []  # rate limited: nothing is ended on no answer
        assert service.get(rid).state == S.ACTIVE
        assert jira.comments("WARD-42") == []
        owed = samples(metrics_text(service.db, clock).decode())
        assert owed[("wardkey_ticket_notes_waiting", ())] == 1
        assert owed[("wardkey_ticket_notes_oldest_seconds", ())] == 60
        clock.advance(timedelta(seconds=30))  # the first retry
        assert ticket_jobs.tickets(deps) == [rid]
        assert len(ticket_jobs.ticket_notes(deps)) == 2  # the grant's note, then the end's
        texts = [adf_text(c) for c in jira.comments("WARD-42")]
        assert "granted to amira@ward.nhs.uk" in texts[0] and "ended at" in texts[1]
        assert (
            samples(metrics_text(service.db, clock).decode())[("wardkey_ticket_notes_waiting", ())]
            == 0
        )

    def test_notes_a_system_has_not_taken_for_an_hour_are_told_to_security_once(
        self, slack: RunningApp, service: AccessService, jira: FakeJira, clock: ManualClock
    ) -> None:
        slack.fake.add_channel(SlackChannel("C0SEC", "security-alerts", is_private=True))
        self.granted(slack, service)
        deps = self.deps(slack, service)
        jira.failures = [503] * 1000  # Jira refuses the comment from 03:00

        def security() -> list[str]:
            slack.settle()
            return [
                str(c.args.get("text", ""))
                for c in slack.fake.calls_to("chat.postMessage", channel="C0SEC")
            ]

        assert ticket_jobs.ticket_notes(deps) == []
        clock.advance(timedelta(minutes=59))
        assert ticket_jobs.ticket_notes(deps) == []
        assert security() == []  # retrying: not yet an hour late
        clock.advance(timedelta(minutes=2))
        ticket_jobs.ticket_notes(deps)
        clock.advance(timedelta(hours=1))
        ticket_jobs.ticket_notes(deps)  # still failing: not told again
        assert security() == [
            "📝 WardKey cannot write its notes on Jira tickets: 1 note waiting, the oldest "
            f"since 03:00 (Jira ({jira.base_url}) answered HTTP 503: Internal server error). "
            "Until they are "
            "written, those tickets lack WardKey's record of who had access. WardKey keeps "
            "trying (at least once an hour) and says here when none is late."
        ]
        # Jira takes it again: the note is written, and security told once.
        jira.failures = []
        clock.advance(timedelta(hours=1))
        assert ticket_jobs.ticket_notes(deps) != []
        assert "granted to amira@ward.nhs.uk" in adf_text(jira.comments("WARD-42")[0])
        clock.advance(timedelta(minutes=5))
        ticket_jobs.ticket_notes(deps)
        assert security()[1:] == [
            "✅ WardKey writes its notes on Jira tickets again: none is an hour late."
        ]


class TestOnEachDatabase:
    """The sweeps' queries on SQLite and PostgreSQL (the Slack stories run on SQLite)."""

    @pytest.fixture
    def policy(self, servicenow: FakeServiceNow, jira: FakeJira) -> Policy:
        return ticketed(servicenow, jira, ends_access=True, notes=True)

    @pytest.fixture
    def service(
        self,
        db: Database,
        policy: Policy,
        targets: dict[str, MemoryTarget],
        clock: ManualClock,
        pauses: list[float],
    ) -> Iterator[AccessService]:
        http = httpx.Client()
        yield AccessService(
            CoreDeps(db, policy, targets, clock, pause=pauses.append, tickets=TicketDesk(ENV, http))
        )
        http.close()

    def test_notes_once_each_and_access_ends_with_the_issue(
        self, service: AccessService, jira: FakeJira, clock: ManualClock
    ) -> None:
        from tests.conftest import AMIRA, ERIN

        tickets = TicketService(service)
        asked = service.request(
            AMIRA,
            "directory",
            "helpdesk",
            timedelta(hours=1),
            "reset locked ward accounts",
            "WARD-42",
        )
        assert service.approve(asked.id, ERIN).state == S.ACTIVE
        assert tickets.queue_ticket_notes() == 1
        assert tickets.queue_ticket_notes() == 0
        assert len(tickets.deliver_ticket_notes()) == 1
        assert tickets.deliver_ticket_notes() == []
        jira.move("WARD-42", "Done", "done")
        clock.advance(timedelta(minutes=2))
        assert tickets.end_with_closed_tickets() == [asked.id]
        assert tickets.end_with_closed_tickets() == []
        assert tickets.queue_ticket_notes() == 1
        assert len(tickets.deliver_ticket_notes()) == 1
        assert len(jira.comments("WARD-42")) == 2

    def test_overdue_notes_told_once_and_their_end_once(
        self, service: AccessService, notifier: Notifier, jira: FakeJira, clock: ManualClock
    ) -> None:
        from tests.conftest import AMIRA, ERIN

        tickets = TicketService(service)
        asked = service.request(
            AMIRA, "directory", "helpdesk", timedelta(hours=1), "reset locked accounts", "WARD-42"
        )
        assert service.approve(asked.id, ERIN).state == S.ACTIVE
        assert tickets.queue_ticket_notes() == 1
        jira.failures = [503] * 1000
        assert tickets.deliver_ticket_notes() == []
        assert tell_overdue_notes(service, notifier.outbox) == []
        clock.advance(timedelta(minutes=61))
        assert tickets.deliver_ticket_notes() == []
        assert tell_overdue_notes(service, notifier.outbox) == ["jira down"]
        assert tell_overdue_notes(service, notifier.outbox) == []
        jira.failures = []
        clock.advance(timedelta(hours=1))
        assert len(tickets.deliver_ticket_notes()) == 1
        assert tell_overdue_notes(service, notifier.outbox) == ["jira back"]
        assert tell_overdue_notes(service, notifier.outbox) == []


class TestTheRule:
    """`app.policy.tickets.refusal`, the pure rule, on facts a system could return."""

    FACTS = TicketFacts(
        system="servicenow",
        label="ServiceNow",
        key="INC0012345",
        title="t",
        state="In Progress",
        open=True,
        url="https://trust.service-now.com/incident.do?sys_id=1",
        assignee_email="Amira@Ward.nhs.uk",
        assignee_name="Amira Khan",
        group="Clinical Systems",
        requester_in_group=False,
    )

    def test_the_requesters_own_ticket_matches_her_email_in_any_case(self) -> None:
        rule = PathTicket(system="servicenow", assigned="requester")
        assert refusal(rule, self.FACTS, "amira@ward.nhs.uk") is None
        assert refusal(rule, self.FACTS, "ben@ward.nhs.uk") is not None

    def test_a_closed_ticket_is_refused_whoever_it_is_assigned_to(self) -> None:
        closed = TicketFacts(**{**self.FACTS.__dict__, "open": False, "state": "Closed"})
        rule = PathTicket(system="servicenow")
        assert refusal(rule, closed, "amira@ward.nhs.uk") == (
            "INC0012345 is Closed in ServiceNow; ask with an open ticket."
        )

    def test_no_email_on_either_side_never_counts_as_a_match(self) -> None:
        hidden = TicketFacts(**{**self.FACTS.__dict__, "assignee_email": None})
        rule = PathTicket(system="servicenow", assigned="requester")
        assert refusal(rule, hidden, None) is not None
        assert refusal(rule, self.FACTS, None) is not None


class TestClients:
    """The clients against the fakes, for what Slack stories do not show."""

    def test_a_bearer_token_is_sent_when_the_policy_names_one(
        self, servicenow: FakeServiceNow, jira: FakeJira
    ) -> None:
        servicenow.accept_bearer("oauth-abc")
        jira.accept_bearer("pat-xyz")
        data = yaml.safe_load((HERE / "data" / "ward_policy.yaml").read_text())
        data["ticket_systems"] = {
            "sn": {
                "servicenow": {
                    "instance_url": servicenow.base_url,
                    "token_env": "SN_TOKEN",
                    "insecure": True,
                }
            },
            "dc": {
                "jira": {
                    "url": jira.base_url,
                    "api_version": 2,
                    "token_env": "PAT",
                    "insecure": True,
                }
            },
        }
        policy = parse_policy(yaml.safe_dump(data), "test policy")
        desk = TicketDesk({"SN_TOKEN": "oauth-abc", "PAT": "pat-xyz"}, httpx.Client())
        assert desk.find(policy, "sn", "INC0012345").title == "Pump order sets stuck on ward 12"
        issue = desk.find(policy, "dc", "WARD-42")
        assert issue.state == "In Progress" and issue.open
        assert jira.calls_to("GET")[-1].path == "/rest/api/2/issue/WARD-42"
        assert jira.calls_to("GET")[-1].authorization == "Bearer pat-xyz"

    def test_a_rate_limit_says_how_long_to_wait_and_a_missing_secret_is_named(
        self, servicenow: FakeServiceNow, jira: FakeJira
    ) -> None:
        policy = ticketed(servicenow, jira)
        jira.failures = [429]
        jira.retry_after = 120
        with pytest.raises(TicketUnreadable) as raised:
            TicketDesk(ENV, httpx.Client()).find(policy, "jira", "WARD-42")
        assert raised.value.retry_after is not None
        assert raised.value.retry_after.total_seconds() == 120
        with pytest.raises(TicketUnreadable, match=r"^JIRA_TOKEN is not set$"):
            TicketDesk({"JIRA_EMAIL": "x"}, httpx.Client()).find(policy, "jira", "WARD-42")

    def test_a_look_up_and_its_group_check_share_one_time_budget(
        self, servicenow: FakeServiceNow, jira: FakeJira
    ) -> None:
        # Each answer takes 1.4 s, within the 2 s a call may take; but the group check (INC…47
        # is assigned to Dev, in Infrastructure) has only what is left of the 2.5 s in all, so
        # the form is still answered within Slack's 3 seconds.
        policy = ticketed(servicenow, jira)
        servicenow.delay = 1.4
        desk = TicketDesk(ENV, httpx.Client())
        assert desk.find(policy, "servicenow", "INC0012347").title == "Core switch firmware"
        with pytest.raises(TicketUnreadable, match="did not answer"):
            desk.find(policy, "servicenow", "INC0012347", "amira@ward.nhs.uk", need_group=True)

    def test_a_number_that_could_widen_the_query_is_never_sent(
        self, servicenow: FakeServiceNow, jira: FakeJira
    ) -> None:
        policy = ticketed(servicenow, jira)
        with pytest.raises(TicketNotFound, match="not a ServiceNow ticket number"):
            TicketDesk(ENV, httpx.Client()).find(policy, "servicenow", "INC1^ORnumber>0")
        assert servicenow.calls == []


class TestPolicy:
    def test_an_unknown_system_and_a_jira_group_rule_are_named(
        self, servicenow: FakeServiceNow, jira: FakeJira, tmp_path: Path
    ) -> None:
        from app.policy import PolicyError

        data = ticketed_data(servicenow, jira)
        data["paths"]["clinical"]["ticket"]["system"] = "servicenw"
        data["paths"]["admin"]["ticket"]["assigned"] = "requester_or_group"
        data["ticket_systems"]["jira"]["jira"]["insecure"] = False
        with pytest.raises(PolicyError) as raised:
            parse_policy(yaml.safe_dump(data), "test policy")
        issues = [str(i) for i in raised.value.issues]
        assert any(
            i.startswith("paths.clinical.ticket.system: unknown ticket system 'servicenw'")
            for i in issues
        ), issues
        assert any(
            i.startswith("paths.admin.ticket.assigned: Jira issues have no assignment group")
            for i in issues
        ), issues
        assert any(
            i.startswith("ticket_systems.jira.jira.url:") and "not an https:// URL" in i
            for i in issues
        ), issues

    def test_policy_check_reports_each_ticket_system_and_the_paths_using_it(
        self,
        servicenow: FakeServiceNow,
        jira: FakeJira,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        from app.cli import main

        data = ticketed_data(servicenow, jira, ends_access=True, notes=True)
        policy = tmp_path / "policy.yaml"
        policy.write_text(yaml.safe_dump(data, sort_keys=False))
        assert main(["policy", "check", str(policy)]) == 0
        out = capsys.readouterr().out
        assert (
            "    admin        medium   max 4h     1 of group infra-leads, ticket checked in jira"
            in (out)
        ), out
        systems = out[out.index("  ticket systems:") :].splitlines()[1:3]
        assert systems == [
            f"    servicenow           ServiceNow {servicenow.base_url}, table incident, basic "
            "auth; clinical (open, assigned to the requester or their group)",
            f"    jira                 Jira {jira.base_url}, REST API v3, API token; admin (open, "
            "assigned to the requester; access ends with the ticket; notes on the ticket)",
        ]

    def test_an_http_ticket_system_is_warned_about_at_insecure(
        self, servicenow: FakeServiceNow, jira: FakeJira
    ) -> None:
        from app.policy_targets import policy_warnings

        data = ticketed_data(servicenow, jira)
        data["ticket_systems"]["jira"]["jira"]["url"] = "https://trust.atlassian.net"
        warnings = [str(w) for w in policy_warnings(parse_policy(yaml.safe_dump(data)))]
        assert (
            "ticket_systems.servicenow.servicenow.insecure: tickets and credentials cross plain "
            f"http:// ({servicenow.base_url})"
        ) in warnings, warnings
        assert "ticket_systems.jira.jira.insecure: nothing here needs it; remove it" in warnings
