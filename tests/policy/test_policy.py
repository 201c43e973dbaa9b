"""The policy manifest: validation with exact locations, and the pure rules read from it."""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from app.cli import main
from app.policy import Person, Policy, PolicyError
from app.policy.durations import DurationError, format_duration, parse_duration
from app.policy.rota import on_call_at
from app.policy.rules import (
    PolicyRefusal,
    approvers_at,
    duration_cap,
    plan_request,
    requestable,
)
from app.policy_targets import parse_policy
from tests.conftest import AMIRA, DEV, GITA, GITA_2ND, HERE, VAL

ROOT = HERE.parent
EXAMPLE = ROOT / "manifests" / "policy.example.yaml"
WARD = HERE / "data" / "ward_policy.yaml"


def ward() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(WARD.read_text())
    return copy.deepcopy(data)


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(yaml.safe_dump(data, sort_keys=False))
    return [f"{i.where}: {i.message}" for i in caught.value.issues]


class TestDurations:
    @pytest.mark.parametrize(
        ("text", "minutes"), [("15m", 15), ("2h", 120), ("1h30m", 90), ("1d", 1440), (" 2H ", 120)]
    )
    def test_reads_what_people_write(self, text: str, minutes: int) -> None:
        assert parse_duration(text) == timedelta(minutes=minutes)

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "0m",
            "90",
            "1.5h",
            "m",
            "30m1h",
            "-5m",
            "1h 30",
            "367d",
            "9999999999d",
            "9" * 30 + "m",
        ],
    )
    def test_refuses_anything_else(self, text: str) -> None:
        with pytest.raises(DurationError):
            parse_duration(text)

    @given(st.integers(min_value=1, max_value=60 * 24 * 366))  # up to the longest allowed
    def test_format_and_parse_are_inverse(self, minutes: int) -> None:
        value = timedelta(minutes=minutes)
        assert parse_duration(format_duration(value)) == value


