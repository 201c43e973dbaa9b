"""Groups from the directory, through Slack: a nurse in an AD (LDAP) group asks and is routed
to the approvers the directory names; a leaver disabled in the directory is refused, their
active grant revoked through the lifecycle and security told; and a directory that cannot be
read keeps its last good membership until `stale_after`, then refuses (never open), with the
security channel told once when it went down and once when it came back.

Every story runs through the real app over signed HTTP against the fake Slack Web API, with the
directory a real slapd (tests/slapd.py) or the Graph stand-in (tests/fakes/graph.py), and an
injected clock.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml
from ldap3 import MODIFY_REPLACE

from app.access import AccessService
from app.clock import ManualClock
from app.demo.slack_fake import Call, SlackChannel
from app.directory import SlackDirectory
from app.groups import DirectoryGroups
from app.groups.jobs import directory_groups
from app.lifecycle.deps import CoreDeps
from app.notify.notifier import Notifier
from app.oncall import OnCall
from app.policy import Policy
from app.policy_targets import parse_policy
from app.requests.messages import APPROVE_ACTION
from app.scheduler import JobDeps, job_deps
from app.slack.app import web_client
from app.store.models import AuditEvent
from app.store.models import RequestState as S
from tests import slapd
from tests.adapters.test_ldap_adapter import need_slapd
from tests.conftest import HERE
from tests.conftest import audit_actions as actions
from tests.fakes.graph import FakeGraph
from tests.fakes.pagerduty import FakePagerDuty
from tests.groups.test_groups import (
    CLIENT,
    ENV,
    LEADS,
    NURSES,
    SCHEMA,
    SECRET,
    TENANT,
    entra_target,
    ldap_target,
    seed_ward7,
)
from tests.oncall.test_oncall_slack import TOKEN as PD_TOKEN
from tests.oncall.test_oncall_slack import pagerduty_source
from tests.slack_harness import RunningApp, SlackOnSqlite, run_app

REQUEST = "pharmacy-db:read 30m fix stuck order set on ward 7"


def directory_policy(
    groups: dict[str, Any], targets: dict[str, Any], clock: ManualClock, env: dict[str, str]
) -> Policy:
    """The test trust with clinical-systems (who may read pharmacy-db) and the clinical path's
    approvers (ward7-leads) read from the directory, through a cache of its own."""
    data = yaml.safe_load((HERE / "data" / "ward_policy.yaml").read_text())
    data["groups"].update(groups)
    data["targets"].update(targets)
    data["paths"]["clinical"]["approvers"] = [{"group": "ward7-leads"}]
    policy = parse_policy(yaml.safe_dump(data), "test policy")
    return policy.with_groups(DirectoryGroups(policy, clock, env=env, sleep=lambda _s: None))


def ask(slack: RunningApp, user: str = "U0AMIRA") -> str:
    before = len(slack.fake.calls_to("response_url"))
    assert slack.command("/jit", f"request {REQUEST}", user).status_code == 200
    reply = slack.replies(before + 1)[-1]
    slack.settle()
    return reply


def request_id(reply: str) -> int:
    assert reply.startswith("Request #"), reply
    return int(reply.split("#")[1].split(" ")[0])


def cards(slack: RunningApp, rid: int) -> dict[str, list[Call]]:
    found: dict[str, list[Call]] = {}
    for call in slack.fake.calls_to("chat.postMessage"):
        blocks = json.dumps(call.args.get("blocks") or [])
        if APPROVE_ACTION in blocks and f"Access request #{rid}" in blocks:
            found.setdefault(str(call.args["channel"]), []).append(call)
    return found


def posts_to(slack: RunningApp, channel: str) -> list[str]:
    return [
        str(c.args.get("text", ""))
        for c in slack.fake.calls_to("chat.postMessage", channel=channel)
    ]


class DirectoryStory(SlackOnSqlite):
    @pytest.fixture
    def slack(self, service: AccessService) -> Iterator[RunningApp]:
        for running in run_app(service):
            running.fake.add_channel(SlackChannel("C0SEC", "security-alerts", is_private=True))
            running.fake.add_channel(SlackChannel("C0MGR", "manager-reviews"))
            yield running

    def job_deps(self, slack: RunningApp, service: AccessService) -> JobDeps:
        """What the jobs are given in a process, the directory groups' refresh included."""
        client = web_client(slack.fake.token, slack.fake.api_url)
        return job_deps(service, Notifier(client, service, SlackDirectory(client)).outbox)


