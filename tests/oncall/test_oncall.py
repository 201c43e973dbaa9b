"""On call from the source: rotas read from a rostering export (CSV or iCalendar, a file or a URL)
or a PagerDuty schedule, cached, and failing closed once the source has been unreadable too long.

Every clock here is a ManualClock; every instant is written out, so nothing depends on today's
date, the time of day or the machine's time zone.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.access import AccessService
from app.cli import main
from app.clock import ManualClock
from app.lifecycle.deps import CoreDeps
from app.metrics import metrics_text
from app.notify.notifier import Notifier
from app.oncall import (
    OnCall,
    RosterError,
    SourceChange,
    parse_csv,
    parse_ics,
    path_sources,
    with_sources,
)
from app.oncall import jobs as oncall_jobs
from app.oncall.flows import read_sources
from app.oncall.shifts import on_call
from app.policy import Policy, PolicyError
from app.policy import parse_policy as parse_manifest
from app.policy.rules import approvers_at, escalation_members
from app.policy_targets import parse_policy, policy_warnings
from app.scheduler import job_deps
from app.store import Database
from tests.conftest import AMIRA, HERE, audit_actions, sqlite_copy
from tests.fakes.opsgenie import FakeOpsgenie
from tests.fakes.pagerduty import FakePagerDuty, FileServer

DATA = HERE / "data"
CSV = DATA / "ward7_roster.csv"
ICS = DATA / "ward7_roster.ics"
WARD = DATA / "ward_policy.yaml"
LONDON = ZoneInfo("Europe/London")
TOKEN = "u+pd-test-token"
GENIE_KEY = "eb243592-faa2-4ba2-a551-1afdf565c889"


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def ward_with(source: dict[str, Any]) -> dict[str, Any]:
    """The test trust, its clinical on-call rota read from `source`."""
    data: dict[str, Any] = yaml.safe_load(WARD.read_text())
    data["oncall"]["clinical-oncall"] = {"source": source, "escalation": "managers"}
    return data


def load(data: dict[str, Any]) -> Policy:
    return parse_policy(yaml.safe_dump(data, sort_keys=False))


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load(data)
    return [f"{i.where}: {i.message}" for i in caught.value.issues]


def sourced(
    source: dict[str, Any], clock: ManualClock, env: dict[str, str] | None = None
) -> tuple[Policy, OnCall]:
    policy = load(ward_with(source))
    cache = OnCall(policy, clock, client=httpx.Client(), env=env or {})
    return policy.with_on_call(cache), cache


@pytest.fixture
def files() -> Iterator[FileServer]:
    server = FileServer().start()
    yield server
    server.stop()


@pytest.fixture
def pagerduty() -> Iterator[FakePagerDuty]:
    server = FakePagerDuty(TOKEN).start()
    yield server
    server.stop()


class TestRosterExportFormats:
    def test_the_csv_sample_reads_each_shift_with_its_offset(self) -> None:
        shifts = parse_csv(CSV.read_text())
        assert len(shifts) == 5
        night = shifts[1]
        assert (night.person, night.role) == ("chloe@ward.nhs.uk", "nurse-in-charge")
        # 20:00 GMT to 08:00 BST: eleven hours, the night the clocks go forward.
        assert night.end is not None and night.start is not None
        assert night.end - night.start == timedelta(hours=11)

    def test_the_ics_sample_reads_attendees_the_person_property_and_categories(self) -> None:
        shifts = parse_ics(ICS.read_bytes(), LONDON)
        people = [(s.person, s.role) for s in shifts]
        assert ("ben@ward.nhs.uk", "nurse-in-charge") in people  # X-WARDKEY-PERSON
        assert ("erin@ward.nhs.uk", "site-manager") in people
        # The cancelled swap is left out: chloe has only her two nights.
        assert sum(1 for p, _ in people if p == "chloe@ward.nhs.uk") == 2

    @pytest.mark.parametrize("parse", ["csv", "ics"])
    def test_the_handover_instant_belongs_to_the_next_shift(self, parse: str) -> None:
        shifts = (
            parse_csv(CSV.read_text()) if parse == "csv" else parse_ics(ICS.read_bytes(), LONDON)
        )
        nurses = [s for s in shifts if s.role == "nurse-in-charge"]
        # 08:00 BST on 29 March is 07:00 UTC: chloe's night ends, ben's day begins.
        assert on_call(nurses, utc("2026-03-29T06:59:59+00:00")) == ["chloe@ward.nhs.uk"]
        assert on_call(nurses, utc("2026-03-29T07:00:00+00:00")) == ["ben@ward.nhs.uk"]

    @pytest.mark.parametrize("parse", ["csv", "ics"])
    def test_overlapping_shifts_put_both_on_call_earliest_first(self, parse: str) -> None:
        shifts = (
            parse_csv(CSV.read_text()) if parse == "csv" else parse_ics(ICS.read_bytes(), LONDON)
        )
        nurses = [s for s in shifts if s.role == "nurse-in-charge"]
        at = utc("2026-03-29T13:00:00+01:00")
        assert on_call(nurses, at) == ["ben@ward.nhs.uk", "dan@ward.nhs.uk"]
        assert on_call(nurses, utc("2026-03-29T16:00:00+01:00")) == ["ben@ward.nhs.uk"]

    def test_a_night_across_the_clocks_going_forward_ends_at_local_eight(self) -> None:
        shifts = parse_ics(ICS.read_bytes(), LONDON)
        # 00:30 GMT (before the change) and 07:30 BST (after it) are both chloe's night.
        assert "chloe@ward.nhs.uk" in on_call(shifts, utc("2026-03-29T00:30:00+00:00"))
        assert "chloe@ward.nhs.uk" in on_call(shifts, utc("2026-03-29T07:30:00+01:00"))
        assert "chloe@ward.nhs.uk" not in on_call(shifts, utc("2026-03-29T08:00:00+01:00"))

    def test_a_night_across_the_clocks_going_back_is_thirteen_hours(self) -> None:
        shifts = parse_ics(ICS.read_bytes(), LONDON)
        night = next(s for s in shifts if s.start == utc("2026-10-24T20:00:00+01:00"))
        assert night.end == utc("2026-10-25T08:00:00+00:00")
        # Both 01:30s of the repeated hour are inside the night; 08:00 GMT is ben's.
        assert on_call(shifts, utc("2026-10-25T01:30:00+01:00")) == ["chloe@ward.nhs.uk"]
        assert on_call(shifts, utc("2026-10-25T01:30:00+00:00")) == ["chloe@ward.nhs.uk"]
        assert on_call(shifts, utc("2026-10-25T08:00:00+00:00")) == ["ben@ward.nhs.uk"]

    def test_a_csv_time_without_an_offset_is_refused_naming_line_and_column(self) -> None:
        text = "start,end,email\n2026-03-28T08:00:00,2026-03-28T20:00:00+00:00,ben@ward.nhs.uk\n"
        with pytest.raises(RosterError, match=r"^line 2, start: .* has no UTC offset"):
            parse_csv(text)

    def test_a_csv_without_an_email_column_is_refused(self) -> None:
        with pytest.raises(RosterError, match="line 1: the header has no email column"):
            parse_csv("start,end,name\n")

    def test_a_repeating_event_is_refused_rather_than_half_read(self) -> None:
        text = ICS.read_text().replace(
            "SUMMARY:Ward 7 extra cover", "SUMMARY:Ward 7 extra cover\r\nRRULE:FREQ=DAILY"
        )
        with pytest.raises(RosterError, match=r"w7-20260329-cover.*RRULE"):
            parse_ics(text.encode(), LONDON)


class TestRosterSource:
    def test_a_file_source_names_the_nurse_in_charge_as_approver(self) -> None:
        clock = ManualClock(utc("2026-03-29T07:30:00+01:00"))
        policy, _ = sourced(
            {"roster": {"file": str(ICS), "format": "ics", "role": "nurse-in-charge"}}, clock
        )
        # The rota's source, then the managers group, as the clinical path lists them.
        people = approvers_at(policy, "clinical", clock.now())
        assert people[0] == "chloe@ward.nhs.uk"
        assert "erin@ward.nhs.uk" not in people  # site manager: another role

    def test_a_url_source_is_read_once_per_refresh_and_a_swap_takes_effect(
        self, files: FileServer
    ) -> None:
        files.files["/ward7.csv"] = CSV.read_bytes()
        clock = ManualClock(utc("2026-03-29T13:00:00+01:00"))
        source = {
            "roster": {
                "url": f"{files.base_url}/ward7.csv",
                "format": "csv",
                "role": "nurse-in-charge",
                "insecure": True,
            },
            "refresh_every": "5m",
        }
        policy, cache = sourced(source, clock)
        assert approvers_at(policy, "clinical", clock.now())[:2] == [
            "ben@ward.nhs.uk",
            "dan@ward.nhs.uk",
        ]
        approvers_at(policy, "clinical", clock.now())
        assert files.hits == 1
        # The roster office swaps dan's cover to frank; seen at the next refresh.
        files.files["/ward7.csv"] = CSV.read_bytes().replace(b"dan@", b"frank@")
        clock.advance(timedelta(minutes=5))
        assert "frank@ward.nhs.uk" in approvers_at(policy, "clinical", clock.now())
        assert files.hits == 2
        assert cache.describe("clinical-oncall") == (
            f"from roster export {files.base_url}/ward7.csv, read 13:05"
        )
        # The line the approver card shows (the export's URL left out: it may carry a key);
        # a path approved by groups alone has none.
        assert path_sources(policy, "clinical") == [
            "clinical-oncall on call per rostering export (csv), read 13:05"
        ]
        assert path_sources(policy, "admin") == []
        literal = load(yaml.safe_load(WARD.read_text()))
        assert path_sources(literal, "clinical") == [
            "clinical-oncall on call per the policy's rota"
        ]


class TestUnreadableSource:
    def test_a_key_in_a_roster_url_is_never_shown(
        self, files: FileServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        """E-rostering systems publish exports at links that carry their key: the key stays
        out of the log, `policy check`'s words and the security channel's alert."""
        files.files["/ward7.csv"] = CSV.read_bytes()
        clock = ManualClock(utc("2026-03-29T13:00:00+01:00"))
        url = f"{files.base_url}/ward7.csv?token=SECRET123"
        policy, cache = sourced({"roster": {"url": url, "format": "csv", "insecure": True}}, clock)
        caplog.set_level(logging.WARNING, logger="app.oncall.cache")
        assert "ben@ward.nhs.uk" in approvers_at(policy, "clinical", clock.now())
        assert "ward7.csv?…" in cache.describe("clinical-oncall")

        files.status = 503
        clock.advance(timedelta(minutes=30))
        approvers_at(policy, "clinical", clock.now())
        said = [cache.describe("clinical-oncall"), *path_sources(policy, "clinical")]
        said += [r.getMessage() for r in caplog.records]
        assert any("HTTP 503" in line for line in said)
        assert not [line for line in said if "SECRET123" in line]

    def test_last_good_answer_within_stale_after_then_nobody_from_the_rota(
        self, files: FileServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        files.files["/ward7.csv"] = CSV.read_bytes()
        clock = ManualClock(utc("2026-03-29T13:00:00+01:00"))
        roster = {"url": f"{files.base_url}/ward7.csv", "format": "csv", "insecure": True}
        source = {"roster": roster, "stale_after": "2h"}
        policy, cache = sourced(source, clock)
        assert "ben@ward.nhs.uk" in approvers_at(policy, "clinical", clock.now())

        files.status = 503
        caplog.set_level(logging.WARNING, logger="app.oncall.cache")
        for _ in range(3):  # three refreshes, each failing, within two hours
            clock.advance(timedelta(minutes=30))
            assert "ben@ward.nhs.uk" in approvers_at(policy, "clinical", clock.now())
        assert files.hits == 4
        unreadable = [r for r in caplog.records if "oncall_source_unreadable" in r.getMessage()]
        assert len(unreadable) == 1  # logged once, not at every refresh
        assert "HTTP 503" in unreadable[0].getMessage()
        assert cache.describe("clinical-oncall").endswith("read 13:00 (unreadable since 13:30)")

        # Two hours and a minute after the last good read: nobody from the rota (fail closed);
        # the managers group, listed on the path too, remains, and the rota's escalation
        # group is who the no-approver-reachable path turns to.
        clock.advance(timedelta(minutes=31))
        people = approvers_at(policy, "clinical", clock.now())
        assert not {"ben@ward.nhs.uk", "dan@ward.nhs.uk"} & set(people)
        assert people == load(ward_with(source)).groups["managers"]
        assert escalation_members(policy, "clinical") == policy.groups["managers"]
        assert cache.stale("clinical-oncall")
        assert path_sources(policy, "clinical") == [
            "clinical-oncall on call per rostering export (csv): unreadable since 13:30, last "
            "read 13:00, so nobody from this rota can approve"
        ]
        stale = [r for r in caplog.records if "oncall_source_stale" in r.getMessage()]
        assert len(stale) == 1 and "last_read=2026-03-29T12:00:00+00:00" in stale[0].getMessage()
        assert cache.describe("clinical-oncall") == (
            f"from roster export {files.base_url}/ward7.csv: last read 13:00, unreadable since "
            "13:30, so nobody from this rota can approve"
        )

        # The source comes back: the rota answers again at the next refresh.
        files.status = None
        clock.advance(timedelta(minutes=5))
        assert "ben@ward.nhs.uk" in approvers_at(policy, "clinical", clock.now())

    def test_a_policy_reload_during_an_outage_keeps_the_last_good_read(
        self, tmp_path: Path
    ) -> None:
        export = tmp_path / "ward7.csv"
        export.write_bytes(CSV.read_bytes())
        clock = ManualClock(utc("2026-03-29T13:00:00+01:00"))
        text = yaml.safe_dump(ward_with({"roster": {"file": str(export), "format": "csv"}}))
        kept: dict[Any, Any] = {}
        before = with_sources(parse_manifest(text), clock, kept)
        assert "ben@ward.nhs.uk" in approvers_at(before, "clinical", clock.now())
        export.unlink()  # the roster share goes away
        clock.advance(timedelta(minutes=30))
        edited = text.replace("pending_timeout: 30m", "pending_timeout: 45m")
        assert edited != text  # a reload for an unrelated edit
        after = with_sources(parse_manifest(edited), clock, kept)
        assert "ben@ward.nhs.uk" in approvers_at(after, "clinical", clock.now())
        # The stale_after clock runs from the read before the reload, not from the reload.
        clock.advance(timedelta(minutes=91))
        assert "ben@ward.nhs.uk" not in approvers_at(after, "clinical", clock.now())

    def test_a_source_never_read_names_nobody(self, tmp_path: Path) -> None:
        clock = ManualClock(utc("2026-03-29T13:00:00+01:00"))
        missing = tmp_path / "not-there.csv"
        policy, cache = sourced({"roster": {"file": str(missing), "format": "csv"}}, clock)
        assert approvers_at(policy, "clinical", clock.now()) == policy.groups["managers"]
        assert "not read (cannot read" in cache.describe("clinical-oncall")

    def test_a_policy_with_no_on_call_reader_names_nobody_from_a_sourced_rota(self) -> None:
        policy = load(ward_with({"roster": {"file": str(CSV), "format": "csv"}}))
        bare = policy.with_on_call(None)
        at = utc("2026-03-29T13:00:00+01:00")
        assert approvers_at(bare, "clinical", at) == bare.groups["managers"]


class TestPagerDuty:
    def source(self, fake: FakePagerDuty) -> dict[str, Any]:
        return {
            "pagerduty": {
                "schedule": "PWARD07",
                "token_env": "PAGERDUTY_TOKEN",
                "api_url": fake.base_url,
                "insecure": True,
            }
        }

    def test_the_on_call_lead_comes_from_the_schedule_across_pages(
        self, pagerduty: FakePagerDuty
    ) -> None:
        handover = utc("2026-03-29T08:00:00+01:00")
        for hour in range(-3, 0):  # earlier short shifts fill the first pages
            start = handover + timedelta(hours=hour)
            pagerduty.on_call(
                "PWARD07",
                f"PU{hour + 9}",
                f"early{hour + 9}@ward.nhs.uk",
                start,
                start + timedelta(hours=1),
            )
        pagerduty.on_call(
            "PWARD07", "PCHLOE1", "chloe@ward.nhs.uk", handover - timedelta(hours=11), handover
        )
        pagerduty.on_call(
            "PWARD07", "PBEN001", "ben@ward.nhs.uk", handover, handover + timedelta(hours=12)
        )
        pagerduty.on_call("POTHER1", "PDAN001", "dan@ward.nhs.uk", handover, None)
        pagerduty.max_limit = 2
        clock = ManualClock(handover - timedelta(minutes=1))
        policy, cache = sourced(self.source(pagerduty), clock, {"PAGERDUTY_TOKEN": TOKEN})

        assert approvers_at(policy, "clinical", clock.now())[0] == "chloe@ward.nhs.uk"
        assert approvers_at(policy, "clinical", handover)[0] == "ben@ward.nhs.uk"
        assert "dan@ward.nhs.uk" not in approvers_at(policy, "clinical", handover)
        # The read reaches an hour back, so the 05:00 shift is left out: four entries of this
        # schedule remain, two a page, all read; then no more requests until the refresh.
        assert [q["offset"] for q in pagerduty.requests] == [["0"], ["2"]]
        assert "early6@ward.nhs.uk" not in approvers_at(
            policy, "clinical", handover - timedelta(minutes=61)
        )
        assert "early8@ward.nhs.uk" in approvers_at(
            policy, "clinical", handover - timedelta(minutes=30)
        )
        assert len(pagerduty.requests) == 2
        first = pagerduty.requests[0]
        assert first["schedule_ids[]"] == ["PWARD07"]
        assert first["include[]"] == ["users"]
        assert utc(first["since"][0]) <= clock.now() < utc(first["until"][0])
        assert cache.describe("clinical-oncall") == "from PagerDuty schedule PWARD07, read 07:59"

    def test_a_wrong_token_is_unreadable_and_named_without_the_token(
        self, pagerduty: FakePagerDuty, caplog: pytest.LogCaptureFixture
    ) -> None:
        pagerduty.on_call("PWARD07", "PBEN001", "ben@ward.nhs.uk", None, None)
        clock = ManualClock(utc("2026-03-29T08:00:00+01:00"))
        caplog.set_level(logging.WARNING, logger="app.oncall.cache")
        policy, _ = sourced(self.source(pagerduty), clock, {"PAGERDUTY_TOKEN": "wrong-token"})
        assert approvers_at(policy, "clinical", clock.now()) == policy.groups["managers"]
        assert "PagerDuty answered HTTP 401: Unauthorized" in caplog.text
        assert "wrong-token" not in caplog.text

    def test_a_missing_token_variable_is_unreadable(self, pagerduty: FakePagerDuty) -> None:
        clock = ManualClock(utc("2026-03-29T08:00:00+01:00"))
        policy, cache = sourced(self.source(pagerduty), clock, {})
        assert approvers_at(policy, "clinical", clock.now()) == policy.groups["managers"]
        assert "PAGERDUTY_TOKEN is not set" in cache.describe("clinical-oncall")
        assert pagerduty.requests == []

    def test_an_outage_keeps_the_last_answer_until_stale_after(
        self, pagerduty: FakePagerDuty
    ) -> None:
        pagerduty.on_call("PWARD07", "PBEN001", "ben@ward.nhs.uk", None, None)
        clock = ManualClock(utc("2026-03-29T08:00:00+01:00"))
        source = {**self.source(pagerduty), "stale_after": "1h", "refresh_every": "10m"}
        policy, _ = sourced(source, clock, {"PAGERDUTY_TOKEN": TOKEN})
        assert approvers_at(policy, "clinical", clock.now())[0] == "ben@ward.nhs.uk"
        pagerduty.failures = [500] * 10
        clock.advance(timedelta(hours=1))
        assert approvers_at(policy, "clinical", clock.now())[0] == "ben@ward.nhs.uk"
        clock.advance(timedelta(minutes=1))
        assert "ben@ward.nhs.uk" not in approvers_at(policy, "clinical", clock.now())

    def test_a_rate_limit_is_waited_out_for_as_long_as_pagerduty_asks(
        self, pagerduty: FakePagerDuty, caplog: pytest.LogCaptureFixture
    ) -> None:
        pagerduty.on_call("PWARD07", "PBEN001", "ben@ward.nhs.uk", None, None)
        clock = ManualClock(utc("2026-03-29T08:00:00+01:00"))
        source = {**self.source(pagerduty), "refresh_every": "5m"}
        policy, _ = sourced(source, clock, {"PAGERDUTY_TOKEN": TOKEN})
        assert approvers_at(policy, "clinical", clock.now())[0] == "ben@ward.nhs.uk"
        pagerduty.failures, pagerduty.retry_after = [429], 900
        caplog.set_level(logging.WARNING, logger="app.oncall.cache")
        clock.advance(timedelta(minutes=5))
        assert approvers_at(policy, "clinical", clock.now())[0] == "ben@ward.nhs.uk"
        assert "HTTP 429: Rate Limit Exceeded" in caplog.text
        asked = len(pagerduty.requests)
        clock.advance(timedelta(minutes=14))  # refresh_every has passed, Retry-After has not
        approvers_at(policy, "clinical", clock.now())
        assert len(pagerduty.requests) == asked
        clock.advance(timedelta(minutes=1))
        approvers_at(policy, "clinical", clock.now())
        assert len(pagerduty.requests) == asked + 1


class TestPagerDutyEscalationPolicy:
    def source(self, fake: FakePagerDuty, level: int = 1) -> dict[str, Any]:
        return {
            "pagerduty": {
                "escalation_policy": "PEPWARD",
                "level": level,
                "token_env": "PAGERDUTY_TOKEN",
                "api_url": fake.base_url,
                "insecure": True,
            }
        }

    @pytest.fixture
    def handover(self, pagerduty: FakePagerDuty) -> datetime:
        """Level 1 of the ward's escalation policy is its lead's schedule (Chloe's night, then
        Ben's day); level 2 names Gita herself; Dev is on another policy."""
        at = utc("2026-03-29T08:00:00+01:00")
        night, day = (at - timedelta(hours=11), at), (at, at + timedelta(hours=12))
        pagerduty.on_call(
            "PWARD07", "PCHLOE1", "chloe@ward.nhs.uk", *night, escalation_policy="PEPWARD"
        )
        pagerduty.on_call(
            "PWARD07", "PBEN001", "ben@ward.nhs.uk", *day, escalation_policy="PEPWARD"
        )
        pagerduty.on_call(
            None, "PGITA01", "gita@ward.nhs.uk", None, None, escalation_policy="PEPWARD", level=2
        )
        pagerduty.on_call(
            "POTHER1", "PDEV001", "dev@ward.nhs.uk", None, None, escalation_policy="PEPOTH"
        )
        return at

    def test_the_first_level_is_on_call_through_its_schedule(
        self, pagerduty: FakePagerDuty, handover: datetime
    ) -> None:
        clock = ManualClock(handover - timedelta(minutes=1))
        policy, cache = sourced(self.source(pagerduty), clock, {"PAGERDUTY_TOKEN": TOKEN})
        assert approvers_at(policy, "clinical", clock.now())[0] == "chloe@ward.nhs.uk"
        people = approvers_at(policy, "clinical", handover)
        assert people[0] == "ben@ward.nhs.uk"
        assert not {"gita@ward.nhs.uk", "dev@ward.nhs.uk"} & set(people[:1])
        [asked] = pagerduty.requests
        assert asked["escalation_policy_ids[]"] == ["PEPWARD"]
        assert "schedule_ids[]" not in asked and asked["include[]"] == ["users"]
        assert cache.describe("clinical-oncall") == (
            "from PagerDuty escalation policy PEPWARD (level 1), read 07:59"
        )
        assert path_sources(policy, "clinical") == [
            "clinical-oncall on call per PagerDuty escalation policy PEPWARD (level 1), read 07:59"
        ]

    def test_a_later_level_names_who_is_on_it_for_ever(
        self, pagerduty: FakePagerDuty, handover: datetime
    ) -> None:
        clock = ManualClock(handover)
        policy, _ = sourced(self.source(pagerduty, level=2), clock, {"PAGERDUTY_TOKEN": TOKEN})
        people = approvers_at(policy, "clinical", clock.now())
        assert people[0] == "gita@ward.nhs.uk"
        assert "ben@ward.nhs.uk" not in people


@pytest.fixture
def opsgenie() -> Iterator[FakeOpsgenie]:
    server = FakeOpsgenie(GENIE_KEY).start()
    yield server
    server.stop()


class TestOpsgenie:
    def source(
        self, fake: FakeOpsgenie, schedule: str = "ward7-nic", **more: Any
    ) -> dict[str, Any]:
        return {
            "opsgenie": {
                "schedule": schedule,
                "token_env": "OPSGENIE_KEY",
                "api_url": fake.base_url,
                "insecure": True,
            },
            **more,
        }

    @pytest.fixture
    def handover(self, opsgenie: FakeOpsgenie) -> datetime:
        at = utc("2026-03-29T08:00:00+01:00")
        opsgenie.on_call("ward7-nic", "chloe@ward.nhs.uk", at - timedelta(hours=11), at)
        opsgenie.on_call("ward7-nic", "ben@ward.nhs.uk", at, at + timedelta(hours=12))
        opsgenie.on_call("theatres", "dev@ward.nhs.uk", at - timedelta(hours=11), at)
        return at

    def test_the_schedule_by_name_says_who_is_on_call_now(
        self, opsgenie: FakeOpsgenie, handover: datetime
    ) -> None:
        clock = ManualClock(handover - timedelta(minutes=1))
        policy, cache = sourced(self.source(opsgenie), clock, {"OPSGENIE_KEY": GENIE_KEY})
        people = approvers_at(policy, "clinical", clock.now())
        assert people[0] == "chloe@ward.nhs.uk" and "dev@ward.nhs.uk" not in people
        [(path, query)] = opsgenie.requests
        assert path == "/v2/schedules/ward7-nic/on-calls"
        assert query["scheduleIdentifierType"] == ["name"] and query["flat"] == ["true"]
        assert utc(query["date"][0]) == clock.now()
        assert cache.describe("clinical-oncall") == "from Opsgenie schedule ward7-nic, read 07:59"

    def test_the_schedule_by_id_and_a_hand_off_seen_at_the_next_read(
        self, opsgenie: FakeOpsgenie, handover: datetime
    ) -> None:
        ident = opsgenie.schedule("ward7-nic")
        clock = ManualClock(handover - timedelta(minutes=1))
        source = self.source(opsgenie, ident, refresh_every="2m")
        policy, _ = sourced(source, clock, {"OPSGENIE_KEY": GENIE_KEY})
        assert approvers_at(policy, "clinical", clock.now())[0] == "chloe@ward.nhs.uk"
        assert opsgenie.requests[0][0] == f"/v2/schedules/{ident}/on-calls"
        assert "scheduleIdentifierType" not in opsgenie.requests[0][1]
        # Opsgenie answers for an instant: the hand-off is seen at the first read after it.
        clock.advance(timedelta(minutes=2))
        assert approvers_at(policy, "clinical", clock.now())[0] == "ben@ward.nhs.uk"
        assert "chloe@ward.nhs.uk" not in approvers_at(policy, "clinical", clock.now())

    def test_a_wrong_key_is_unreadable_and_named_without_the_key(
        self, opsgenie: FakeOpsgenie, handover: datetime, caplog: pytest.LogCaptureFixture
    ) -> None:
        clock = ManualClock(handover)
        caplog.set_level(logging.WARNING, logger="app.oncall.cache")
        policy, _ = sourced(self.source(opsgenie), clock, {"OPSGENIE_KEY": "wrong-genie-key"})
        assert approvers_at(policy, "clinical", clock.now()) == policy.groups["managers"]
        assert "Opsgenie answered HTTP 401: Could not authenticate" in caplog.text
        assert "wrong-genie-key" not in caplog.text

    def test_an_unknown_schedule_is_unreadable_with_opsgenies_words(
        self, opsgenie: FakeOpsgenie, handover: datetime
    ) -> None:
        clock = ManualClock(handover)
        policy, cache = sourced(
            self.source(opsgenie, "ward9-nic"), clock, {"OPSGENIE_KEY": GENIE_KEY}
        )
        assert approvers_at(policy, "clinical", clock.now()) == policy.groups["managers"]
        assert "HTTP 404: No schedule exists with name [ward9-nic]" in cache.describe(
            "clinical-oncall"
        )

    def test_a_rate_limit_is_waited_out_and_the_last_answer_used_meanwhile(
        self, opsgenie: FakeOpsgenie, handover: datetime, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, logger="app.oncall.cache")
        clock = ManualClock(handover)
        source = self.source(opsgenie, refresh_every="1m")
        policy, _ = sourced(source, clock, {"OPSGENIE_KEY": GENIE_KEY})
        assert approvers_at(policy, "clinical", clock.now())[0] == "ben@ward.nhs.uk"
        opsgenie.failures, opsgenie.retry_after = [429], 600
        clock.advance(timedelta(minutes=1))
        assert approvers_at(policy, "clinical", clock.now())[0] == "ben@ward.nhs.uk"
        assert "Opsgenie answered HTTP 429: Too many requests" in caplog.text
        asked = len(opsgenie.requests)
        clock.advance(timedelta(minutes=9))  # refresh_every has passed, Retry-After has not
        approvers_at(policy, "clinical", clock.now())
        assert len(opsgenie.requests) == asked
        clock.advance(timedelta(minutes=1))
        approvers_at(policy, "clinical", clock.now())
        assert len(opsgenie.requests) == asked + 1


class TestPolicyValidation:
    def test_a_roster_with_file_and_url_names_the_source(self) -> None:
        data = ward_with(
            {"roster": {"file": "a.csv", "url": "https://roster.example/a.csv", "format": "csv"}}
        )
        assert problems(data) == [
            "oncall.clinical-oncall.source.roster: give exactly one of 'file' or 'url'"
        ]

    def test_a_plain_http_url_is_refused_at_the_url(self) -> None:
        data = ward_with({"roster": {"url": "http://roster.example/a.ics", "format": "ics"}})
        [problem] = problems(data)
        assert problem.startswith("oncall.clinical-oncall.source.roster.url: ")
        assert "not an https:// URL" in problem

    def test_a_token_in_place_of_its_variable_is_refused_at_token_env(self) -> None:
        data = ward_with({"pagerduty": {"schedule": "PWARD07", "token_env": "u+abc123"}})
        [problem] = problems(data)
        assert problem.startswith("oncall.clinical-oncall.source.pagerduty.token_env: ")

    def test_members_beside_a_source_are_refused_at_members(self) -> None:
        data = ward_with({"roster": {"file": "a.csv", "format": "csv"}})
        data["oncall"]["clinical-oncall"]["members"] = ["ben@ward.nhs.uk"]
        assert problems(data) == [
            "oncall.clinical-oncall.members: a rota with a source takes no 'members': its "
            "source says who is on call"
        ]

    def test_on_call_and_hand_off_beside_a_source_are_refused_not_ignored(self) -> None:
        # The source says how many are on call and when shifts change: `on_call: 2` there
        # would be silently ignored, so it is refused at its field (even at its default).
        data = ward_with({"pagerduty": {"schedule": "PWARD07", "token_env": "PD"}})
        data["oncall"]["clinical-oncall"].update(on_call=2, handoff="08:00", handoff_day="monday")
        assert problems(data) == [
            f"oncall.clinical-oncall.{field}: a rota with a source takes no '{field}': its "
            "source says who is on call"
            for field in ("on_call", "handoff", "handoff_day")
        ]

    def test_a_literal_rota_still_needs_its_rotation(self) -> None:
        data: dict[str, Any] = yaml.safe_load(WARD.read_text())
        del data["oncall"]["clinical-oncall"]["rotation"]
        assert problems(data) == [
            "oncall.clinical-oncall.rotation: 'rotation' is required (or give a 'source')"
        ]

    def test_a_pagerduty_source_takes_a_schedule_or_an_escalation_policy_not_both(
        self,
    ) -> None:
        both = {"schedule": "PWARD07", "escalation_policy": "PEPWARD", "token_env": "PD"}
        assert problems(ward_with({"pagerduty": both})) == [
            "oncall.clinical-oncall.source.pagerduty: give exactly one of 'schedule' or "
            "'escalation_policy'"
        ]
        level = {"schedule": "PWARD07", "level": 2, "token_env": "PD"}
        assert problems(ward_with({"pagerduty": level})) == [
            "oncall.clinical-oncall.source.pagerduty: 'level' goes with 'escalation_policy', "
            "not 'schedule'"
        ]

    def test_two_sources_for_one_rota_are_refused(self) -> None:
        data = ward_with(
            {
                "roster": {"file": "a.csv", "format": "csv"},
                "opsgenie": {"schedule": "ward7-nic", "token_env": "OPSGENIE_KEY"},
            }
        )
        assert problems(data) == [
            "oncall.clinical-oncall.source: give exactly one of 'roster', 'pagerduty' or 'opsgenie'"
        ]

    def test_opsgenie_takes_the_eu_instance_and_refuses_plain_http(self) -> None:
        eu = {"schedule": "ward7-nic", "token_env": "OPSGENIE_KEY"}
        eu["api_url"] = "https://api.eu.opsgenie.com"
        assert load(ward_with({"opsgenie": eu})).oncall["clinical-oncall"].source is not None
        plain = {**eu, "api_url": "http://api.eu.opsgenie.com"}
        [problem] = problems(ward_with({"opsgenie": plain}))
        assert problem.startswith("oncall.clinical-oncall.source.opsgenie.api_url: ")
        assert "not an https:// URL" in problem

    def test_an_unknown_format_names_the_format(self) -> None:
        data = ward_with({"roster": {"file": "a.xlsx", "format": "xlsx"}})
        [problem] = problems(data)
        assert problem.startswith("oncall.clinical-oncall.source.roster.format: ")


class TestPolicyCheckSummary:
    def test_policy_check_says_where_each_rota_comes_from(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        data = ward_with({"roster": {"file": str(CSV), "format": "csv"}})
        data["oncall"]["theatre-oncall"] = {
            "source": {"pagerduty": {"schedule": "PTHEA01", "token_env": "WARDKEY_TEST_NO_TOKEN"}}
        }
        data["oncall"]["pharmacy-oncall"] = {
            "members": ["ben@ward.nhs.uk", "chloe@ward.nhs.uk"],
            "rotation": "weekly",
            "starts": "2026-11-02",
        }
        policy = tmp_path / "policy.yaml"
        policy.write_text(yaml.safe_dump(data, sort_keys=False))
        assert main(["policy", "check", str(policy)]) == 0
        out = capsys.readouterr().out
        rotas = out[out.index("  rotas:") :].splitlines()[1:4]
        assert re.fullmatch(
            rf"    clinical-oncall +from roster export {re.escape(str(CSV))}, read \d\d:\d\d",
            rotas[0],
        )
        assert rotas[1] == (
            "    theatre-oncall       from PagerDuty schedule PTHEA01: not read "
            "(WARDKEY_TEST_NO_TOKEN is not set), so nobody from this rota can approve"
        )
        assert rotas[2] == "    pharmacy-oncall      from the policy (weekly rotation of 2)"


class TestInsecureSourceWarnings:
    def test_an_http_roster_url_is_warned_about_at_insecure(self) -> None:
        policy = load(
            ward_with(
                {"roster": {"url": "http://roster.test/a.csv", "format": "csv", "insecure": True}}
            )
        )
        assert [f"{i.where}: {i.message}" for i in policy_warnings(policy)] == [
            "oncall.clinical-oncall.source.roster.insecure: who is on call is read over plain "
            "http:// (http://roster.test/a.csv)"
        ]

    def test_insecure_where_nothing_needs_it_is_flagged(self) -> None:
        policy = load(
            ward_with(
                {"pagerduty": {"schedule": "PWARD07", "token_env": "PD_TOKEN", "insecure": True}}
            )
        )
        assert [f"{i.where}: {i.message}" for i in policy_warnings(policy)] == [
            "oncall.clinical-oncall.source.pagerduty.insecure: nothing here needs it; remove it"
        ]


class TestMetrics:
    @pytest.fixture
    def db(self, tmp_path: Path, sqlite_template: Path) -> Iterator[Database]:
        yield from sqlite_copy(tmp_path, sqlite_template)
        # The process's own policy again has no sourced rota (metrics show none).
        with_sources(parse_manifest(WARD.read_text()))

    def test_the_scrape_shows_each_source_up_stale_and_how_old_its_read_is(
        self, tmp_path: Path, db: Database
    ) -> None:
        export = tmp_path / "ward7.csv"
        export.write_bytes(CSV.read_bytes())
        clock = ManualClock(utc("2026-03-29T13:00:00+01:00"))
        source = {"roster": {"file": str(export), "format": "csv"}, "stale_after": "1h"}
        policy = with_sources(parse_manifest(yaml.safe_dump(ward_with(source))), clock)

        def gauges() -> dict[str, float]:
            text = metrics_text(db, clock).decode()
            return {
                sample.name: sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name.startswith("wardkey_oncall_source")
                and sample.labels == {"rota": "clinical-oncall", "kind": "roster"}
            }

        approvers_at(policy, "clinical", clock.now())
        clock.advance(timedelta(minutes=10))
        assert gauges() == {
            "wardkey_oncall_source_up": 1.0,
            "wardkey_oncall_source_stale": 0.0,
            "wardkey_oncall_source_read_age_seconds": 600.0,
        }
        export.unlink()
        clock.advance(timedelta(minutes=51))
        approvers_at(policy, "clinical", clock.now())
        assert gauges() == {
            "wardkey_oncall_source_up": 0.0,
            "wardkey_oncall_source_stale": 1.0,
            "wardkey_oncall_source_read_age_seconds": 3660.0,
        }


class TestOnEachDatabase:
    """The sweep's work on SQLite and PostgreSQL: waiting requests of a rota gone stale are
    escalated once, and an outage told by one process is not told again by another."""

    @pytest.fixture
    def export(self, tmp_path: Path) -> Path:
        path = tmp_path / "ward7.csv"
        path.write_bytes(CSV.read_bytes())
        return path

    @pytest.fixture
    def clock(self) -> ManualClock:
        return ManualClock(utc("2026-03-29T13:00:00+01:00"))

    @pytest.fixture
    def policy(self, export: Path, clock: ManualClock) -> Policy:
        data = ward_with({"roster": {"file": str(export), "format": "csv"}, "stale_after": "1h"})
        data["paths"]["clinical"]["approvers"] = [{"rota": "clinical-oncall"}]
        del data["paths"]["clinical"]["approval_sla"]
        policy = load(data)
        return policy.with_on_call(OnCall(policy, clock, client=httpx.Client(), env={}))

    def test_a_waiting_request_goes_to_the_escalation_group_once_the_rota_is_stale(
        self, service: AccessService, notifier: Notifier, clock: ManualClock, export: Path
    ) -> None:
        deps = job_deps(service, notifier.outbox, oncall=partial(read_sources, service, notifier))
        view = service.request(
            AMIRA, "pharmacy-db", "read", timedelta(minutes=30), "fix the stuck order set"
        )
        export.unlink()  # the roster share goes away at 13:00
        clock.advance(timedelta(minutes=5))
        assert oncall_jobs.oncall_sources(deps) == 1  # security told
        assert service.get(view.id).escalation_level == 0
        clock.advance(timedelta(minutes=56))  # 14:01: the read of 13:00 no longer counts
        assert oncall_jobs.oncall_sources(deps) == 1  # the waiting request escalated
        assert "approval.unreachable" in audit_actions(service, view.id)
        why = service.unreachable_reason(view.id)
        assert "could not be read from rostering export (csv)" in why
        clock.advance(timedelta(minutes=1))
        assert oncall_jobs.oncall_sources(deps) == 0
        assert audit_actions(service, view.id).count("approval.unreachable") == 1

    def test_an_outage_told_by_one_process_is_not_told_by_another(
        self, service: AccessService, notifier: Notifier, clock: ManualClock, export: Path
    ) -> None:
        other = service.policy.with_on_call(
            OnCall(service.policy, clock, client=httpx.Client(), env={})
        )
        second_core = AccessService(CoreDeps(service.db, other, service.adapters, clock))
        second = Notifier(notifier.client, second_core, notifier.directory)

        def first_reads() -> list[SourceChange]:
            return read_sources(service, notifier)

        def second_reads() -> list[SourceChange]:
            return read_sources(second_core, second)

        assert [first_reads(), second_reads()] == [[], []]
        export.unlink()
        clock.advance(timedelta(minutes=5))
        assert [len(first_reads()), len(second_reads())] == [1, 0]
        export.write_bytes(CSV.read_bytes())
        clock.advance(timedelta(minutes=5))
        assert [len(second_reads()), len(first_reads())] == [1, 0]


class TestPeopleInSlack:
    """`policy check --slack` looks up the people a rota's source has on call now or later:
    someone whose e-mail in the roster is not their Slack one would never get the card."""

    def test_on_call_people_from_the_source_are_looked_up_in_slack(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from app.demo.slack_fake import FakeSlack
        from tests.slack_harness import WARD_USERS

        now = datetime.now(UTC).replace(microsecond=0)  # policy check reads at the real time

        def row(start: datetime, hours: int, email: str) -> str:
            end = start + timedelta(hours=hours)
            return f"{start.isoformat()},{end.isoformat()},{email}\n"

        export = tmp_path / "roster.csv"
        export.write_text(
            "start,end,email\n"
            + row(now - timedelta(days=2), 12, "left@ward.nhs.uk")  # an old shift: not asked
            + row(now - timedelta(hours=1), 12, "ben@ward.nhs.uk")
            + row(now + timedelta(hours=11), 12, "typo@ward.nhs.uk")  # tonight's, mistyped
        )
        data = ward_with({"roster": {"file": str(export), "format": "csv"}})
        policy = tmp_path / "policy.yaml"
        policy.write_text(yaml.safe_dump(data, sort_keys=False))
        fake = FakeSlack().start()
        try:
            for user in WARD_USERS:
                fake.add_user(user)
            monkeypatch.setenv("SLACK_BOT_TOKEN", fake.token)
            monkeypatch.setenv("SLACK_API_URL", fake.api_url)
            for name in ("SLACK_TEAM_IDS", "SLACK_ENTERPRISE_ID"):
                monkeypatch.delenv(name, raising=False)
            assert main(["policy", "check", str(policy), "--slack"]) == 1
            err = capsys.readouterr().err
            assert (
                "  oncall.clinical-oncall: typo@ward.nhs.uk is not in Slack: no account has this "
                "e-mail address" in err
            ), err
            looked_up = {c.args["email"] for c in fake.calls_to("users.lookupByEmail")}
            assert {"ben@ward.nhs.uk", "typo@ward.nhs.uk"} <= looked_up
            assert "left@ward.nhs.uk" not in looked_up
        finally:
            fake.stop()
