"""Groups from the directory (app/groups): a policy group read from OpenLDAP (a real slapd,
tests/slapd.py) or Microsoft Entra ID (the Graph stand-in, tests/fakes/graph.py), cached with a
time to live, failing closed once the last good read is stale, and leavers (disabled in the
directory, or gone from the group) losing eligibility and approval at the next read."""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from ldap3 import MODIFY_ADD, MODIFY_DELETE, MODIFY_REPLACE
from prometheus_client import CollectorRegistry, generate_latest

from app.access import AccessService
from app.cli import main
from app.clock import ManualClock
from app.demo.slack_fake import FakeSlack, SlackUser
from app.groups import DirectoryGroups, describe, path_groups, with_directory_groups
from app.groups import jobs as groups_jobs
from app.groups.jobs import Ended
from app.lifecycle.deps import CoreDeps
from app.metrics import WardKeyCollector
from app.policy import Policy, PolicyError
from app.policy.rules import PolicyRefusal, approvers_at, plan_request
from app.policy_targets import parse_policy, policy_warnings
from app.scheduler import job_deps
from app.store.models import OutboxItem, RequestState
from tests import slapd
from tests.adapters.test_ldap_adapter import need_slapd
from tests.conftest import AMIRA, BEN, CHLOE, HERE, NIGHT_SHIFT, sqlite_copy
from tests.fakes.graph import FakeGraph
from tests.slack_harness import WARD_USERS

SCHEMA = HERE / "data" / "directory-accounts.schema"
NURSES = slapd.group_dn("ward7-nurses")
LEADS = slapd.group_dn("ward7-leads")
TENANT, CLIENT, SECRET = str(uuid.uuid4()), str(uuid.uuid4()), "graph-secret"
GRAPH = "https://graph.microsoft.com/v1.0"
ENV = {"DIRECTORY_PASSWORD": slapd.WARDKEY_PASSWORD, "GRAPH_SECRET": SECRET}


def seed_ward7(admin: Any) -> None:
    """Ward 7's nurses (Amira, and Ben through the nested leads group) and Chloe, in a group
    of their own; every person with a mail attribute and an account that can be disabled."""
    people = [
        ("amira7", "amira@ward.nhs.uk", "U0AMIRA"),
        ("ben7", "ben@ward.nhs.uk", None),
        ("chloe7", "chloe@ward.nhs.uk", None),
        ("nomail7", None, None),
    ]
    for uid, mail, slack in people:
        attributes: dict[str, Any] = {"uid": uid, "cn": uid, "sn": uid, "userAccountControl": 512}
        if mail:
            attributes["mail"] = mail
        if slack:
            attributes["employeeNumber"] = slack
        assert admin.add(slapd.person_dn(uid), ["inetOrgPerson", "wardAccount"], attributes), (
            admin.result
        )
    assert admin.add(
        LEADS, ["groupOfNames"], {"cn": "ward7-leads", "member": [slapd.person_dn("ben7")]}
    )
    assert admin.add(
        NURSES,
        ["groupOfNames"],
        {
            "cn": "ward7-nurses",
            "member": [
                slapd.person_dn("amira7"),
                LEADS,
                slapd.person_dn("nomail7"),
                f"uid=gone,ou=people,{slapd.SUFFIX}",  # a dangling reference: skipped
            ],
        },
    )


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[slapd.Slapd]:
    need_slapd()
    with slapd.running(tmp_path_factory.mktemp("slapd-groups"), schemas=(SCHEMA,)) as server:
        seed_ward7(server.admin())
        yield server


@pytest.fixture
def ward7(directory: slapd.Slapd) -> Iterator[slapd.Slapd]:
    yield directory
    admin = directory.admin()  # put everyone back as seeded
    for uid in ("amira7", "ben7", "chloe7"):
        admin.modify(slapd.person_dn(uid), {"userAccountControl": [(MODIFY_REPLACE, [512])]})
        admin.modify(slapd.person_dn(uid), {"nsAccountLock": [(MODIFY_REPLACE, [])]})
    admin.modify(NURSES, {"member": [(MODIFY_ADD, [slapd.person_dn("amira7")])]})


def ldap_target(url: str) -> dict[str, Any]:
    return {
        "kind": "ldap",
        "insecure": True,
        "settings": {
            "url": url,
            "bind_dn": slapd.WARDKEY_DN,
            "user_base": f"ou=people,{slapd.SUFFIX}",
            "timeout_seconds": 3,
        },
        "secrets": {"bind_password": "DIRECTORY_PASSWORD"},
        "roles": {
            "helpdesk": {"path": "admin", "entitlement": "cn=helpdesk", "eligible": ["managers"]}
        },
    }


def ward_policy(groups: dict[str, Any], targets: dict[str, Any] | None = None, **paths: Any) -> str:
    """The test trust with clinical-systems (who may read pharmacy-db) replaced by `groups`."""
    data = yaml.safe_load((HERE / "data" / "ward_policy.yaml").read_text())
    data["groups"].update(groups)
    data["targets"].update(targets or {})
    for name, approvers in paths.items():
        data["paths"][name]["approvers"] = approvers
    return yaml.safe_dump(data)


