"""Reconcile's look for standing privilege: access on a target that no grant covers is
recorded, audited, reported to security, and removed where the target's policy says so; the
report of it, to admins in Slack (`/jit standing`) and from the command line."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from app.access import AccessService
from app.clock import ManualClock
from app.lifecycle.deps import CoreDeps
from app.lifecycle.errors import NotAllowed
from app.policy import Policy
from app.standing.service import StandingService
from app.store import Database
from app.store.models import StandingAccess
from tests.conftest import AMIRA, BEN, GITA, HERE, audit_actions
from tests.fakes.memory_adapter import MemoryTarget
from tests.slack_harness import RunningApp, SlackOnSqlite

WHY = "fix stuck order set on ward 12"
READ = "pharmacy_read"


def with_standing(policy: Policy, mode: str, allowed: list[str] | None = None) -> Policy:
    target = policy.targets["pharmacy-db"].model_copy(
        update={"standing": mode, "standing_allowed": allowed or []}
    )
    return policy.model_copy(update={"targets": {**policy.targets, "pharmacy-db": target}})


@pytest.fixture
def policy_file() -> Path:
    return HERE / "data" / "ward_policy.yaml"


@pytest.fixture
def standing(service: AccessService) -> StandingService:
    return StandingService(service)


@pytest.fixture
def pharmacy(targets: dict[str, MemoryTarget]) -> MemoryTarget:
    db = targets["pharmacy-db"]
    db.members[READ] |= {"zoe", "wardkey_svc"}  # zoe: a DBA's old permanent grant
    return db


class TestReportOnly:
    def test_found_once_left_in_place_and_cleared_when_gone(
        self,
        service: AccessService,
        standing: StandingService,
        pharmacy: MemoryTarget,
        clock: ManualClock,
    ) -> None:
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), WHY)
        service.approve(req.id, BEN)  # amira holds it through a grant: covered

        report = standing.find_standing()

        assert sorted(f.account for f in report.found) == ["wardkey_svc", "zoe"]
        assert not any(f.removed for f in report.found)
        assert pharmacy.holds("zoe", READ)
        again = standing.find_standing()
        assert (again.found, again.still) == ([], 2)

        pharmacy.members[READ].discard("zoe")  # someone took it away by hand
        clock.advance(timedelta(minutes=5))
        cleared = standing.find_standing()
        assert [f.account for f in cleared.cleared] == ["zoe"]
        assert audit_actions(service).count("standing.found") == 2
        assert audit_actions(service).count("standing.cleared") == 1

    def test_access_left_after_a_grant_ends_is_standing(
        self,
        service: AccessService,
        standing: StandingService,
        pharmacy: MemoryTarget,
        clock: ManualClock,
    ) -> None:
        pharmacy.members[READ].add("amira")  # she had it before asking
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), WHY)
        service.approve(req.id, BEN)
        assert "amira" not in {f.account for f in standing.find_standing().found}
        clock.advance(timedelta(minutes=31))
        service.expire_due()  # pre-existing access is left in place at the end...
        assert "amira" in {f.account for f in standing.find_standing().found}  # ...and reported

    def test_an_unreadable_target_is_reported_not_guessed(
        self, standing: StandingService, pharmacy: MemoryTarget
    ) -> None:
        pharmacy.down = True
        report = standing.find_standing()
        assert "pharmacy-db" in report.unreadable
        assert report.found == []


class TestRemove:
    def test_removed_where_policy_says_except_allowed_accounts(
        self,
        db,  # type: ignore[no-untyped-def]
        policy: Policy,
        targets: dict[str, MemoryTarget],
        pharmacy: MemoryTarget,
        clock: ManualClock,
    ) -> None:
        strict = with_standing(policy, "remove", allowed=["wardkey_svc"])
        service = AccessService(CoreDeps(db, strict, targets, clock, pause=lambda _: None))

        report = StandingService(service).find_standing()

        assert [(f.account, f.removed) for f in report.found] == [("zoe", True)]
        assert not pharmacy.holds("zoe", READ)
        assert pharmacy.holds("wardkey_svc", READ)
        with service.db.read() as session:
            row = session.scalars(select(StandingAccess)).one()
        assert row.removed_by_wardkey and row.cleared_at is not None
        assert "standing.removed" in audit_actions(service)


class TestOnePerHour:
    @pytest.mark.parametrize(
        "db", [pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"], indirect=True
    )
    def test_one_worker_looks_each_hour(
        self, standing: StandingService, pharmacy: MemoryTarget, clock: ManualClock
    ) -> None:
        assert standing.standing_due() is not None
        assert standing.standing_due() is None
        clock.advance(timedelta(hours=1))
        assert standing.standing_due() is not None


class TestCsvExport:
    # Account names come from the target: whoever can create one there chooses the text.
    HOSTILE = ('=HYPERLINK("http://evil.example","x")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)")

    def test_an_account_named_like_a_formula_stays_text_in_the_spreadsheet(
        self,
        service: AccessService,
        standing: StandingService,
        pharmacy: MemoryTarget,
        clock: ManualClock,
        policy_file: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        from app.cli import main

        pharmacy.members[READ] |= {*self.HOSTILE, "\tTAB", "\rCR"}
        clock.set(datetime.now(UTC))  # a look the report takes as recent (by the wall clock)
        standing.find_standing()  # the hourly look records them
        monkeypatch.setenv("WARDKEY_POLICY", str(policy_file))
        monkeypatch.setenv("DATABASE_URL", service.db.url.render_as_string(hide_password=False))

        assert main(["report", "standing", "--no-look", "--format", "csv"]) == 0

        rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
        accounts = {row[2] for row in rows[1:]}
        assert {"'" + name for name in self.HOSTILE} <= accounts
        assert {"'\tTAB", "'\rCR", "zoe", "wardkey_svc"} <= accounts  # plain names untouched
        assert all(cell[:1] not in "=+-@\t\r" for row in rows for cell in row if cell)


class TestStandingReport:
    def test_only_admins_may_see_it(self, standing: StandingService) -> None:
        with pytest.raises(NotAllowed):
            standing.standing_holders(AMIRA)
        assert standing.standing_holders(GITA) == []


class TestInSlack(SlackOnSqlite):
    def test_standing_command_for_admins(self, slack: RunningApp, service: AccessService) -> None:
        slack.command("/jit", "standing", "U0AMIRA")
        slack.command("/jit", "standing", "U0GITA")
        replies = slack.replies(2)
        assert any("Only WardKey admins" in r for r in replies)
        # No look was ever made: nothing is called clean, each target is named as unread.
        (told,) = [r for r in replies if "Only WardKey admins" not in r]
        assert "every holder had a grant" not in told
        assert "Not checked" in told and "`pharmacy-db` (never read)" in told

    def test_standing_command_after_a_look_says_clean_only_for_what_it_read(
        self, slack: RunningApp, standing: StandingService
    ) -> None:
        standing.find_standing()  # the hourly look reads every target
        slack.command("/jit", "standing", "U0GITA")
        (told,) = slack.replies(1)
        assert "No standing access found at the last look" in told and "Not checked" not in told


class TestStandingReportCommand:
    def test_reads_the_targets_and_lists_holders_without_a_grant(
        self,
        db: Database,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        from app.cli import main
        from app.demo.webhook_target import WebhookTarget
        from tests.fakes.big_trust import ENTITLEMENT, KEY_VARIABLE, write_big_trust

        key = "k" * 32
        console = WebhookTarget(key.encode()).start()
        try:
            console.members[ENTITLEMENT] |= {"dba_old", "contractor7"}
            policy = tmp_path / "policy.yaml"
            write_big_trust(policy, console.url, people=2)
            monkeypatch.setenv("WARDKEY_POLICY", str(policy))
            monkeypatch.setenv("DATABASE_URL", db.url.render_as_string(hide_password=False))
            monkeypatch.setenv(KEY_VARIABLE, key)

            assert main(["report", "standing"]) == 0
            out = capsys.readouterr().out
            assert "epr  WARD_ADMIN" in out
            assert "contractor7" in out and "dba_old" in out
            assert "2 accounts hold access without a WardKey grant" in out

            console.members[ENTITLEMENT].discard("dba_old")  # removed by hand
            assert main(["report", "standing", "--no-look", "--format", "csv"]) == 0
            assert "dba_old" in capsys.readouterr().out  # the last look still had it
            assert main(["report", "standing", "--format", "csv"]) == 0
            rows = capsys.readouterr().out.splitlines()
            assert rows[0] == "target,entitlement,account,first_seen,last_seen"
            assert [r.split(",")[2] for r in rows[1:]] == ["contractor7"]
        finally:
            console.stop()