class TestExampleManifest:
    def test_the_example_policy_passes_policy_check(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["policy", "check", str(EXAMPLE)]) == 0
        out = capsys.readouterr().out
        assert out.startswith("OK\n")
        assert "pharmacy-db" in out and "engineering" in out

    def test_a_broken_manifest_names_each_field(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        text = EXAMPLE.read_text().replace(
            "path: engineering\n        entitlement: pharmacy_owner",
            "path: enginering\n        entitlement: pharmacy_owner",
        )
        broken = tmp_path / "policy.yaml"
        broken.write_text(text)
        assert main(["policy", "check", str(broken)]) == 1
        err = capsys.readouterr().err
        assert "targets.pharmacy-db.roles.owner.path: unknown path 'enginering'" in err
        line = next(n for n, t in enumerate(text.splitlines(), 1) if "path: enginering" in t)
        assert f"(line {line})" in err


class TestValidation:
    def test_shape_errors_carry_their_location(self) -> None:
        data = ward()
        data["timezone"] = "Europe/Lndon"
        data["paths"]["admin"]["max_duration"] = "90x"
        data["targets"]["pharmacy-db"]["secrets"]["password"] = "hunter2!"
        data["targets"]["pharmacy-db"]["roles"]["read"]["colour"] = "red"
        data["groups"]["managers"].append("not a person")
        found = problems(data)
        assert any(p.startswith("timezone: 'Europe/Lndon' is not a known time zone") for p in found)
        assert any(p.startswith("paths.admin.max_duration: '90x' is not a duration") for p in found)
        assert any(
            p.startswith(
                "targets.pharmacy-db.secrets.password: expected the name of an environment"
            )
            for p in found
        )
        assert (
            "targets.pharmacy-db.roles.read.colour: unknown field 'colour'; a role has path, "
            "entitlement, eligible, max_duration, break_glass, record_sessions, description"
            in found
        )
        assert any(p.startswith("groups.managers.2: 'not a person'") for p in found)

    def test_every_semantic_problem_at_once(self) -> None:
        data = ward()
        data["targets"]["pharmacy-db"]["roles"]["owner"]["path"] = "enginering"
        data["targets"]["pharmacy-db"]["roles"]["read"]["eligible"].append("nurses")
        data["targets"]["pharmacy-db"]["roles"]["read"]["max_duration"] = "3h"
        data["targets"]["pharmacy-db"]["settings"]["password"] = "hunter2"
        data["paths"]["admin"]["approvers"] = [{"rota": "nobody"}]
        data["paths"]["engineering"]["approvals"] = 4
        found = problems(data)
        assert (
            "targets.pharmacy-db.roles.owner.path: unknown path 'enginering' (did you mean "
            "'engineering'?)" in found
        )
        assert (
            "targets.pharmacy-db.roles.read.eligible.1: unknown group 'nurses'; the groups are "
            "clinical-systems, infra-leads, infrastructure, managers, wardkey-admins" in found
        )
        assert (
            "targets.pharmacy-db.roles.read.max_duration: is above the clinical path's cap of 2h"
            in found
        )
        assert any(
            p.startswith("targets.pharmacy-db.settings.password: looks like an inline secret")
            for p in found
        )
        assert (
            "paths.admin.approvers.0.rota: unknown rota 'nobody'; the rotas are clinical-oncall"
            in found
        )
        assert any(
            p.startswith("paths.engineering.approvals: needs 4 approvals but at most 3")
            for p in found
        )

    def test_approval_that_can_never_be_satisfied_once_requester_is_excluded(self) -> None:
        data = ward()
        # Two infra leads, one of whom (Erin) is also an eligible requester: only 1 other left.
        data["groups"]["infra-leads"] = ["erin@ward.nhs.uk", "farid@ward.nhs.uk"]
        assert (
            "paths.engineering.approvals: needs 2 approvals but at most 1 distinct approver "
            "can be available once the requester is excluded" in problems(data)
        )

    def test_rota_problems(self) -> None:
        data = ward()
        rota = data["oncall"]["clinical-oncall"]
        rota["members"].append("ben@ward.nhs.uk")
        rota["escalation"] = "bosses"
        rota["overrides"] = [
            {
                "start": "2026-12-24 09:00",
                "end": "2026-12-27 09:00",
                "member": "hana@ward.nhs.uk",
                "replaces": "dev@ward.nhs.uk",
            },
        ]
        found = problems(data)
        assert "oncall.clinical-oncall.members: lists the same member twice" in found
        assert any(
            p.startswith("oncall.clinical-oncall.escalation: unknown group 'bosses'; the groups")
            for p in found
        )
        assert (
            "oncall.clinical-oncall.overrides.0.replaces: 'dev@ward.nhs.uk' is not a member of "
            "this rota" in found
        )

    def test_override_that_ends_before_it_starts(self) -> None:
        data = ward()
        data["oncall"]["clinical-oncall"]["overrides"] = [
            {"start": "2026-12-30 09:00", "end": "2026-12-29 09:00", "member": "gita@ward.nhs.uk"},
        ]
        assert problems(data) == ["oncall.clinical-oncall.overrides.0: end must be after start"]

    def test_overlapping_overrides_and_empty_rota(self) -> None:
        data = ward()
        data["oncall"]["clinical-oncall"]["overrides"] = [
            {"start": "2026-12-24 09:00", "end": "2026-12-27 09:00", "member": "hana@ward.nhs.uk"},
            {"start": "2026-12-26 09:00", "end": "2026-12-28 09:00", "member": "gita@ward.nhs.uk"},
        ]
        data["oncall"]["empty"] = {"members": [], "rotation": "daily", "starts": "2026-01-01"}
        found = problems(data)
        assert (
            "oncall.clinical-oncall.overrides.1: overlaps override 0 for the same person" in found
        )
        assert "oncall.empty.members: rota has no members" in found

    def test_break_glass_shape(self) -> None:
        data = ward()
        del data["paths"]["breakglass"]["reviewers"]
        data["paths"]["breakglass"]["approvers"] = [{"group": "managers"}]
        data["targets"]["directory"]["roles"]["helpdesk"]["path"] = "breakglass"
        found = problems(data)
        assert "paths.breakglass.reviewers: break-glass needs reviewers" in found
        assert (
            "paths.breakglass.approvers: break-glass is never approved first; use reviewers"
            in found
        )
        assert any(
            p.startswith("targets.directory.roles.helpdesk.path: break-glass is a route")
            for p in found
        )

    def test_missing_paths_and_duplicate_keys(self) -> None:
        text = WARD.read_text().replace("  admin:\n    risk: medium", "  admin2:\n    risk: medium")
        text = text.replace("groups:\n", "groups:\n  managers: [U0DUPE]\n", 1)
        with pytest.raises(PolicyError) as caught:
            parse_policy(text)
        found = [str(i) for i in caught.value.issues]
        assert any(f.startswith("groups.managers: defined twice (line") for f in found)
        assert "paths: missing the 'admin' path" in "\n".join(found)

    def test_yaml_syntax_error_gives_the_line(self) -> None:
        with pytest.raises(PolicyError) as caught:
            parse_policy("timezone: Europe/London\ngroups: [unclosed\n")
        assert [str(i) for i in caught.value.issues] == [
            "line 2: the '[' opened here is not closed: add ']' at its end, with commas between "
            "the items"
        ]


def mistakes(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    return [str(i) for i in caught.value.issues]


def line_of(text: str, fragment: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if fragment in line)


class TestWordingForPeople:
    """`policy check` in WardKey's words: the nearest name for a typo, indentation explained,
    never pydantic's "Field required" or "Input should be"."""

    def test_a_typo_in_a_field_name_suggests_the_field_and_is_said_once(self) -> None:
        text = WARD.read_text().replace("    max_duration: 2h\n", "    max_duraton: 2h\n", 1)
        assert mistakes(text) == [
            "paths.clinical.max_duraton: unknown field 'max_duraton' (did you mean "
            f"'max_duration'?) (line {line_of(text, 'max_duraton')})"
        ]

    def test_a_typo_in_a_section_or_value_suggests_the_nearest(self) -> None:
        text = WARD.read_text().replace("groups:", "grups:", 1).replace("daily", "dayly", 1)
        found = mistakes(text)
        assert (
            f"grups: unknown field 'grups' (did you mean 'groups'?) (line {line_of(text, 'grups')})"
            in found
        )
        assert (
            "oncall.clinical-oncall.rotation: must be one of daily, weekly; found text 'dayly' "
            f"(did you mean 'daily'?) (line {line_of(text, 'dayly')})" in found
        )
        assert not any("Field required" in f or "Input should" in f for f in found)

    def test_unknown_target_and_role_of_a_service_account(self) -> None:
        data = ward()
        data["identities"] = {
            "svc-lab": {
                "owner": "dev@ward.nhs.uk",
                "purpose": "lab feed",
                "target": "pharmacy-dbb",
                "role": "read",
                "account": "svc_lab",
                "max_duration": "1h",
            },
            "svc-two": {
                "owner": "dev@ward.nhs.uk",
                "purpose": "lab feed",
                "target": "pharmacy-db",
                "role": "onwer",
                "account": "svc_two",
                "max_duration": "1h",
            },
        }
        found = problems(data)
        assert (
            "identities.svc-lab.target: unknown target 'pharmacy-dbb' (did you mean "
            "'pharmacy-db'?)" in found
        )
        assert (
            "identities.svc-two.role: pharmacy-db has no role 'onwer' (did you mean 'owner'?)"
            in found
        )

    def test_a_missing_field_is_named_with_what_needs_it(self) -> None:
        data = ward()
        del data["paths"]["admin"]["risk"]
        del data["channels"]
        found = problems(data)
        assert "paths.admin.risk: missing: an access path needs 'risk'" in found
        assert "channels: missing: the policy (top level) needs 'channels'" in found

    def test_a_key_indented_too_little_is_explained_once(self) -> None:
        text = WARD.read_text().replace("    roles:\n", "  roles:\n", 1)
        line = line_of(text, "  roles:")
        target = line_of(text, "pharmacy-db:")
        assert mistakes(text) == [
            f"targets.pharmacy-db.roles: missing: a target needs 'roles'; 'roles' is on line "
            f"{line}, one level further out: indent it under 'pharmacy-db' (line {target})"
        ]

    def test_a_field_at_the_wrong_level_says_where_it_belongs(self) -> None:
        text = WARD.read_text().replace("    roles:\n", "    break_glass: true\n    roles:\n", 1)
        assert mistakes(text) == [
            "targets.pharmacy-db.break_glass: unknown field 'break_glass' for a target; it "
            "belongs to a role (roles.<name>.break_glass): is it indented too little? "
            f"(line {line_of(text, 'break_glass: true')})"
        ]

    @pytest.mark.parametrize(
        ("text", "said"),
        [
            (
                "groups:\n\tnurses: [a@b.cc]\n",
                "line 2: starts with a tab: YAML indents with spaces",
            ),
            (
                "groups:\n  nurses:\n    - a@b.cc\n   managers: [x@b.cc]\n",
                "line 4: indented 3 spaces, which lines up with nothing above it: the block it "
                "seems to continue (line 2) is indented 2 spaces",
            ),
            (
                "paths:\n  admin:\n    risk high\n    approvals: 2\n",
                "line 3: 'risk high' has no ':' after its key; write it as 'key: value'",
            ),
            (
                "organisation: St Elsewhere: the trust\n",
                "line 1: has ': ' inside a value; put the whole value in quotes",
            ),
            (
                "paths:\n  admin:\n    risk: high\n  - x\n",
                "line 4: a list item ('- …') where a 'key: value' line was expected",
            ),
            (
                'organisation: "St Elsewhere\ntimezone: UTC\n',
                "line 1: a quote opened here is never",
            ),
            ("", "(top level): the manifest is empty"),
        ],
    )
    def test_yaml_mistakes_are_explained_in_words_at_their_line(self, text: str, said: str) -> None:
        found = mistakes(text)
        assert len(found) == 1 and found[0].startswith(said), found

    def test_a_list_item_indented_too_far_is_pointed_out(self) -> None:
        text = WARD.read_text().replace(
            "  managers:",
            "  managers:\n    - gita@ward.nhs.uk\n      - hana@ward.nhs.uk\n  old:",
            1,
        )
        assert any("a '- ' item indented deeper than the one above it" in f for f in mistakes(text))

    @pytest.mark.parametrize(
        ("written", "said"),
        [
            (
                "2 days",
                "'2 days' is not a duration; write it like 15m, 2h, 1h30m or 7d "
                "(did you mean '2d'?)",
            ),
            ("2 weeks", "(did you mean '14d'?)"),
            ("1.5h", "(did you mean '1h30m'?)"),
            ("90", "90 has no unit: write 90m, 90h or 90d"),
        ],
    )
    def test_durations_hint_what_was_meant(self, written: str, said: str) -> None:
        data = ward()
        data["paths"]["engineering"]["max_duration"] = (
            int(written) if written.isdigit() else written
        )
        found = problems(data)
        assert any(f.startswith("paths.engineering.max_duration: ") and said in f for f in found), (
            found
        )

    def test_days_are_accepted_where_days_make_sense(self) -> None:
        data = ward()
        data["paths"]["breakglass"]["review_within"] = "2d"
        data["paths"]["engineering"]["max_total_duration"] = "1d"
        policy = parse_policy(yaml.safe_dump(data, sort_keys=False))
        assert policy.paths["breakglass"].review_within == timedelta(days=2)
        assert policy.paths["engineering"].max_total_duration == timedelta(days=1)

    def test_an_unquoted_time_is_refused_not_read_as_minutes(self) -> None:
        text = WARD.read_text().replace("rotation: daily", "rotation: daily\n    handoff: 9:00", 1)
        text = text.replace('    handoff: "08:00"\n', "", 1).replace(
            "    handoff: '08:00'\n", "", 1
        )
        found = [f for f in mistakes(text) if "handoff" in f]
        assert found and "write the time in quotes, like '09:00'" in found[0], found

    def test_policy_check_prints_the_same_words(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        broken = tmp_path / "policy.yaml"
        broken.write_text(EXAMPLE.read_text().replace("risk: high", "risk: hgh", 1))
        assert main(["policy", "check", str(broken)]) == 1
        err = capsys.readouterr().err
        assert (
            "must be one of low, medium, high, critical; found text 'hgh' (did you mean 'high'?)"
            in err
        )
        assert "Input should" not in err


def zone_policy(rotation: str, handoff: str, starts: str, **extra: Any) -> Policy:
    data = ward()
    data["oncall"]["clinical-oncall"].update(
        {"rotation": rotation, "handoff": handoff, "starts": starts, **extra}
    )
    data["oncall"]["clinical-oncall"]["members"] = ["ben@ward.nhs.uk", "chloe@ward.nhs.uk"]
    return parse_policy(yaml.safe_dump(data, sort_keys=False))


def london(*args: int) -> datetime:
    from zoneinfo import ZoneInfo

    return datetime(*args, tzinfo=ZoneInfo("Europe/London"))  # type: ignore[misc]


class TestRota:
    def test_daily_hand_off_at_08_00_local(self, policy: Policy) -> None:
        rota = policy.oncall["clinical-oncall"]
        assert on_call_at(rota, london(2026, 11, 30, 7, 59), policy.zone) == ["ben@ward.nhs.uk"]
        assert on_call_at(rota, london(2026, 11, 30, 8, 0), policy.zone) == ["chloe@ward.nhs.uk"]

    def test_weekly_hand_off_stays_at_09_00_local_across_the_clock_change(self) -> None:
        # BST starts on Sunday 29 March 2026; Monday's hand-off is still 09:00 on the wall.
        policy = zone_policy("weekly", "09:00", "2026-03-16", handoff_day="monday")
        rota = policy.oncall["clinical-oncall"]
        before = london(2026, 3, 30, 8, 59)
        after = london(2026, 3, 30, 9, 0)
        assert after.astimezone(UTC).hour == 8  # 09:00 BST is 08:00 UTC
        assert on_call_at(rota, before, policy.zone) == ["chloe@ward.nhs.uk"]
        assert on_call_at(rota, after, policy.zone) == ["ben@ward.nhs.uk"]

    def test_daily_hand_off_in_the_repeated_autumn_hour(self) -> None:
        # 01:30 happens twice on 25 October 2026; the shift changes at the first one only.
        policy = zone_policy("daily", "01:30", "2026-10-01")
        rota = policy.oncall["clinical-oncall"]
        first = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # 01:30 BST
        second = datetime(2026, 10, 25, 1, 30, tzinfo=UTC)  # 01:30 GMT, an hour later
        assert on_call_at(rota, first - timedelta(minutes=1), policy.zone) == ["chloe@ward.nhs.uk"]
        assert on_call_at(rota, first, policy.zone) == ["ben@ward.nhs.uk"]
        assert on_call_at(rota, second, policy.zone) == ["ben@ward.nhs.uk"]

    def test_override_covers_leave_then_hands_back(self) -> None:
        policy = zone_policy(
            "daily",
            "08:00",
            "2026-11-01",
            overrides=[
                {
                    "start": "2026-11-30 00:00",
                    "end": "2026-11-30 12:00",
                    "member": "hana@ward.nhs.uk",
                    "replaces": "ben@ward.nhs.uk",
                }
            ],
        )
        rota = policy.oncall["clinical-oncall"]
        assert on_call_at(rota, london(2026, 11, 30, 3, 0), policy.zone) == ["hana@ward.nhs.uk"]
        # After 08:00 Chloe is on call anyway: the override only replaces Ben.
        assert on_call_at(rota, london(2026, 11, 30, 9, 0), policy.zone) == ["chloe@ward.nhs.uk"]

    @given(
        st.datetimes(
            min_value=datetime(2026, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC)
        )
    )
    def test_exactly_one_on_call_at_any_instant(self, at: datetime) -> None:
        policy = zone_policy("daily", "08:00", "2026-11-01")
        assert len(on_call_at(policy.oncall["clinical-oncall"], at, policy.zone)) == 1


class TestRules:
    NOW = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)

    def test_approvers_now_are_the_on_call_plus_managers(self, policy: Policy) -> None:
        assert approvers_at(policy, "clinical", self.NOW) == [
            "ben@ward.nhs.uk",
            "gita@ward.nhs.uk",
            "hana@ward.nhs.uk",
        ]

    def test_an_unknown_path_has_no_approvers(self, policy: Policy) -> None:
        assert approvers_at(policy, "nope", self.NOW) == []

    def test_cap_is_the_smallest_limit(self, policy: Policy) -> None:
        assert duration_cap(
            policy, AMIRA, "pharmacy-db", "read", "clinical", self.NOW
        ) == timedelta(hours=2)
        assert duration_cap(
            policy, DEV, "pharmacy-db", "owner", "engineering", self.NOW
        ) == timedelta(hours=2)
        assert duration_cap(
            policy, DEV, "pharmacy-db", "owner", "engineering", self.NOW, "svc-lab"
        ) == timedelta(hours=1)
        assert duration_cap(policy, VAL, "pharmacy-db", "read", "clinical", self.NOW) == timedelta(
            hours=2
        )
        late = datetime(2026, 11, 30, 23, 30, tzinfo=UTC)
        assert duration_cap(policy, VAL, "pharmacy-db", "read", "clinical", late) == timedelta(
            minutes=30
        )
        assert duration_cap(
            policy, AMIRA, "pharmacy-db", "read", "breakglass", self.NOW
        ) == timedelta(hours=1)

    def test_what_amira_may_request(self, policy: Policy) -> None:
        plans = requestable(policy, AMIRA, self.NOW)
        assert [(p.target, p.role, p.path) for p in plans] == [
            ("directory", "helpdesk", "admin"),
            ("pharmacy-db", "read", "clinical"),
        ]

    def test_account_mapping_needs_an_e_mail(self, policy: Policy) -> None:
        with pytest.raises(PolicyRefusal, match="e-mail"):
            plan_request(policy, Person(slack_user_id="U0AMIRA"), "pharmacy-db", "read", self.NOW)

    def test_aliases_are_one_person(self, policy: Policy) -> None:
        from app.policy import person_key, same_person

        assert same_person(policy, GITA, GITA_2ND)
        assert person_key(policy, GITA_2ND) == "gita@ward.nhs.uk"
        assert not same_person(policy, GITA, AMIRA)

    def test_contract_end_is_end_of_day_local(self, policy: Policy) -> None:
        from app.policy.rules import contract_end_instant

        vendor = policy.vendors["medisoft"]
        assert vendor.contract_end == date(2026, 11, 30)
        assert contract_end_instant(policy, vendor) == datetime(2026, 12, 1, 0, 0, tzinfo=UTC)


ENTRA = {
    "tenant_id": "00000000-0000-0000-0000-000000000000",
    "client_id": "11111111-1111-1111-1111-111111111111",
}
DIRECTORY = {"bind_dn": "cn=wardkey,ou=services,dc=ward", "user_base": "ou=people,dc=ward"}


def with_target(kind: str, settings: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The ward's policy with one more target, `epr`, of this kind and these settings."""
    data = ward()
    data["targets"]["epr"] = {
        "kind": kind,
        "settings": settings,
        "roles": {"admin": {"path": "admin", "entitlement": "A", "eligible": ["clinical-systems"]}},
        **extra,
    }
    return data


def check_output(
    data: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """`wardkey policy check` on this policy: exit status, stdout and stderr."""
    file = tmp_path / "policy.yaml"
    file.write_text(yaml.safe_dump(data, sort_keys=False))
    status = main(["policy", "check", str(file)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


class TestTargetConnections:
    """A target's password never sits in a URL, and a live target is never reached in clear or
    without checking its certificate; a test system may say `insecure: true`, and is warned."""

    @pytest.mark.parametrize(
        ("kind", "settings", "field"),
        [
            ("ldap", {**DIRECTORY, "url": "ldaps://admin:s3cret@dc1.ward.nhs.uk"}, "url"),
            ("webhook", {"url": "https://epr:s3cret@epr.ward.nhs.uk/wardkey"}, "url"),
            ("webhook", {"url": "https://epr.ward.nhs.uk/wardkey?token=s3cret"}, "url"),
            (
                "postgres",
                {"host": "postgresql://wardkey:s3cret@db.ward.nhs.uk/pharmacy", "dbname": "p"},
                "host",
            ),
            ("postgres", {"host": "db.ward.nhs.uk password=s3cret", "dbname": "p"}, "host"),
            (
                "postgres",
                {"host": "db.ward.nhs.uk", "dbname": "dbname=p password=s3cret"},
                "dbname",
            ),
            (
                "entra",
                {**ENTRA, "graph_url": "https://app:s3cret@graph.microsoft.com/v1.0"},
                "graph_url",
            ),
        ],
        ids=["ldap", "webhook", "webhook-query", "postgres-uri", "postgres-dsn", "dbname", "entra"],
    )
    def test_a_password_in_a_url_is_refused_at_its_field_even_on_a_test_system(
        self, kind: str, settings: dict[str, Any], field: str
    ) -> None:
        found = problems(with_target(kind, settings, insecure=True))
        at_field = [p for p in found if p.startswith(f"targets.epr.settings.{field}: ")]
        assert at_field, found
        assert "put the password in secrets:, by environment variable name" in at_field[0]
        assert not any("s3cret" in p for p in found)  # the refusal does not repeat it

    def test_plain_ldap_is_refused_with_what_to_do(self) -> None:
        data = ward()
        data["targets"]["directory"]["settings"]["url"] = "ldap://dc1.ward.nhs.uk"
        assert problems(data) == [
            "targets.directory.settings.url: ldap:// sends the bind password in clear; use "
            "ldaps:// or start_tls: true, or set insecure: true for a test system"
        ]
        data["targets"]["directory"]["settings"]["start_tls"] = True
        parse_policy(yaml.safe_dump(data))  # StartTLS encrypts it: accepted

    @pytest.mark.parametrize(
        ("kind", "settings", "field"),
        [
            (
                "ldap",
                {**DIRECTORY, "url": "ldaps://dc1.ward.nhs.uk", "verify_tls": False},
                "verify_tls",
            ),
            (
                "postgres",
                {"host": "db.ward.nhs.uk", "dbname": "p", "sslmode": "disable"},
                "sslmode",
            ),
            ("postgres", {"host": "db.ward.nhs.uk", "dbname": "p", "sslmode": "allow"}, "sslmode"),
            ("postgres", {"host": "db.ward.nhs.uk", "dbname": "p", "sslmode": "prefer"}, "sslmode"),
            (
                "postgres",
                {"host": "db.ward.nhs.uk", "dbname": "p", "sslmode": "require"},
                "sslmode",
            ),
            ("webhook", {"url": "http://epr.ward.nhs.uk/wardkey"}, "url"),
            ("webhook", {"url": "http://127.0.0.1:8080/wardkey"}, "url"),
            (
                "webhook",
                {"url": "https://epr.ward.nhs.uk/wardkey", "verify_tls": False},
                "verify_tls",
            ),
            ("entra", {**ENTRA, "authority": "http://login.microsoftonline.com"}, "authority"),
            ("entra", {**ENTRA, "graph_url": "http://graph.microsoft.com/v1.0"}, "graph_url"),
        ],
    )
    def test_plaintext_or_unverified_transport_is_an_error_at_its_field(
        self, kind: str, settings: dict[str, Any], field: str
    ) -> None:
        found = problems(with_target(kind, settings))
        assert len(found) == 1, found
        assert found[0].startswith(f"targets.epr.settings.{field}: ")
        assert found[0].endswith(", or set insecure: true for a test system")

    def test_postgres_over_a_local_socket_needs_no_tls(self) -> None:
        # libpq never uses TLS on a Unix-domain socket: nothing crosses the network.
        settings = {"host": "/var/run/postgresql", "dbname": "p", "sslmode": "disable"}
        parse_policy(yaml.safe_dump(with_target("postgres", settings)))

    def test_a_test_system_marked_insecure_passes_with_a_warning(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        data = with_target("webhook", {"url": "http://127.0.0.1:8080/wardkey"}, insecure=True)
        status, out, err = check_output(data, tmp_path, capsys)
        assert status == 0
        assert out.startswith("OK\n")
        assert (
            "warning: targets.epr.settings.url: http:// lets anyone on the network read the "
            "requests and forge the answers (accepted because insecure: true; a test system "
            "only)"
        ) in err

    def test_a_needless_insecure_flag_is_warned_about(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        data = with_target("webhook", {"url": "https://epr.ward.nhs.uk/wardkey"}, insecure=True)
        status, _, err = check_output(data, tmp_path, capsys)
        assert status == 0
        assert "warning: targets.epr.insecure: nothing here needs it; remove it" in err

    def test_the_example_policy_has_no_warnings(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["policy", "check", str(EXAMPLE)]) == 0
        assert "warning" not in capsys.readouterr().err


class TestTargetConnectionsAtStartUp:
    """`serve` and `worker` build the adapters: the same rules hold there, even for a policy
    that never went through `policy check`."""

    SECRETS: dict[str, str] = {  # noqa: RUF012
        "PHARMACY_DB_PASSWORD": "p",
        "DIRECTORY_PASSWORD": "d",
        "EPR_KEY": "k",
    }

    def test_start_up_refuses_a_policy_with_a_password_in_a_url(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from app.config import Settings
        from app.runtime import load_runtime
        from app.startup import StartupError

        data = with_target(
            "webhook",
            {"url": "https://epr:s3cret@epr.ward.nhs.uk/wardkey"},
            secrets={"signing_key": "EPR_KEY"},
        )
        file = tmp_path / "policy.yaml"
        file.write_text(yaml.safe_dump(data))
        for name, value in self.SECRETS.items():
            monkeypatch.setenv(name, value)
        settings = Settings(
            slack_bot_token="xoxb-1",
            wardkey_policy=str(file),
            database_url=f"sqlite:///{tmp_path / 'wardkey.db'}",
        )
        with pytest.raises(StartupError) as refused:
            load_runtime(settings)
        assert "targets.epr.settings.url: " in str(refused.value)
        assert "put the password in secrets:" in str(refused.value)
        assert "s3cret" not in str(refused.value)

    def test_adapters_are_not_built_for_an_unchecked_insecure_target(self) -> None:
        from app.adapters.registry import AdapterConfigError, build_adapters

        data = with_target(
            "webhook", {"url": "http://epr.ward.nhs.uk/wardkey"}, secrets={"signing_key": "EPR_KEY"}
        )
        unchecked = Policy.model_validate(data)  # as a caller that skips policy check would
        with pytest.raises(AdapterConfigError, match=r"^targets\.epr\.settings\.url: http://"):
            build_adapters(unchecked, self.SECRETS)

    def test_start_up_logs_each_insecure_connection_it_accepts(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        from app.adapters.registry import build_adapters

        data = with_target(
            "webhook",
            {"url": "http://127.0.0.1:8080/wardkey", "verify_tls": False},
            secrets={"signing_key": "EPR_KEY"},
            insecure=True,
        )
        policy = parse_policy(yaml.safe_dump(data))
        with caplog.at_level("WARNING", logger="app.adapters.registry"):
            adapters = build_adapters(policy, self.SECRETS)
        assert "epr" in adapters
        lines = [r.getMessage() for r in caplog.records if "target_insecure" in r.getMessage()]
        assert lines == [
            "event=target_insecure target=epr field=settings.url risk=plaintext",
            "event=target_insecure target=epr field=settings.verify_tls risk=unverified",
        ]

    def test_start_up_logs_the_insecure_flags_of_rota_sources_and_the_identity_provider(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Not only targets: a rota read over http:// and a sign-in provider reached over
        http:// are logged when serve or worker starts, as policy check warns of them."""
        from app.config import Settings
        from app.runtime import load_runtime

        data = ward()
        data["oncall"]["clinical-oncall"] = {
            "source": {
                "roster": {"url": "http://roster.test/ward7.csv", "format": "csv", "insecure": True}
            },
            "escalation": "managers",
        }
        data["identity_provider"] = {
            "issuer": "http://idp.test",
            "client_id": "wardkey",
            "client_secret_env": "WARDKEY_TEST_IDP_SECRET",
            "insecure": True,
        }
        file = tmp_path / "policy.yaml"
        file.write_text(yaml.safe_dump(data))
        for name, value in {**self.SECRETS, "WARDKEY_TEST_IDP_SECRET": "s"}.items():
            monkeypatch.setenv(name, value)
        settings = Settings(
            slack_bot_token="xoxb-1",
            wardkey_policy=str(file),
            wardkey_public_url="https://wardkey.test",
            database_url=f"sqlite:///{tmp_path / 'wardkey.db'}",
        )
        with caplog.at_level("WARNING", logger="app.runtime"):
            load_runtime(settings).service.db.dispose()
        lines = [r.getMessage() for r in caplog.records if "policy_warning" in r.getMessage()]
        assert any("oncall.clinical-oncall.source.roster.insecure" in line for line in lines)
        assert any(
            "identity_provider.insecure" in line and "plain http://" in line for line in lines
        )
        assert not [line for line in lines if "targets." in line]  # logged by the adapters


class TestCredentialsInErrorText:
    """If a password slips into a target's settings anyway, adapter error text (logged,
    audited and shown in Slack) carries it as ***."""

    @pytest.mark.parametrize(
        ("said", "shown"),
        [
            (  # libpq, given a URI as the host
                "cannot connect to postgresql://wardkey:s3cret@db.ward.nhs.uk/pharmacy:5432: "
                "failed to resolve host 'postgresql://wardkey:s3cret@db.ward.nhs.uk/pharmacy'",
                "cannot connect to postgresql://***@db.ward.nhs.uk/pharmacy:5432: "
                "failed to resolve host 'postgresql://***@db.ward.nhs.uk/pharmacy'",
            ),
            (  # libpq, given key=value pairs as the host
                "failed to resolve host '127.0.0.1 password=s3cret port=1'",
                "failed to resolve host '127.0.0.1 password=*** port=1'",
            ),
            (  # httpx, a webhook URL with user information
                "check: cannot reach http://epr:s3cret@127.0.0.1:1/wardkey/check (refused)",
                "check: cannot reach http://***@127.0.0.1:1/wardkey/check (refused)",
            ),
            (
                "grant: cannot reach https://epr.ward.nhs.uk/hook?token=s3cret&x=1/grant",
                "grant: cannot reach https://epr.ward.nhs.uk/hook?token=***&x=1/grant",
            ),
            (  # a password containing @ is cut at the last @ before the host
                "ldaps://cn=admin:p@ss@dc1.ward.nhs.uk: refused",
                "ldaps://***@dc1.ward.nhs.uk: refused",
            ),
            ("client_secret='s3 cret' rejected", "client_secret=*** rejected"),
            (
                'HTTP 400 {"client_secret": "s3 cret", "x": 1}',
                'HTTP 400 {"client_secret": ***, "x": 1}',
            ),
            ("bind failed: password: s3cret", "bind failed: password: ***"),
            ("sent Authorization: Bearer eyJs3cret.x", "sent Authorization: Bearer ***"),
            ("?key=s3cret&x=1", "?key=***&x=1"),
        ],
    )
    def test_credentials_are_replaced(self, said: str, shown: str) -> None:
        from app.adapters.redact import redact

        assert redact(said) == shown

    @pytest.mark.parametrize(
        "said",
        [
            "token: cannot reach Graph ([Errno 111] Connection refused)",
            "grant: HTTP 403 Authorization_RequestDenied: Insufficient privileges",
            "find person: no person 'amira@ward.nhs.uk' under ou=people,dc=ward",
            "cannot reach ldaps://dc1.ward.nhs.uk:636: timed out",
            "grant: HTTP 400 design=wide assignment=ward12",
            "grant: monkey=3 turkey=4",
        ],
    )
    def test_ordinary_errors_are_left_as_they_are(self, said: str) -> None:
        from app.adapters.redact import redact

        assert redact(said) == said

    def test_a_password_in_a_target_address_stays_out_of_adapter_errors(self) -> None:
        """Even where policy check was bypassed, what the adapters raise (and WardKey logs,
        audits and shows in Slack) carries no credential."""
        from app.adapters.base import AdapterError
        from app.adapters.postgres import PostgresAdapter, PostgresSettings
        from app.adapters.webhook import WebhookAdapter, WebhookSettings

        postgres = PostgresAdapter(
            PostgresSettings(host="127.0.0.1 password=s3cret port=1", dbname="p")
        )
        webhook = WebhookAdapter(
            WebhookSettings.model_validate({"url": "http://epr:s3cret@127.0.0.1:1/wardkey"}),
            b"k" * 32,
        )
        for adapter in (postgres, webhook):
            with pytest.raises(AdapterError) as failed:
                adapter.check("amira", "pharmacy_read")
            assert "s3cret" not in str(failed.value)
            assert "***" in str(failed.value)