def problems(refused: pytest.ExceptionInfo[PolicyError]) -> list[str]:
    return [f"{i.where}: {i.message}" for i in refused.value.issues]


def cached(
    text: str, clock: ManualClock, env: dict[str, str] = ENV
) -> tuple[Policy, DirectoryGroups]:
    policy = parse_policy(text, "test policy")
    cache = DirectoryGroups(policy, clock, env=env, sleep=lambda _s: None)
    return policy.with_groups(cache), cache


def eligible(policy: Policy, person: Any, clock: ManualClock) -> bool:
    try:
        plan_request(policy, person, "pharmacy-db", "read", clock.now())
    except PolicyRefusal:
        return False
    return True


class TestPolicyShape:
    def test_a_directory_group_is_a_dn_or_an_object_id_beside_literal_lists(self) -> None:
        text = ward_policy(
            {
                "clinical-systems": {"ldap": {"group": NURSES, "target": "directory"}},
                "ward8": {"ldap": "cn=ward8,ou=groups,dc=ward"},  # shorthand: the DN alone
                "cloud-nurses": {"entra": {"group": str(uuid.uuid4()), "target": "cloud"}},
            },
            {"cloud": entra_target("https://login.microsoftonline.com", GRAPH)},
        )
        policy = parse_policy(text, "test policy")
        assert sorted(policy.directory_groups()) == ["clinical-systems", "cloud-nurses", "ward8"]
        assert policy.listed("managers") == ["gita@ward.nhs.uk", "hana@ward.nhs.uk"]
        # The shorthand is read through the policy's only ldap target.
        assert policy.directory_target("ward8") == "directory"

    def test_the_shorthand_needs_a_single_target_of_its_kind(self) -> None:
        second = ldap_target("ldaps://dc2.ward.nhs.uk")
        text = ward_policy({"ward8": {"ldap": "cn=ward8,ou=groups,dc=ward"}}, {"dc2": second})
        with pytest.raises(PolicyError) as refused:
            parse_policy(text, "test policy")
        # Two ldap targets: the error names the field and the targets to choose from.
        assert problems(refused) == [
            "groups.ward8.ldap: say how to read it: 'target' naming an ldap target (the "
            "policy's ldap targets: dc2, directory), or your own 'settings' and 'secrets'"
        ]

    def test_problems_name_the_field(self) -> None:
        text = ward_policy(
            {
                "a": {"ldap": {"group": NURSES, "target": "pharmacy-db"}},
                "b": {"entra": {"group": "", "target": "directory"}},
                "c": {"ldap": {"group": NURSES, "target": "nowhere"}},
                "d": {
                    "ldap": {"group": NURSES, "target": "directory"},
                    "entra": {"group": str(uuid.uuid4())},
                },
                "e": {
                    "ldap": {"group": NURSES, "target": "directory"},
                    "refresh_every": "1h",
                    "stale_after": "30m",
                },
            }
        )
        with pytest.raises(PolicyError) as refused:
            parse_policy(text, "test policy")
        found = problems(refused)
        assert any(p.startswith("groups.b.entra.group") for p in found), found
        assert any(
            p.startswith("groups.d") and "exactly one of 'ldap' or 'entra'" in p for p in found
        ), found

    def test_cross_checks(self) -> None:
        text = ward_policy(
            {
                "a": {"ldap": {"group": NURSES, "target": "pharmacy-db"}},
                "c": {"ldap": {"group": NURSES, "target": "nowhere"}},
                "e": {
                    "ldap": {"group": NURSES, "target": "directory"},
                    "refresh_every": "1h",
                    "stale_after": "30m",
                },
            }
        )
        with pytest.raises(PolicyError) as refused:
            parse_policy(text, "test policy")
        assert problems(refused) == [
            "groups.a.ldap.target: 'pharmacy-db' is a postgres target; name an ldap target",
            "groups.c.ldap.target: unknown target 'nowhere'; the targets are directory, "
            "pharmacy-db",
            "groups.e.stale_after: is shorter than refresh_every, so the group would go stale "
            "between reads",
        ]

    def test_own_settings_are_checked_as_a_targets_are(self) -> None:
        own = {
            "settings": {
                "url": "ldap://dc1.ward.nhs.uk",
                "bind_dn": "cn=x,dc=ward",
                "user_base": "dc=ward",
            },
            "secrets": {"bind_password": "DIRECTORY_PASSWORD"},
        }
        with pytest.raises(PolicyError) as refused:
            parse_policy(ward_policy({"a": {"ldap": {"group": NURSES, **own}}}), "test policy")
        [issue] = problems(refused)
        assert issue.startswith("groups.a.ldap.settings.url: ")
        assert "insecure: true" in issue
        # Marked insecure (a test system): accepted, and policy check warns at the flag.
        policy = parse_policy(
            ward_policy({"a": {"ldap": {"group": NURSES, **own, "insecure": True}}}), "test policy"
        )
        assert [str(w).split(":")[0] for w in policy_warnings(policy)] == [
            "groups.a.ldap.settings.url"
        ]


