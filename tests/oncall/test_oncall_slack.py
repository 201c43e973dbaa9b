"""On call from the source, through Slack: a nurse's request reaches whoever the trust's own
rota says is on call (PagerDuty, a rostering export), the approver card says where that came
from and how fresh it is, a swap in the export takes effect at its hand-off, and a source that
cannot be read falls back to its last good read until `stale_after`, then to the rota's
escalation group, with security told; never open.

Every story runs through the real app over signed HTTP against the fake Slack Web API, with the
sources served by local fakes (tests/fakes/pagerduty.py) or a file, and an injected clock.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.access import AccessService
from app.clock import ManualClock
from app.demo.slack_fake import Call, SlackChannel
from app.directory import SlackDirectory
from app.lifecycle.deps import CoreDeps
from app.notify.notifier import Notifier
from app.oncall import OnCall
from app.oncall.flows import read_sources
from app.oncall.jobs import oncall_sources
from app.policy import Policy, parse_policy
from app.policy.rules import approvers_at
from app.requests.messages import APPROVE_ACTION
from app.scheduler import JobDeps, job_deps
from app.slack.app import web_client
from app.store.models import RequestState as S
from tests.conftest import HERE
from tests.conftest import audit_actions as actions
from tests.fakes.opsgenie import FakeOpsgenie
from tests.fakes.pagerduty import FakePagerDuty
from tests.slack_harness import RunningApp, SlackOnSqlite, run_app

TOKEN = "u+pd-ward-token"
GENIE_KEY = "eb243592-faa2-4ba2-a551-1afdf565c889"
REQUEST = "pharmacy-db:read 30m fix stuck order set on ward 12"
# Monday 30 November 2026, 03:00 in London (GMT, so UTC too).
NIGHT = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)


def sourced_policy(
    source: dict[str, Any], clock: ManualClock, env: dict[str, str], sla: bool = True
) -> Policy:
    """The test trust with the clinical path approved by its on-call rota alone, the rota read
    from `source` (the managers are its escalation group), read through a cache of its own;
    `sla` False: no approval SLA, so nothing but the source escalates a waiting request."""
    data = yaml.safe_load((HERE / "data" / "ward_policy.yaml").read_text())
    data["paths"]["clinical"]["approvers"] = [{"rota": "clinical-oncall"}]
    if not sla:
        del data["paths"]["clinical"]["approval_sla"]
    data["oncall"]["clinical-oncall"] = {"source": source, "escalation": "managers"}
    policy = parse_policy(yaml.safe_dump(data), "test policy")
    return policy.with_on_call(OnCall(policy, clock, client=httpx.Client(), env=env))


def ask(slack: RunningApp, user: str = "U0AMIRA") -> int:
    before = len(slack.fake.calls_to("response_url"))
    assert slack.command("/jit", f"request {REQUEST}", user).status_code == 200
    reply = slack.replies(before + 1)[-1]
    assert reply.startswith("Request #"), reply
    slack.settle()
    return int(reply.split("#")[1].split(" ")[0])


def cards(slack: RunningApp, rid: int) -> dict[str, list[Call]]:
    """The approver cards of request `rid` (with Approve), by whom they were sent to."""
    found: dict[str, list[Call]] = {}
    for call in slack.fake.calls_to("chat.postMessage"):
        blocks = json.dumps(call.args.get("blocks") or [])
        if APPROVE_ACTION in blocks and f"Access request #{rid}" in blocks:
            found.setdefault(str(call.args["channel"]), []).append(call)
    return found


def card_text(call: Call) -> str:
    return json.dumps(call.args.get("blocks") or [])


def posts_to(slack: RunningApp, channel: str) -> list[str]:
    return [
        str(c.args.get("text", ""))
        for c in slack.fake.calls_to("chat.postMessage", channel=channel)
    ]


class SourcedStory(SlackOnSqlite):
    @pytest.fixture
    def clock(self) -> ManualClock:
        return ManualClock(NIGHT)

    @pytest.fixture
    def slack(self, service: AccessService) -> Iterator[RunningApp]:
        for running in run_app(service):
            running.fake.add_channel(SlackChannel("C0SEC", "security-alerts", is_private=True))
            running.fake.add_channel(SlackChannel("C0MGR", "manager-reviews"))
            yield running

    def job_deps(self, slack: RunningApp, service: AccessService) -> JobDeps:
        """What the jobs are given in a process, the on-call watch included."""
        client = web_client(slack.fake.token, slack.fake.api_url)
        notifier = Notifier(client, service, SlackDirectory(client))
        return job_deps(service, notifier.outbox, oncall=partial(read_sources, service, notifier))


@pytest.fixture
def pagerduty() -> Iterator[FakePagerDuty]:
    server = FakePagerDuty(TOKEN).start()
    yield server
    server.stop()


def pagerduty_source(fake: FakePagerDuty, **more: Any) -> dict[str, Any]:
    return {
        "pagerduty": {
            "schedule": "PWARD07",
            "token_env": "PAGERDUTY_TOKEN",
            "api_url": fake.base_url,
            "insecure": True,
        },
        **more,
    }


class TestRoutedToThePagerDutyOnCall(SourcedStory):
    @pytest.fixture
    def policy(self, pagerduty: FakePagerDuty, clock: ManualClock) -> Policy:
        # Chloe had the evening; Ben has the night; Dan is on call in another schedule.
        pagerduty.on_call(
            "PWARD07",
            "PCHLOE1",
            "chloe@ward.nhs.uk",
            NIGHT - timedelta(hours=8),
            NIGHT - timedelta(hours=1),
        )
        pagerduty.on_call(
            "PWARD07",
            "PBEN001",
            "ben@ward.nhs.uk",
            NIGHT - timedelta(hours=1),
            NIGHT + timedelta(hours=5),
        )
        pagerduty.on_call("POTHER1", "PDEV001", "dev@ward.nhs.uk", NIGHT - timedelta(hours=1), None)
        return sourced_policy(pagerduty_source(pagerduty), clock, {"PAGERDUTY_TOKEN": TOKEN})

    def test_a_nurses_request_reaches_exactly_the_on_call_lead_with_where_from(
        self, slack: RunningApp, service: AccessService, pagerduty: FakePagerDuty
    ) -> None:
        rid = ask(slack)
        sent = cards(slack, rid)
        assert list(sent) == ["U0BEN"]  # one DM, to the person PagerDuty has on call
        assert len(sent["U0BEN"]) == 1
        # The card says where "on call now" came from and when it was read (03:00 in London).
        assert "clinical-oncall on call per PagerDuty schedule PWARD07, read 03:00" in card_text(
            sent["U0BEN"][0]
        )
        assert pagerduty.requests[0]["schedule_ids[]"] == ["PWARD07"]
        # Ben approves from the card; Dev, on call elsewhere, could not.
        assert slack.click(APPROVE_ACTION, str(rid), "U0DEV").status_code == 200
        slack.settle()
        assert service.get(rid).state == S.PENDING
        assert slack.click(APPROVE_ACTION, str(rid), "U0BEN").status_code == 200
        slack.settle()
        assert service.get(rid).state == S.ACTIVE


class TestRoutedToTheOpsgenieOnCall(SourcedStory):
    @pytest.fixture
    def opsgenie(self) -> Iterator[FakeOpsgenie]:
        server = FakeOpsgenie(GENIE_KEY).start()
        yield server
        server.stop()

    @pytest.fixture
    def policy(self, opsgenie: FakeOpsgenie, clock: ManualClock) -> Policy:
        opsgenie.on_call("ward7-nic", "chloe@ward.nhs.uk", NIGHT - timedelta(hours=7), NIGHT)
        opsgenie.on_call("ward7-nic", "erin@ward.nhs.uk", NIGHT, NIGHT + timedelta(hours=5))
        source = {
            "opsgenie": {
                "schedule": "ward7-nic",
                "token_env": "OPSGENIE_KEY",
                "api_url": opsgenie.base_url,
                "insecure": True,
            }
        }
        return sourced_policy(source, clock, {"OPSGENIE_KEY": GENIE_KEY})

    def test_the_request_reaches_the_person_opsgenie_has_on_call_by_e_mail(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        rid = ask(slack)
        sent = cards(slack, rid)
        assert list(sent) == ["U0ERIN"]  # erin@ward.nhs.uk in Opsgenie is U0ERIN in Slack
        assert "clinical-oncall on call per Opsgenie schedule ward7-nic, read 03:00" in (
            card_text(sent["U0ERIN"][0])
        )
        assert slack.click(APPROVE_ACTION, str(rid), "U0CHLOE").status_code == 200
        slack.settle()
        assert service.get(rid).state == S.PENDING  # her shift ended at 03:00
        assert slack.click(APPROVE_ACTION, str(rid), "U0ERIN").status_code == 200
        slack.settle()
        assert service.get(rid).state == S.ACTIVE


ROSTER_HEAD = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Trust e-roster//EN\r\n"


def shift(uid: str, start: str, end: str, person: str, status: str = "CONFIRMED") -> str:
    return (
        f"BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20261129T120000Z\r\n"
        f"DTSTART;TZID=Europe/London:{start}\r\nDTEND;TZID=Europe/London:{end}\r\n"
        f"ATTENDEE:mailto:{person}\r\nSTATUS:{status}\r\nEND:VEVENT\r\n"
    )


class TestARosterSwapTakesEffectAtItsHandOff(SourcedStory):
    @pytest.fixture
    def export(self, tmp_path: Path) -> Path:
        path = tmp_path / "ward7.ics"
        path.write_text(
            ROSTER_HEAD
            + shift("night", "20261129T200000", "20261130T080000", "ben@ward.nhs.uk")
            + shift("day", "20261130T080000", "20261130T200000", "chloe@ward.nhs.uk")
            + "END:VCALENDAR\r\n"
        )
        return path

    @pytest.fixture
    def policy(self, export: Path, clock: ManualClock) -> Policy:
        source = {"roster": {"file": str(export), "format": "ics"}, "refresh_every": "5m"}
        return sourced_policy(source, clock, {})

    def test_the_swapped_in_nurse_approves_from_the_hand_off_not_before(
        self, slack: RunningApp, service: AccessService, clock: ManualClock, export: Path
    ) -> None:
        # 07:30: the roster office swaps Chloe's day shift to Farid in the e-roster.
        clock.advance(timedelta(hours=4, minutes=30))
        text = export.read_text()
        export.write_text(
            text.replace(
                "STATUS:CONFIRMED\r\nEND:VEVENT\r\nEND:VCALENDAR",
                "STATUS:CANCELLED\r\nEND:VEVENT\r\nEND:VCALENDAR",
            ).replace(
                "END:VCALENDAR",
                shift("day-swap", "20261130T080000", "20261130T200000", "farid@ward.nhs.uk")
                + "END:VCALENDAR",
            )
        )
        # 07:59: the night is still Ben's.
        clock.advance(timedelta(minutes=29))
        before = ask(slack)
        assert list(cards(slack, before)) == ["U0BEN"]
        assert "per rostering export (ics), read 07:59" in card_text(
            cards(slack, before)["U0BEN"][0]
        )
        assert slack.click(APPROVE_ACTION, str(before), "U0BEN").status_code == 200
        slack.settle()
        assert service.get(before).state == S.ACTIVE
        # 08:00, the hand-off: Chloe asks, and Farid, who swapped in, has the card; Ben, whose
        # night has ended, can no longer approve.
        clock.advance(timedelta(minutes=1))
        after = ask(slack, "U0CHLOE")
        assert list(cards(slack, after)) == ["U0FARID"]
        assert slack.click(APPROVE_ACTION, str(after), "U0BEN").status_code == 200
        slack.settle()
        assert service.get(after).state == S.PENDING
        assert slack.click(APPROVE_ACTION, str(after), "U0FARID").status_code == 200
        slack.settle()
        assert service.get(after).state == S.ACTIVE


class TestPagerDutyDown(SourcedStory):
    @pytest.fixture
    def policy(self, pagerduty: FakePagerDuty, clock: ManualClock) -> Policy:
        pagerduty.on_call(
            "PWARD07",
            "PBEN001",
            "ben@ward.nhs.uk",
            NIGHT - timedelta(hours=1),
            NIGHT + timedelta(hours=5),
        )
        source = pagerduty_source(pagerduty, refresh_every="5m", stale_after="1h")
        return sourced_policy(source, clock, {"PAGERDUTY_TOKEN": TOKEN}, sla=False)

    def test_last_good_read_until_stale_after_then_the_escalation_group_and_security_told(
        self,
        slack: RunningApp,
        service: AccessService,
        clock: ManualClock,
        pagerduty: FakePagerDuty,
    ) -> None:
        deps = self.job_deps(slack, service)
        assert oncall_sources(deps) == 0  # read at 03:00; nothing to tell
        pagerduty.failures = [500] * 1000  # PagerDuty goes down at 03:05
        clock.advance(timedelta(minutes=5))
        assert oncall_sources(deps) == 1
        for _ in range(4):  # the sweep keeps trying: security is told once per outage
            clock.advance(timedelta(minutes=5))
            assert oncall_sources(deps) == 0
        down = [t for t in posts_to(slack, "C0SEC") if "cannot be read" in t]
        assert down == [
            "📅 Who is on call for clinical-oncall cannot be read from PagerDuty schedule "
            "PWARD07 since 03:05 (PagerDuty answered HTTP 500: Internal Server Error). WardKey "
            "uses its last good read (03:00) until 04:00; after that nobody from this rota can "
            "approve, and requests with no other approver go at once to its escalation group "
            "managers. WardKey tries again every few minutes and says here when it reads it again."
        ]

        # 03:50, within stale_after: Ben, from the last good read, and the card says so.
        clock.advance(timedelta(minutes=25))
        rid = ask(slack)
        sent = cards(slack, rid)
        assert list(sent) == ["U0BEN"]
        assert (
            "on call per PagerDuty schedule PWARD07, read 03:00 (unreadable since 03:05)"
            in card_text(sent["U0BEN"][0])
        )
        assert slack.click(APPROVE_ACTION, str(rid), "U0BEN").status_code == 200
        slack.settle()
        assert service.get(rid).state == S.ACTIVE

        # 04:01: the read of 03:00 no longer counts. Nobody from the rota is on call, so the
        # request goes at once to the managers, and security hears why.
        clock.advance(timedelta(minutes=11))
        late = ask(slack, "U0CHLOE")
        sent = cards(slack, late)
        assert sorted(sent) == ["U0GITA", "U0HANA"]
        assert "approval.unreachable" in actions(service, late)
        assert "so nobody from this rota can approve" in card_text(sent["U0HANA"][0])
        alert = "\n".join(posts_to(slack, "C0SEC"))
        assert f"No approver could be reached for request #{late}" in alert
        assert "could not be read from PagerDuty schedule PWARD07" in alert
        # Never open: Ben, on call at the last read, cannot approve what PagerDuty cannot confirm.
        assert slack.click(APPROVE_ACTION, str(late), "U0BEN").status_code == 200
        slack.settle()
        assert service.get(late).state == S.PENDING
        assert slack.click(APPROVE_ACTION, str(late), "U0HANA").status_code == 200
        slack.settle()
        assert service.get(late).state == S.ACTIVE

        # PagerDuty answers again: security is told once, and Ben approves again.
        pagerduty.failures = []
        clock.advance(timedelta(minutes=5))
        assert oncall_sources(deps) == 1
        clock.advance(timedelta(minutes=5))
        assert oncall_sources(deps) == 0
        back = [t for t in posts_to(slack, "C0SEC") if "again" in t and t.startswith("✅")]
        assert back == [
            "✅ Who is on call for clinical-oncall is read from PagerDuty schedule PWARD07 "
            "again (read 04:06): its on-call people approve again."
        ]
        assert approvers_at(service.policy, "clinical", clock.now()) == ["ben@ward.nhs.uk"]

    def test_a_request_waiting_when_the_source_goes_stale_goes_to_the_escalation_group(
        self,
        slack: RunningApp,
        service: AccessService,
        clock: ManualClock,
        pagerduty: FakePagerDuty,
    ) -> None:
        deps = self.job_deps(slack, service)
        oncall_sources(deps)  # read at 03:00
        pagerduty.failures = [500] * 1000
        clock.advance(timedelta(minutes=45))
        assert oncall_sources(deps) == 1  # security told of the outage
        rid = ask(slack)  # 03:45: to Ben, from the read of 03:00; nobody decides
        assert list(cards(slack, rid)) == ["U0BEN"]
        clock.advance(timedelta(minutes=14))
        assert oncall_sources(deps) == 0  # 03:59: the last good read still counts
        assert "approval.unreachable" not in actions(service, rid)

        # 04:01: the read of 03:00 no longer counts and the path names nobody. The sweep
        # sends the waiting request to the managers at once, and security hears why.
        clock.advance(timedelta(minutes=2))
        assert oncall_sources(deps) == 1
        slack.settle()
        assert "approval.unreachable" in actions(service, rid)
        assert sorted(cards(slack, rid)) == ["U0BEN", "U0GITA", "U0HANA"]
        assert (
            "no clinical approver could be reached" in cards(slack, rid)["U0HANA"][0].args["text"]
        )
        alert = "\n".join(posts_to(slack, "C0SEC"))
        assert f"No approver could be reached for request #{rid}" in alert
        assert "could not be read from PagerDuty schedule PWARD07" in alert
        told = "\n".join(posts_to(slack, "U0AMIRA"))
        assert f"No clinical approver could be reached in Slack for your request #{rid}" in told
        # Once only: the next sweep escalates nothing more.
        clock.advance(timedelta(minutes=1))
        assert oncall_sources(deps) == 0
        # Ben's card is no longer one he may act on; a manager's is.
        assert slack.click(APPROVE_ACTION, str(rid), "U0BEN").status_code == 200
        slack.settle()
        assert service.get(rid).state == S.PENDING
        assert slack.click(APPROVE_ACTION, str(rid), "U0GITA").status_code == 200
        slack.settle()
        assert service.get(rid).state == S.ACTIVE

    def test_two_processes_reading_the_source_tell_security_once_per_outage(
        self,
        slack: RunningApp,
        service: AccessService,
        clock: ManualClock,
        pagerduty: FakePagerDuty,
    ) -> None:
        # A second worker on the same database reads PagerDuty for itself.
        source = pagerduty_source(pagerduty, refresh_every="5m", stale_after="1h")
        other_policy = sourced_policy(source, clock, {"PAGERDUTY_TOKEN": TOKEN}, sla=False)
        other = AccessService(CoreDeps(service.db, other_policy, service.adapters, clock))
        workers = [self.job_deps(slack, service), self.job_deps(slack, other)]

        def tick(minutes: int) -> list[int]:
            clock.advance(timedelta(minutes=minutes))
            return [oncall_sources(worker) for worker in workers]

        assert tick(0) == [0, 0]  # both read PagerDuty at 03:00
        pagerduty.failures = [500] * 1000
        assert tick(5) == [1, 0]  # the second finds the outage already told
        assert tick(5) == [0, 0]
        pagerduty.failures = []
        assert tick(5) == [1, 0]  # and its end
        slack.settle()
        said = [t.split(" from ")[0] for t in posts_to(slack, "C0SEC")]
        assert said == [
            "📅 Who is on call for clinical-oncall cannot be read",
            "✅ Who is on call for clinical-oncall is read",
        ]


class TestEachSourceDownFallsBackThenEscalates(SourcedStory):
    """Opsgenie and a rostering export going down take the same documented path as PagerDuty:
    the last good read until `stale_after` (security told once), then nobody from the rota,
    the escalation group at once, never open."""

    @pytest.fixture(params=["opsgenie", "roster"])
    def kind(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    def opsgenie(self) -> Iterator[FakeOpsgenie]:
        server = FakeOpsgenie(GENIE_KEY).start()
        yield server
        server.stop()

    @pytest.fixture
    def export(self, tmp_path: Path) -> Path:
        path = tmp_path / "ward7.ics"
        path.write_text(
            ROSTER_HEAD
            + shift("night", "20261129T200000", "20261130T080000", "ben@ward.nhs.uk")
            + "END:VCALENDAR\r\n"
        )
        return path

    @pytest.fixture
    def policy(self, kind: str, opsgenie: FakeOpsgenie, export: Path, clock: ManualClock) -> Policy:
        timing = {"refresh_every": "5m", "stale_after": "1h"}
        if kind == "roster":
            source = {"roster": {"file": str(export), "format": "ics"}, **timing}
            return sourced_policy(source, clock, {}, sla=False)
        opsgenie.on_call("ward7-nic", "ben@ward.nhs.uk", NIGHT - timedelta(hours=1), NIGHT)
        opsgenie.on_call("ward7-nic", "ben@ward.nhs.uk", NIGHT, NIGHT + timedelta(hours=5))
        source = {
            "opsgenie": {
                "schedule": "ward7-nic",
                "token_env": "OPSGENIE_KEY",
                "api_url": opsgenie.base_url,
                "insecure": True,
            },
            **timing,
        }
        return sourced_policy(source, clock, {"OPSGENIE_KEY": GENIE_KEY}, sla=False)

    def test_last_good_read_then_the_escalation_group_never_open(
        self,
        kind: str,
        slack: RunningApp,
        service: AccessService,
        clock: ManualClock,
        opsgenie: FakeOpsgenie,
        export: Path,
    ) -> None:
        deps = self.job_deps(slack, service)
        assert oncall_sources(deps) == 0  # read at 03:00
        if kind == "roster":
            export.write_text("BEGIN:VCALENDAR\r\nthe e-roster's export job died here")
        else:
            opsgenie.failures = [500] * 1000
        clock.advance(timedelta(minutes=5))
        assert oncall_sources(deps) == 1  # security told once
        clock.advance(timedelta(minutes=5))
        assert oncall_sources(deps) == 0
        [down] = [t for t in posts_to(slack, "C0SEC") if "cannot be read" in t]
        assert "since 03:05" in down and "last good read (03:00) until 04:00" in down
        # 03:50: the last good read still answers.
        clock.advance(timedelta(minutes=40))
        rid = ask(slack)
        assert list(cards(slack, rid)) == ["U0BEN"]
        # 04:01: stale. Nobody from the rota; the managers get the card at once.
        clock.advance(timedelta(minutes=11))
        late = ask(slack, "U0CHLOE")
        assert sorted(cards(slack, late)) == ["U0GITA", "U0HANA"]
        assert "approval.unreachable" in actions(service, late)
        assert slack.click(APPROVE_ACTION, str(late), "U0BEN").status_code == 200
        slack.settle()
        assert service.get(late).state == S.PENDING  # never open
        assert slack.click(APPROVE_ACTION, str(late), "U0HANA").status_code == 200
        slack.settle()
        assert service.get(late).state == S.ACTIVE