@pytest.fixture(scope="module")
def ward7_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[slapd.Slapd]:
    need_slapd()
    with slapd.running(tmp_path_factory.mktemp("slapd-slack"), schemas=(SCHEMA,)) as server:
        seed_ward7(server.admin())
        yield server


@pytest.fixture
def directory(ward7_directory: slapd.Slapd) -> Iterator[slapd.Slapd]:
    yield ward7_directory
    admin = ward7_directory.admin()
    for uid in ("amira7", "ben7"):
        admin.modify(slapd.person_dn(uid), {"userAccountControl": [(MODIFY_REPLACE, [512])]})


class TestLdapGroupsThroughSlack(DirectoryStory):
    @pytest.fixture
    def policy(self, directory: slapd.Slapd, clock: ManualClock) -> Policy:
        def group(dn: str) -> dict[str, Any]:
            return {
                "ldap": {"group": dn, "target": "ward-directory"},
                "refresh_every": "5m",
                "stale_after": "1h",
                "revoke_leavers": True,
            }

        return directory_policy(
            {"clinical-systems": group(NURSES), "ward7-leads": group(LEADS)},
            {"ward-directory": ldap_target(directory.url)},
            clock,
            ENV,
        )

    def test_a_nurse_in_the_directory_group_is_routed_to_the_directory_approvers(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        rid = request_id(ask(slack))
        # Amira is a ward 7 nurse in the directory, not in the policy's lists; the approver
        # is who the directory has in ward7-leads: Ben, and only Ben.
        assert list(cards(slack, rid)) == ["U0BEN"]
        assert slack.click(APPROVE_ACTION, str(rid), "U0CHLOE").status_code == 200
        slack.settle()
        assert service.get(rid).state == S.PENDING
        assert slack.click(APPROVE_ACTION, str(rid), "U0BEN").status_code == 200
        slack.settle()
        assert service.get(rid).state == S.ACTIVE
        # Chloe is in no ward 7 group in the directory: refused.
        assert "not eligible for pharmacy-db:read" in ask(slack, "U0CHLOE")

    def test_a_leaver_disabled_in_the_directory_loses_access_and_security_is_told(
        self,
        slack: RunningApp,
        service: AccessService,
        clock: ManualClock,
        directory: slapd.Slapd,
    ) -> None:
        deps = self.job_deps(slack, service)
        rid = request_id(ask(slack))
        assert slack.click(APPROVE_ACTION, str(rid), "U0BEN").status_code == 200
        slack.settle()
        assert service.get(rid).state == S.ACTIVE
        assert directory_groups(deps) == []  # read at 03:00, nobody has left
        # 03:02: Amira leaves; the trust's joiners-movers-leavers process disables her in AD.
        clock.advance(timedelta(minutes=2))
        directory.admin().modify(
            slapd.person_dn("amira7"), {"userAccountControl": [(MODIFY_REPLACE, [514])]}
        )
        assert directory_groups(deps) == []  # not read again before refresh_every
        assert service.get(rid).state == S.ACTIVE
        # 03:05: the next read. Her grant, which relied on clinical-systems, is revoked
        # through the lifecycle, audited, and security and Amira are told.
        clock.advance(timedelta(minutes=3))
        [ended] = directory_groups(deps)
        assert ended.request_id == rid and ended.disabled
        view = service.get(rid)
        assert view.state == S.ENDED
        assert view.end_reason == "your account is disabled in the directory"
        assert actions(service, rid)[-2:] == ["revoke.started", "revoke.succeeded"]
        with service.db.read() as session:
            started = session.scalars(
                sa.select(AuditEvent.body).where(
                    AuditEvent.request_id == rid, AuditEvent.action == "revoke.started"
                )
            ).one()
        assert json.loads(started)["data"]["cause"] == "directory_leaver"
        assert posts_to(slack, "C0SEC") == [
            f"🚪 Leaver: amira@ward.nhs.uk is disabled in the directory, so #{rid} "
            "`pharmacy-db:read` ends: their access is being revoked (revoke_leavers). They "
            "have been told."
        ]
        told = [
            str(c.args.get("text", "")) + json.dumps(c.args.get("blocks") or [])
            for c in slack.fake.calls_to("chat.postMessage", channel="U0AMIRA")
        ]
        assert any("your account is disabled in the directory" in t for t in told), told
        # She asks again: refused. The next sweep tells nobody twice.
        assert "not eligible for pharmacy-db:read" in ask(slack)
        clock.advance(timedelta(minutes=5))
        assert directory_groups(deps) == []
        assert len(posts_to(slack, "C0SEC")) == 1

    def test_a_disabled_approver_cannot_approve(
        self,
        slack: RunningApp,
        service: AccessService,
        clock: ManualClock,
        directory: slapd.Slapd,
    ) -> None:
        rid = request_id(ask(slack))
        directory.admin().modify(
            slapd.person_dn("ben7"), {"userAccountControl": [(MODIFY_REPLACE, [514])]}
        )
        clock.advance(timedelta(minutes=5))
        assert slack.click(APPROVE_ACTION, str(rid), "U0BEN").status_code == 200
        slack.settle()
        assert service.get(rid).state == S.PENDING


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    fake = FakeGraph(TENANT, CLIENT, SECRET).start()
    yield fake
    fake.stop()


class TestEntraDown(DirectoryStory):
    @pytest.fixture
    def policy(self, graph: FakeGraph, clock: ManualClock) -> Policy:
        nurses, leads = graph.add_group(), graph.add_group()
        graph.groups[nurses].add(
            graph.add_user("amira.k@ward.onmicrosoft.com", "amira@ward.nhs.uk")
        )
        graph.groups[nurses].add(
            graph.add_user("chloe.e@ward.onmicrosoft.com", "chloe@ward.nhs.uk")
        )
        graph.groups[leads].add(graph.add_user("ben.h@ward.onmicrosoft.com", "ben@ward.nhs.uk"))

        def group(object_id: str) -> dict[str, Any]:
            return {
                "entra": {"group": object_id, "target": "cloud"},
                "refresh_every": "5m",
                "stale_after": "1h",
                "revoke_leavers": True,
            }

        return directory_policy(
            {"clinical-systems": group(nurses), "ward7-leads": group(leads)},
            {"cloud": entra_target(graph.authority, graph.graph_url)},
            clock,
            ENV,
        )

    def test_last_good_membership_until_stale_after_then_refused_never_open(
        self, slack: RunningApp, service: AccessService, clock: ManualClock, graph: FakeGraph
    ) -> None:
        deps = self.job_deps(slack, service)
        assert directory_groups(deps) == []  # read at 03:00
        rid = request_id(ask(slack))
        assert slack.click(APPROVE_ACTION, str(rid), "U0BEN").status_code == 200
        slack.settle()
        assert service.get(rid).state == S.ACTIVE
        graph.unavailable = True  # Graph goes down at 03:05
        clock.advance(timedelta(minutes=5))
        assert len(directory_groups(deps)) == 2  # one message for each group
        for _ in range(3):  # the sweep keeps trying: security is told once per outage
            clock.advance(timedelta(minutes=5))
            assert directory_groups(deps) == []
        down = [t for t in posts_to(slack, "C0SEC") if "cannot be read" in t]
        assert len(down) == 2
        assert down[0].startswith("📇 Group clinical-systems cannot be read from Entra ID group ")
        assert down[0].endswith(
            "since 03:05 (read group: Graph is throttling or unavailable (HTTP 503)). WardKey "
            "uses its last good read (03:00) until 04:00; after that nobody is in it, so its "
            "members can neither ask nor approve (never the other way). WardKey tries again "
            "every few minutes and says here when it reads it again."
        )
        # 03:50, within stale_after: the last good membership still answers, for the
        # requester and the approver alike; the outage revokes nobody.
        clock.advance(timedelta(minutes=30))
        assert service.get(rid).state == S.ACTIVE
        chloe = request_id(ask(slack, "U0CHLOE"))
        assert list(cards(slack, chloe)) == ["U0BEN"]
        # 04:01: the read of 03:00 no longer counts: nobody is in either group. Asking is
        # refused, and Ben cannot approve what the directory cannot confirm.
        clock.advance(timedelta(minutes=11))
        assert "not eligible for pharmacy-db:read" in ask(slack, "U0AMIRA")
        assert slack.click(APPROVE_ACTION, str(chloe), "U0BEN").status_code == 200
        slack.settle()
        assert service.get(chloe).state == S.PENDING
        assert directory_groups(deps) == []  # still no revoke on an outage
        assert service.get(rid).state == S.ACTIVE
        # Graph answers again: security is told once for each group, and Ben approves.
        graph.unavailable = False
        clock.advance(timedelta(minutes=5))
        assert len(directory_groups(deps)) == 2
        clock.advance(timedelta(minutes=5))
        assert directory_groups(deps) == []
        back = [t for t in posts_to(slack, "C0SEC") if t.startswith("✅")]
        assert back[0].startswith("✅ Group clinical-systems is read from Entra ID group ")
        assert back[0].endswith("again (read 04:06): its members may ask and approve as before.")
        assert len(back) == 2
        assert slack.click(APPROVE_ACTION, str(chloe), "U0BEN").status_code == 200
        slack.settle()
        assert service.get(chloe).state == S.ACTIVE

    def test_two_processes_reading_the_directory_tell_security_once_per_outage(
        self, slack: RunningApp, service: AccessService, clock: ManualClock, graph: FakeGraph
    ) -> None:
        # A second worker on the same database reads Graph for itself, through its own cache.
        other_policy = service.policy.with_groups(
            DirectoryGroups(service.policy, clock, env=ENV, sleep=lambda _s: None)
        )
        other = AccessService(CoreDeps(service.db, other_policy, service.adapters, clock))
        workers = [self.job_deps(slack, service), self.job_deps(slack, other)]

        def tick(minutes: int) -> list[int]:
            clock.advance(timedelta(minutes=minutes))
            return [len(directory_groups(worker)) for worker in workers]

        assert tick(0) == [0, 0]  # both read both groups at 03:00
        graph.unavailable = True
        assert tick(5) == [2, 0]  # the second finds each outage already told
        assert tick(5) == [0, 0]
        graph.unavailable = False
        assert tick(5) == [2, 0]  # and each end
        graph.unavailable = True  # a second outage is told again, once
        assert tick(5) == [2, 0]
        slack.settle()
        said = [t.split(" from ")[0] for t in posts_to(slack, "C0SEC")]
        assert sorted(said) == sorted(
            [f"📇 Group {g} cannot be read" for g in ("clinical-systems", "ward7-leads")] * 2
            + [f"✅ Group {g} is read" for g in ("clinical-systems", "ward7-leads")]
        )

    def test_the_card_says_where_directory_approvers_came_from_and_how_fresh(
        self, slack: RunningApp, service: AccessService, clock: ManualClock, graph: FakeGraph
    ) -> None:
        leads = service.policy.directory_groups()["ward7-leads"].entra
        assert leads is not None
        origin = f"📇 ward7-leads per Entra ID group {leads.group}"

        def card_lines(rid: int) -> list[str]:
            [card] = cards(slack, rid)["U0BEN"]
            text = json.dumps(card.args["blocks"], ensure_ascii=False)
            return [line for line in text.replace('"', "\\n").split("\\n") if "📇" in line]

        deps = self.job_deps(slack, service)
        assert directory_groups(deps) == []  # read at 03:00
        first = request_id(ask(slack))
        assert card_lines(first) == [f"{origin}, read 03:00"]
        graph.unavailable = True  # Graph goes down at 03:05
        clock.advance(timedelta(minutes=5))
        directory_groups(deps)
        clock.advance(timedelta(minutes=45))  # 03:50: the last good read still answers
        second = request_id(ask(slack, "U0CHLOE"))
        assert card_lines(second) == [f"{origin}, read 03:00 (unreadable since 03:05)"]


class TestAdNurseRoutedToThePagerDutyOnCall(DirectoryStory):
    """The issue's first story whole: a nurse in an AD group (read from slapd) asks, and the
    request goes to whoever PagerDuty has on call, nobody else."""

    @pytest.fixture
    def pagerduty(self) -> Iterator[FakePagerDuty]:
        server = FakePagerDuty(PD_TOKEN).start()
        yield server
        server.stop()

    @pytest.fixture
    def policy(
        self, directory: slapd.Slapd, pagerduty: FakePagerDuty, clock: ManualClock
    ) -> Policy:
        now = clock.now()
        pagerduty.on_call(
            "PWARD07",
            "PCHLOE1",
            "chloe@ward.nhs.uk",
            now - timedelta(hours=1),
            now + timedelta(hours=5),
        )
        pagerduty.on_call("POTHER1", "PDEV001", "dev@ward.nhs.uk", now - timedelta(hours=1), None)
        data = yaml.safe_load((HERE / "data" / "ward_policy.yaml").read_text())
        data["groups"]["clinical-systems"] = {
            "ldap": {"group": NURSES, "target": "ward-directory"},
            "refresh_every": "5m",
            "stale_after": "1h",
        }
        data["targets"]["ward-directory"] = ldap_target(directory.url)
        data["paths"]["clinical"]["approvers"] = [{"rota": "clinical-oncall"}]
        data["oncall"]["clinical-oncall"] = {
            "source": pagerduty_source(pagerduty),
            "escalation": "managers",
        }
        policy = parse_policy(yaml.safe_dump(data), "test policy")
        env = {**ENV, "PAGERDUTY_TOKEN": PD_TOKEN}
        groups = DirectoryGroups(policy, clock, env=env, sleep=lambda _s: None)
        on_call = OnCall(policy, clock, client=httpx.Client(), env=env)
        return policy.with_groups(groups).with_on_call(on_call)

    def test_the_ad_nurse_reaches_exactly_the_pagerduty_on_call(
        self, slack: RunningApp, service: AccessService, pagerduty: FakePagerDuty
    ) -> None:
        rid = request_id(ask(slack))
        sent = cards(slack, rid)
        assert list(sent) == ["U0CHLOE"]  # Amira is in the AD group; Chloe is on call
        text = json.dumps(sent["U0CHLOE"][0].args["blocks"])
        assert "clinical-oncall on call per PagerDuty schedule PWARD07, read 03:00" in text
        assert slack.click(APPROVE_ACTION, str(rid), "U0DEV").status_code == 200
        slack.settle()
        assert service.get(rid).state == S.PENDING  # on call elsewhere: not an approver here
        assert slack.click(APPROVE_ACTION, str(rid), "U0CHLOE").status_code == 200
        slack.settle()
        assert service.get(rid).state == S.ACTIVE
        # Chloe, on call but in no ward 7 nurses group in AD, may not ask for it herself.
        assert "not eligible for pharmacy-db:read" in ask(slack, "U0CHLOE")


class TestLdapDown(DirectoryStory):
    """An LDAP directory that stops answering (here: it refuses WardKey's bind, as after a
    password change nobody told WardKey of) takes the documented path: the last good read
    until stale_after, security told once, then nobody in the group: never open."""

    env: dict[str, str]

    @pytest.fixture
    def policy(self, directory: slapd.Slapd, clock: ManualClock) -> Policy:
        self.env = dict(ENV)

        def group(dn: str) -> dict[str, Any]:
            return {
                "ldap": {"group": dn, "target": "ward-directory"},
                "refresh_every": "5m",
                "stale_after": "1h",
                "revoke_leavers": True,
            }

        return directory_policy(
            {"clinical-systems": group(NURSES), "ward7-leads": group(LEADS)},
            {"ward-directory": ldap_target(directory.url)},
            clock,
            self.env,
        )

    def test_last_good_read_until_stale_after_then_nobody_never_open(
        self, slack: RunningApp, service: AccessService, clock: ManualClock
    ) -> None:
        deps = self.job_deps(slack, service)
        assert directory_groups(deps) == []  # read at 03:00
        self.env["DIRECTORY_PASSWORD"] = "rotated-elsewhere"  # the bind is refused from 03:05
        clock.advance(timedelta(minutes=5))
        assert len(directory_groups(deps)) == 2  # one message for each group
        clock.advance(timedelta(minutes=5))
        assert directory_groups(deps) == []
        down = [t for t in posts_to(slack, "C0SEC") if "cannot be read" in t]
        assert len(down) == 2 and all("last good read (03:00) until 04:00" in t for t in down)
        # 03:50: Amira asks, and her card goes to Ben, both from the last good read.
        clock.advance(timedelta(minutes=40))
        rid = request_id(ask(slack))
        assert list(cards(slack, rid)) == ["U0BEN"]
        # 04:01: stale: nobody is in either group, so Ben may not approve and nobody may ask.
        clock.advance(timedelta(minutes=11))
        assert slack.click(APPROVE_ACTION, str(rid), "U0BEN").status_code == 200
        slack.settle()
        assert service.get(rid).state == S.PENDING
        assert service.policy.members_of("clinical-systems") == []
        assert service.policy.members_of("ward7-leads") == []
        # The directory answers again (the password put right): Ben approves.
        self.env["DIRECTORY_PASSWORD"] = ENV["DIRECTORY_PASSWORD"]
        clock.advance(timedelta(minutes=5))
        assert len(directory_groups(deps)) == 2  # security told once for each group
        assert slack.click(APPROVE_ACTION, str(rid), "U0BEN").status_code == 200
        slack.settle()
        assert service.get(rid).state == S.ACTIVE