class TestLdapGroups:
    def policy(self, directory: slapd.Slapd, **group: Any) -> str:
        source = {
            "group": NURSES,
            "target": "ward-directory",
            "slack_attribute": "employeeNumber",
            **group,
        }
        return ward_policy(
            {"clinical-systems": {"ldap": source, "refresh_every": "5m", "stale_after": "1h"}},
            {"ward-directory": ldap_target(directory.url)},
        )

    def test_members_nested_groups_and_mapping(
        self, ward7: slapd.Slapd, clock: ManualClock
    ) -> None:
        policy, _ = cached(self.policy(ward7), clock)
        # Amira by the Slack ID the directory holds (once: one card each), Ben by his mail,
        # through the nested leads group; nobody without either; the dangling DN skipped.
        assert policy.members_of("clinical-systems") == ["U0AMIRA", "ben@ward.nhs.uk"]
        assert eligible(policy, AMIRA, clock) and eligible(policy, BEN, clock)
        assert not eligible(policy, CHLOE, clock)
        assert describe(policy, "clinical-systems") == (
            f"from LDAP group {NURSES}: 2 people, read 03:00"
        )

    def test_the_shorthand_is_read_through_the_only_ldap_target(
        self, ward7: slapd.Slapd, clock: ManualClock
    ) -> None:
        data = yaml.safe_load(ward_policy({"clinical-systems": {"ldap": NURSES}}))
        roles = data["targets"]["directory"]["roles"]
        data["targets"]["directory"] = {**ldap_target(ward7.url), "roles": roles}
        policy, _ = cached(yaml.safe_dump(data), clock)
        assert policy.members_of("clinical-systems") == ["amira@ward.nhs.uk", "ben@ward.nhs.uk"]

    def test_not_nested_reads_direct_members_only(
        self, ward7: slapd.Slapd, clock: ManualClock
    ) -> None:
        policy, _ = cached(self.policy(ward7, nested=False), clock)
        assert policy.members_of("clinical-systems") == ["U0AMIRA"]

    def test_a_disabled_leaver_loses_eligibility_at_the_next_refresh_not_before(
        self, ward7: slapd.Slapd, clock: ManualClock
    ) -> None:
        policy, cache = cached(self.policy(ward7), clock)
        assert eligible(policy, BEN, clock)
        # Ben leaves the trust: AD sets ACCOUNTDISABLE (0x2) in his userAccountControl.
        ward7.admin().modify(
            slapd.person_dn("ben7"), {"userAccountControl": [(MODIFY_REPLACE, [514])]}
        )
        clock.advance(timedelta(minutes=4))
        assert eligible(policy, BEN, clock)  # the read of 03:00 still stands
        clock.advance(timedelta(minutes=1))
        assert not eligible(policy, BEN, clock)
        assert cache.disabled("clinical-systems") == frozenset({"ben@ward.nhs.uk"})
        assert "1 disabled account left out" in describe(policy, "clinical-systems")

    def test_a_lock_attribute_the_policy_names(
        self, ward7: slapd.Slapd, clock: ManualClock
    ) -> None:
        policy, _ = cached(self.policy(ward7, disabled_attribute="nsAccountLock"), clock)
        ward7.admin().modify(
            slapd.person_dn("amira7"), {"nsAccountLock": [(MODIFY_REPLACE, ["TRUE"])]}
        )
        clock.advance(timedelta(minutes=5))
        assert not eligible(policy, AMIRA, clock)
        assert eligible(policy, BEN, clock)

    def test_removed_from_the_group_loses_approval_too(
        self, ward7: slapd.Slapd, clock: ManualClock
    ) -> None:
        text = self.policy(ward7)
        data = yaml.safe_load(text)
        data["paths"]["clinical"]["approvers"] = [{"group": "clinical-systems"}]
        policy, _ = cached(yaml.safe_dump(data), clock)
        assert "U0AMIRA" in approvers_at(policy, "clinical", clock.now())
        ward7.admin().modify(NURSES, {"member": [(MODIFY_DELETE, [slapd.person_dn("amira7")])]})
        clock.advance(timedelta(minutes=5))
        assert approvers_at(policy, "clinical", clock.now()) == ["ben@ward.nhs.uk"]

    def test_a_group_that_does_not_exist_is_nobody(
        self, ward7: slapd.Slapd, clock: ManualClock
    ) -> None:
        policy, _ = cached(self.policy(ward7, group=slapd.group_dn("no-such")), clock)
        assert policy.members_of("clinical-systems") == []
        assert "there is no group" in describe(policy, "clinical-systems")

    def test_a_directory_that_does_not_answer_is_nobody_and_says_why(
        self, clock: ManualClock
    ) -> None:
        text = ward_policy(
            {"clinical-systems": {"ldap": {"group": NURSES, "target": "ward-directory"}}},
            {"ward-directory": ldap_target("ldap://127.0.0.1:1")},  # nothing listens there
        )
        policy, cache = cached(text, clock)
        assert policy.members_of("clinical-systems") == []
        assert not eligible(policy, AMIRA, clock)
        [change] = cache.watch()
        assert change.down and "cannot reach ldap://127.0.0.1:1" in change.problem

    def test_a_wrong_password_is_nobody_and_never_open(
        self, ward7: slapd.Slapd, clock: ManualClock
    ) -> None:
        policy, _ = cached(self.policy(ward7), clock, {"DIRECTORY_PASSWORD": "wrong"})
        assert policy.members_of("clinical-systems") == []
        assert not eligible(policy, AMIRA, clock)


