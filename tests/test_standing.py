"""Reconcile's look for standing privilege: access on a target that no grant covers is
recorded, audited, reported to security, and removed where the target's policy says so."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from app.clock import ManualClock
from app.policy import Policy
from app.service import AccessService
from app.store.models import StandingAccess
from tests.conftest import AMIRA, BEN, audit_actions
from tests.fakes.memory_adapter import MemoryTarget

WHY = "fix stuck order set on ward 12"
READ = "pharmacy_read"


def with_standing(policy: Policy, mode: str, allowed: list[str] | None = None) -> Policy:
    target = policy.targets["pharmacy-db"].model_copy(
        update={"standing": mode, "standing_allowed": allowed or []}
    )
    return policy.model_copy(update={"targets": {**policy.targets, "pharmacy-db": target}})


@pytest.fixture
def policy_file() -> Path:
    return Path(__file__).parent / "data" / "ward_policy.yaml"


@pytest.fixture
def pharmacy(targets: dict[str, MemoryTarget]) -> MemoryTarget:
    db = targets["pharmacy-db"]
    db.members[READ] |= {"zoe", "wardkey_svc"}  # zoe: a DBA's old permanent grant
    return db


class TestReportOnly:
    def test_found_once_left_in_place_and_cleared_when_gone(
        self, service: AccessService, pharmacy: MemoryTarget, clock: ManualClock
    ) -> None:
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), WHY)
        service.approve(req.id, BEN)  # amira holds it through a grant: covered

        report = service.find_standing()

        assert sorted(f.account for f in report.found) == ["wardkey_svc", "zoe"]
        assert not any(f.removed for f in report.found)
        assert pharmacy.holds("zoe", READ)
        again = service.find_standing()
        assert (again.found, again.still) == ([], 2)

        pharmacy.members[READ].discard("zoe")  # someone took it away by hand
        clock.advance(timedelta(minutes=5))
        cleared = service.find_standing()
        assert [f.account for f in cleared.cleared] == ["zoe"]
        assert audit_actions(service).count("standing.found") == 2
        assert audit_actions(service).count("standing.cleared") == 1

    def test_access_left_after_a_grant_ends_is_standing(
        self, service: AccessService, pharmacy: MemoryTarget, clock: ManualClock
    ) -> None:
        pharmacy.members[READ].add("amira")  # she had it before asking
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), WHY)
        service.approve(req.id, BEN)
        assert "amira" not in {f.account for f in service.find_standing().found}
        clock.advance(timedelta(minutes=31))
        service.expire_due()  # pre-existing access is left in place at the end...
        assert "amira" in {f.account for f in service.find_standing().found}  # ...and reported

    def test_an_unreadable_target_is_reported_not_guessed(
        self, service: AccessService, pharmacy: MemoryTarget
    ) -> None:
        pharmacy.down = True
        report = service.find_standing()
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
        service = AccessService(db, strict, targets, clock, pause=lambda _: None)

        report = service.find_standing()

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
        self, service: AccessService, pharmacy: MemoryTarget, clock: ManualClock
    ) -> None:
        assert service.standing_due() is not None
        assert service.standing_due() is None
        clock.advance(timedelta(hours=1))
        assert service.standing_due() is not None


class TestCsvExport:
    # Account names come from the target: whoever can create one there chooses the text.
    HOSTILE = ('=HYPERLINK("http://evil.example","x")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)")

    def test_an_account_named_like_a_formula_stays_text_in_the_spreadsheet(
        self,
        service: AccessService,
        pharmacy: MemoryTarget,
        clock: ManualClock,
        policy_file: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        from app.cli import main

        pharmacy.members[READ] |= {*self.HOSTILE, "\tTAB", "\rCR"}
        clock.set(datetime.now(UTC))  # a look the report takes as recent (by the wall clock)
        service.find_standing()  # the hourly look records them
        monkeypatch.setenv("WARDKEY_POLICY", str(policy_file))
        monkeypatch.setenv("DATABASE_URL", service.db.url.render_as_string(hide_password=False))

        assert main(["report", "standing", "--no-look", "--format", "csv"]) == 0

        rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
        accounts = {row[2] for row in rows[1:]}
        assert {"'" + name for name in self.HOSTILE} <= accounts
        assert {"'\tTAB", "'\rCR", "zoe", "wardkey_svc"} <= accounts  # plain names untouched
        assert all(cell[:1] not in "=+-@\t\r" for row in rows for cell in row if cell)