@pytest.fixture(scope="module")
def overlay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[slapd.Slapd]:
    need_slapd()
    work = tmp_path_factory.mktemp("slapd-memberof")
    with slapd.running(work, schemas=(SCHEMA,), memberof=True) as server:
        seed_ward7(server.admin())
        yield server


class TestMemberOf:
    """membership: memberOf, against a slapd with the memberof overlay (as Active Directory
    keeps memberOf itself)."""

    def test_direct_members_by_their_member_of(
        self, overlay: slapd.Slapd, clock: ManualClock
    ) -> None:
        source = {
            "group": NURSES,
            "target": "ward-directory",
            "membership": "memberOf",
            "nested": False,
        }
        text = ward_policy(
            {"clinical-systems": {"ldap": source}}, {"ward-directory": ldap_target(overlay.url)}
        )
        policy, _ = cached(text, clock)
        # Amira is a direct member; Ben is in ward7-leads, a member group, which memberOf
        # does not follow.
        assert policy.members_of("clinical-systems") == ["amira@ward.nhs.uk"]
        overlay.admin().modify(
            slapd.person_dn("amira7"), {"userAccountControl": [(MODIFY_REPLACE, [514])]}
        )
        clock.advance(timedelta(minutes=5))
        assert policy.members_of("clinical-systems") == []

    def test_member_of_with_nested_is_refused_with_the_reason(self) -> None:
        source = {"group": NURSES, "target": "directory", "membership": "memberOf"}
        with pytest.raises(PolicyError) as refused:
            parse_policy(ward_policy({"clinical-systems": {"ldap": source}}), "test policy")
        assert problems(refused) == [
            "groups.clinical-systems.ldap: membership: memberOf reads direct members only: "
            "set nested: false, or use membership: member to follow member groups"
        ]


def entra_target(authority: str, graph_url: str) -> dict[str, Any]:
    return {
        "kind": "entra",
        "insecure": True,
        "settings": {
            "tenant_id": TENANT,
            "client_id": CLIENT,
            "authority": authority,
            "graph_url": graph_url,
            "timeout_seconds": 3,
            "max_retry_after_seconds": 5,
        },
        "secrets": {"client_secret": "GRAPH_SECRET"},
        "roles": {
            "admin": {"path": "admin", "entitlement": str(uuid.uuid4()), "eligible": ["managers"]}
        },
    }


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    fake = FakeGraph(TENANT, CLIENT, SECRET).start()
    yield fake
    fake.stop()


class TestEntraGroups:
    def setup(
        self, graph: FakeGraph, clock: ManualClock, **group: Any
    ) -> tuple[Policy, DirectoryGroups, dict[str, str]]:
        nurses, leads = graph.add_group(), graph.add_group()
        ids = {
            "amira": graph.add_user("amira.khan@wardtrust.onmicrosoft.com", "amira@ward.nhs.uk"),
            "ben": graph.add_user("ben.hughes@wardtrust.onmicrosoft.com", "ben@ward.nhs.uk"),
            "chloe": graph.add_user("chloe.evans@wardtrust.onmicrosoft.com", "chloe@ward.nhs.uk"),
            "nomail": graph.add_user("kiosk@wardtrust.onmicrosoft.com", None),
        }
        graph.groups[nurses] |= {ids["amira"], ids["nomail"]}
        graph.groups[leads] |= {ids["ben"], ids["chloe"]}
        graph.nest(nurses, leads)
        source = {"group": nurses, "target": "cloud", **group}
        text = ward_policy(
            {"clinical-systems": {"entra": source, "refresh_every": "5m", "stale_after": "1h"}},
            {"cloud": entra_target(graph.authority, graph.graph_url)},
        )
        policy, cache = cached(text, clock)
        return policy, cache, ids

    def test_transitive_members_paged_with_select(
        self, graph: FakeGraph, clock: ManualClock
    ) -> None:
        policy, _, _ = self.setup(graph, clock)
        # Amira directly, Ben and Chloe through the nested group; the kiosk account has no
        # mail, so nobody to know it by. Four users, two pages of two.
        assert policy.members_of("clinical-systems") == [
            "amira@ward.nhs.uk",
            "ben@ward.nhs.uk",
            "chloe@ward.nhs.uk",
        ]
        reads = [
            (path, query)
            for (_, path), query in zip(graph.requests, graph.queries, strict=True)
            if "transitiveMembers" in path
        ]
        assert len(reads) == 2
        assert all(p.endswith("/transitiveMembers/microsoft.graph.user") for p, _ in reads)
        assert reads[0][1]["$select"] == ["id,mail,userPrincipalName,accountEnabled"]
        assert reads[1][1]["$skiptoken"] == ["2"]

    def test_by_user_principal_name(self, graph: FakeGraph, clock: ManualClock) -> None:
        policy, _, _ = self.setup(graph, clock, email_attribute="userPrincipalName")
        assert "kiosk@wardtrust.onmicrosoft.com" in policy.members_of("clinical-systems")

    def test_account_enabled_false_is_a_leaver(self, graph: FakeGraph, clock: ManualClock) -> None:
        policy, cache, ids = self.setup(graph, clock)
        assert eligible(policy, CHLOE, clock)
        graph.set_enabled(ids["chloe"], False)
        clock.advance(timedelta(minutes=5))
        assert not eligible(policy, CHLOE, clock)
        assert cache.disabled("clinical-systems") == frozenset({"chloe@ward.nhs.uk"})

    def test_throttled_waits_out_retry_after_then_reads(
        self, graph: FakeGraph, clock: ManualClock
    ) -> None:
        graph.throttle(2, status=429, retry_after=3)
        policy, _, _ = self.setup(graph, clock)
        assert len(policy.members_of("clinical-systems")) == 3

    def test_a_retry_after_longer_than_refresh_every_is_respected(
        self, graph: FakeGraph, clock: ManualClock
    ) -> None:
        policy, _cache, ids = self.setup(graph, clock)
        assert eligible(policy, CHLOE, clock)
        graph.set_enabled(ids["chloe"], False)
        clock.advance(timedelta(minutes=5))
        graph.throttle(1, status=429, retry_after=900)  # 15 minutes: beyond what is waited
        assert eligible(policy, CHLOE, clock)  # last good read (03:00) still answers
        before = len(graph.requests)
        clock.advance(timedelta(minutes=5))
        assert eligible(policy, CHLOE, clock)
        assert len(graph.requests) == before  # not asked again before its Retry-After
        clock.advance(timedelta(minutes=10))
        assert not eligible(policy, CHLOE, clock)

    def test_outage_keeps_the_last_good_read_until_stale_after_then_nobody(
        self, graph: FakeGraph, clock: ManualClock
    ) -> None:
        policy, cache, _ = self.setup(graph, clock)
        assert eligible(policy, AMIRA, clock)
        graph.unavailable = True
        clock.advance(timedelta(minutes=30))
        assert eligible(policy, AMIRA, clock)
        [change] = cache.watch()
        assert change.down and change.last_read == NIGHT_SHIFT
        assert change.stale_at == NIGHT_SHIFT + timedelta(hours=1)
        cache.told(change)
        assert cache.watch() == []  # told once per outage
        clock.advance(timedelta(minutes=30, seconds=1))
        assert not eligible(policy, AMIRA, clock)  # stale: fail closed, never open
        assert policy.members_of("clinical-systems") == []
        assert "so nobody is in it" in describe(policy, "clinical-systems")
        assert [(s.up, s.fresh) for s in cache.status()] == [(False, False)]
        graph.unavailable = False
        clock.advance(timedelta(minutes=5))
        assert eligible(policy, AMIRA, clock)
        [back] = cache.watch()
        assert not back.down
        cache.told(back)
        assert cache.watch() == []

    def test_a_lookup_while_the_group_is_being_read_answers_from_the_last_good_read(
        self, graph: FakeGraph, clock: ManualClock
    ) -> None:
        policy, cache, _ = self.setup(graph, clock)
        assert len(policy.members_of("clinical-systems")) == 3  # read at 03:00
        clock.advance(timedelta(minutes=5))
        graph.hold = threading.Event()
        refresh = threading.Thread(target=cache.refresh)
        refresh.start()
        try:
            assert graph.held.wait(10)  # the refresh job is waiting on Graph now
            # A request meanwhile is answered at once from the read of 03:00...
            assert len(policy.members_of("clinical-systems")) == 3
            assert refresh.is_alive()  # ...without waiting for the read in progress
        finally:
            graph.hold.set()
            refresh.join(10)
        assert [s.read_at for s in cache.status()] == [clock.now()]

    def test_a_lookup_during_the_first_read_waits_for_its_answer_not_nobody(
        self, graph: FakeGraph, clock: ManualClock
    ) -> None:
        policy, cache, _ = self.setup(graph, clock)
        graph.hold = threading.Event()
        refresh = threading.Thread(target=cache.refresh)
        refresh.start()
        answers: list[list[str]] = []
        asked = threading.Event()

        def ask() -> None:
            asked.set()
            answers.append(policy.members_of("clinical-systems"))

        asking = threading.Thread(target=ask)
        try:
            assert graph.held.wait(10)  # the first read is waiting on Graph
            asking.start()
            assert asked.wait(10)
        finally:
            graph.hold.set()
            refresh.join(10)
            asking.join(10)
        assert [len(a) for a in answers] == [3]

    def test_the_first_read_failing_means_nobody(
        self, graph: FakeGraph, clock: ManualClock
    ) -> None:
        graph.unavailable = True
        policy, cache, _ = self.setup(graph, clock)
        assert policy.members_of("clinical-systems") == []
        [change] = cache.watch()
        assert change.down and change.last_read is None

    def test_a_group_by_its_display_name(self, graph: FakeGraph, clock: ManualClock) -> None:
        graph.add_group("Ward 7 Nurses")
        named = graph.add_group("Ward 7 Nurses' Bank")  # a quote, as OData doubles it
        graph.groups[named].add(graph.add_user("dee@ward.onmicrosoft.com", "dee@ward.nhs.uk"))
        policy, _, _ = self.setup(graph, clock, group="Ward 7 Nurses' Bank")
        assert policy.members_of("clinical-systems") == ["dee@ward.nhs.uk"]
        clock.advance(timedelta(minutes=5))
        looked_up = len([p for _, p in graph.requests if p == "/v1.0/groups"])
        assert policy.members_of("clinical-systems") == ["dee@ward.nhs.uk"]
        assert len([p for _, p in graph.requests if p == "/v1.0/groups"]) == looked_up == 1

    def test_a_name_two_groups_share_is_refused_with_the_reason(
        self, graph: FakeGraph, clock: ManualClock
    ) -> None:
        graph.add_group("Ward 7 Nurses")
        graph.add_group("Ward 7 Nurses")
        policy, _, _ = self.setup(graph, clock, group="Ward 7 Nurses")
        assert policy.members_of("clinical-systems") == []
        assert (
            describe(policy, "clinical-systems") == "from Entra ID group Ward 7 Nurses: not "
            "read (2 groups are named 'Ward 7 Nurses'; name it by its object ID), so nobody is "
            "in it"
        )

    def test_an_unknown_group_is_nobody(self, graph: FakeGraph, clock: ManualClock) -> None:
        policy, _cache, _ = self.setup(graph, clock, group=str(uuid.uuid4()))
        assert policy.members_of("clinical-systems") == []
        assert "there is no group" in describe(policy, "clinical-systems")


class TestCardLine:
    """The approver card says where a directory group's approvers came from and how fresh."""

    def test_fresh_then_unreadable_then_stale_and_never_open(
        self, graph: FakeGraph, clock: ManualClock
    ) -> None:
        leads = graph.add_group()
        graph.groups[leads].add(
            graph.add_user("ben.h@wardtrust.onmicrosoft.com", "ben@ward.nhs.uk")
        )
        group = {"entra": {"group": leads, "target": "cloud"}, "stale_after": "1h"}
        text = ward_policy(
            {"ward7-leads": group},
            {"cloud": entra_target(graph.authority, graph.graph_url)},
            clinical=[{"group": "ward7-leads"}, {"group": "managers"}],
        )
        policy, cache = cached(text, clock)
        origin = f"ward7-leads per Entra ID group {leads}"
        # Drawing a card never waits on the directory: before the first read it says so.
        assert path_groups(policy, "clinical") == [
            f"{origin}: not read yet, so nobody in it can approve"
        ]
        assert graph.requests == []
        cache.refresh()  # 03:00
        assert path_groups(policy, "clinical") == [f"{origin}, read 03:00"]
        assert path_groups(policy, "admin") == []  # listed groups add nothing
        graph.unavailable = True
        clock.advance(timedelta(minutes=30))
        cache.refresh()
        assert path_groups(policy, "clinical") == [f"{origin}, read 03:00 (unreadable since 03:30)"]
        clock.advance(timedelta(minutes=31))
        assert path_groups(policy, "clinical") == [
            f"{origin}: unreadable since 03:30, last read 03:00, so nobody in it can approve"
        ]
        assert policy.members_of("ward7-leads") == []

    def test_a_process_that_does_not_read_the_directory_says_so(self) -> None:
        from app.policy import parse_policy as parse_manifest

        text = ward_policy(
            {"ward7-leads": {"ldap": {"group": LEADS, "target": "directory"}}},
            clinical=[{"group": "ward7-leads"}],
        )
        policy = parse_manifest(text, "test policy")
        assert path_groups(policy, "clinical") == [
            f"ward7-leads per LDAP group {LEADS}: not read here, so nobody in it can approve"
        ]


class TestWithoutACache:
    def test_a_directory_group_without_a_reader_has_nobody(self) -> None:
        from app.policy import parse_policy as parse_manifest

        text = ward_policy({"clinical-systems": {"ldap": {"group": NURSES, "target": "directory"}}})
        policy = parse_manifest(text, "test policy")
        assert policy.members_of("clinical-systems") == []
        assert not eligible(policy, AMIRA, ManualClock(NIGHT_SHIFT))


REASON = "fix stuck order set on ward 7"


def leavers(told: list[object]) -> list[Ended]:
    """What a tick of the refresh job ended (it also returns outages to tell)."""
    return [t for t in told if isinstance(t, Ended)]


class TestLeavers:
    """The refresh job ends the access of people the directory no longer puts in a group
    that makes them eligible, where that group says revoke_leavers; never on an outage."""

    @pytest.fixture
    def policy(self, ward7: slapd.Slapd, clock: ManualClock) -> Policy:
        return self.make(ward7, clock, revoke_leavers=True)

    @staticmethod
    def make(
        directory: slapd.Slapd, clock: ManualClock, eligible: list[str] | None = None, **more: Any
    ) -> Policy:
        group = {
            "ldap": {"group": NURSES, "target": "ward-directory"},
            "refresh_every": "5m",
            **more,
        }
        # bank-nurses is read with a password this process does not have: it never answers.
        locked = ldap_target(directory.url)
        locked["secrets"] = {"bind_password": "BANK_DIRECTORY_PASSWORD"}
        data = yaml.safe_load(
            ward_policy(
                {
                    "clinical-systems": group,
                    "bank-staff": ["amira@ward.nhs.uk"],
                    "bank-nurses": {"ldap": {"group": NURSES, "target": "bank-directory"}},
                },
                {"ward-directory": ldap_target(directory.url), "bank-directory": locked},
            )
        )
        if eligible is not None:
            data["targets"]["pharmacy-db"]["roles"]["read"]["eligible"] = eligible
        policy = parse_policy(yaml.safe_dump(data), "test policy")
        return policy.with_groups(DirectoryGroups(policy, clock, env=ENV))

    def active_grant(self, service: AccessService) -> int:
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)
        assert service.approve(req.id, BEN).state == RequestState.ACTIVE
        return req.id

    def test_removed_from_the_group_is_revoked_at_the_next_read(
        self, service: AccessService, clock: ManualClock, ward7: slapd.Slapd
    ) -> None:
        rid = self.active_grant(service)
        deps = job_deps(service)  # nobody is told
        assert leavers(groups_jobs.directory_groups(deps)) == []
        ward7.admin().modify(NURSES, {"member": [(MODIFY_DELETE, [slapd.person_dn("amira7")])]})
        clock.advance(timedelta(minutes=5))
        [ended] = leavers(groups_jobs.directory_groups(deps))
        assert ended == Ended(rid, "amira@ward.nhs.uk", ("clinical-systems",), False)
        view = service.get(rid)
        assert view.state == RequestState.ENDED
        assert view.end_reason == "the directory no longer has you in clinical-systems"
        with service.db.read() as session:
            [row] = session.scalars(sa.select(OutboxItem).where(OutboxItem.key.like("groups:%")))
        assert "is no longer in clinical-systems" in row.body
        assert "C0SEC" in row.body

    def test_a_waiting_request_of_a_leaver_is_cancelled(
        self, service: AccessService, clock: ManualClock, ward7: slapd.Slapd
    ) -> None:
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)
        ward7.admin().modify(
            slapd.person_dn("amira7"), {"userAccountControl": [(MODIFY_REPLACE, [514])]}
        )
        clock.advance(timedelta(minutes=5))
        [ended] = leavers(groups_jobs.directory_groups(job_deps(service)))
        assert ended.disabled
        assert service.get(req.id).state == RequestState.CANCELLED

    @pytest.mark.parametrize(
        "why",
        [
            "revoke_leavers is off",
            "eligible through another group",
            "another eligible group cannot be read",
        ],
    )
    def test_kept_when_the_policy_does_not_say_so_or_another_group_covers_them(
        self, db: Any, clock: ManualClock, ward7: slapd.Slapd, targets: Any, why: str
    ) -> None:
        if why == "revoke_leavers is off":
            policy = self.make(ward7, clock)
        elif why == "eligible through another group":
            policy = self.make(
                ward7, clock, ["clinical-systems", "bank-staff"], revoke_leavers=True
            )
        else:  # she may be in bank-nurses: never revoked on what cannot be read
            policy = self.make(
                ward7, clock, ["clinical-systems", "bank-nurses"], revoke_leavers=True
            )
        service = AccessService(CoreDeps(db, policy, targets, clock))
        rid = self.active_grant(service)
        ward7.admin().modify(NURSES, {"member": [(MODIFY_DELETE, [slapd.person_dn("amira7")])]})
        clock.advance(timedelta(minutes=5))
        assert leavers(groups_jobs.directory_groups(job_deps(service))) == []
        assert service.get(rid).state == RequestState.ACTIVE

    def test_an_outage_revokes_nobody(
        self, service: AccessService, clock: ManualClock, ward7: slapd.Slapd
    ) -> None:
        rid = self.active_grant(service)
        service.policy.group_lookup.env = {"DIRECTORY_PASSWORD": "rotated"}  # type: ignore[union-attr]
        for state in service.policy.group_lookup._states.values():  # type: ignore[union-attr]
            state.reader = None  # the next read binds with the rotated (wrong) password
        for _ in range(20):  # well past stale_after (2h): the group is nobody, and yet
            clock.advance(timedelta(minutes=10))
            assert leavers(groups_jobs.directory_groups(job_deps(service))) == []
        assert service.policy.members_of("clinical-systems") == []
        assert service.get(rid).state == RequestState.ACTIVE


class TestMetrics:
    def test_each_group_as_this_process_last_read_it(
        self, ward7: slapd.Slapd, clock: ManualClock, tmp_path: Path, sqlite_template: Path
    ) -> None:
        text = ward_policy(
            {"clinical-systems": {"ldap": {"group": NURSES, "target": "ward-directory"}}},
            {"ward-directory": ldap_target(ward7.url)},
        )
        policy = with_directory_groups(parse_policy(text, "test policy"), clock, kept={})
        policy.members_of("clinical-systems")
        [database] = list(sqlite_copy(tmp_path, sqlite_template))
        registry = CollectorRegistry()
        registry.register(WardKeyCollector(database, clock))
        text = generate_latest(registry).decode()
        labels = '{group="clinical-systems",kind="ldap"}'
        # The password is not in this test's environment: never read, so stale and nobody.
        assert f"wardkey_directory_group_up{labels} 0.0" in text
        assert f"wardkey_directory_group_stale{labels} 1.0" in text
        assert f"wardkey_directory_group_read_age_seconds{labels} -1.0" in text


class TestPolicyCheck:
    """`wardkey policy check` lists each directory group with where it is read from, and
    reads it once: how many people, or why not."""

    def write(self, tmp_path: Path, directory: slapd.Slapd, refresh: str) -> Path:
        group = {"ldap": {"group": NURSES, "target": "ward-directory"}, "refresh_every": refresh}
        path = tmp_path / "policy.yaml"
        path.write_text(
            ward_policy({"clinical-systems": group}, {"ward-directory": ldap_target(directory.url)})
        )
        return path

    def test_read_once_with_how_many_people(
        self,
        ward7: slapd.Slapd,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setenv("DIRECTORY_PASSWORD", slapd.WARDKEY_PASSWORD)
        assert main(["policy", "check", str(self.write(tmp_path, ward7, "6m"))]) == 0
        out = capsys.readouterr().out
        assert "  groups from the directory:\n" in out
        assert re.search(
            rf"\n    clinical-systems     from LDAP group {NURSES}: 2 people, read \d\d:\d\d\n", out
        ), out

    def test_why_it_could_not_be_read(
        self,
        ward7: slapd.Slapd,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.delenv("DIRECTORY_PASSWORD", raising=False)
        assert main(["policy", "check", str(self.write(tmp_path, ward7, "7m"))]) == 0
        out = capsys.readouterr().out
        assert (
            f"    clinical-systems     from LDAP group {NURSES}: not read (DIRECTORY_PASSWORD "
            "is not set), so nobody is in it\n"
        ) in out


class TestReload:
    def test_a_reload_during_an_outage_keeps_the_last_good_read(
        self, graph: FakeGraph, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("GRAPH_SECRET", SECRET)
        nurses = graph.add_group()
        graph.groups[nurses].add(
            graph.add_user("amira.k@ward.onmicrosoft.com", "amira@ward.nhs.uk")
        )
        cloud = entra_target(graph.authority, graph.graph_url)
        cloud["settings"]["max_attempts"] = 1  # an outage is an outage at once: no waiting here
        text = ward_policy(
            {"clinical-systems": {"entra": {"group": nurses, "target": "cloud"}}}, {"cloud": cloud}
        )
        kept: dict[Any, Any] = {}
        before = with_directory_groups(parse_policy(text, "test policy"), clock, kept=kept)
        assert before.members_of("clinical-systems") == ["amira@ward.nhs.uk"]
        reads = len(graph.requests)
        graph.unavailable = True
        clock.advance(timedelta(minutes=1))
        after = with_directory_groups(parse_policy(text, "test policy"), clock, kept=kept)
        # Reloaded within refresh_every: not read again, and the read of 03:00 still answers.
        assert after.members_of("clinical-systems") == ["amira@ward.nhs.uk"]
        assert len(graph.requests) == reads
        clock.advance(timedelta(minutes=5))
        assert after.members_of("clinical-systems") == ["amira@ward.nhs.uk"]  # within stale_after
        assert "unreadable since 03:06" in describe(after, "clinical-systems")


class TestPeopleInSlack:
    """`policy check --slack` looks up the people a directory group has now, too: a nurse
    whose directory e-mail Slack does not know cannot ask or approve."""

    def test_directory_members_are_looked_up_in_slack(
        self,
        ward7: slapd.Slapd,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        fake = FakeSlack().start()
        try:
            for user in WARD_USERS:
                fake.add_user(user)
            fake.add_user(SlackUser("U0GITA2ND", None, "Gita Rao (second account)"))
            monkeypatch.setenv("SLACK_BOT_TOKEN", fake.token)
            monkeypatch.setenv("SLACK_API_URL", fake.api_url)
            monkeypatch.setenv("DIRECTORY_PASSWORD", slapd.WARDKEY_PASSWORD)
            for name in ("SLACK_TEAM_IDS", "SLACK_ENTERPRISE_ID"):
                monkeypatch.delenv(name, raising=False)
            # The kiosk account in ward 7's group is given the address of someone who left.
            admin = ward7.admin()
            admin.modify(
                slapd.person_dn("nomail7"), {"mail": [(MODIFY_REPLACE, ["gone@ward.nhs.uk"])]}
            )
            group = {"ldap": {"group": NURSES, "target": "ward-directory"}, "refresh_every": "8m"}
            path = tmp_path / "policy.yaml"
            path.write_text(
                ward_policy({"clinical-systems": group}, {"ward-directory": ldap_target(ward7.url)})
            )
            assert main(["policy", "check", str(path), "--slack"]) == 1
            err = capsys.readouterr().err
            assert (
                "  groups.clinical-systems: gone@ward.nhs.uk is deactivated in Slack (Left Trust)"
                in err
            ), err
            looked_up = {c.args["email"] for c in fake.calls_to("users.lookupByEmail")}
            assert {"amira@ward.nhs.uk", "ben@ward.nhs.uk", "gone@ward.nhs.uk"} <= looked_up
        finally:
            ward7.admin().modify(slapd.person_dn("nomail7"), {"mail": [(MODIFY_REPLACE, [])]})
            fake.stop()
