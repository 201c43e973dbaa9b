"""`wardkey report standing` as the information-governance lead runs it: the report never calls
a target clean that it did not read, names each one with its last full read, and exits 3."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app.adapters.base import AdapterError
from app.cli import main
from app.clock import ManualClock
from app.service import AccessService
from app.store import Database
from tests.fakes.memory_adapter import MemoryTarget

POLICY = Path(__file__).parent / "data" / "ward_policy.yaml"
READ = "pharmacy_read"


class BrokenTarget(MemoryTarget):
    """A target whose member lists cannot be read (its server is down)."""

    def list_members(self, entitlement: str) -> set[str]:
        raise AdapterError("connection refused")


@pytest.fixture
def cli_env(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARDKEY_POLICY", str(POLICY))
    monkeypatch.setenv("DATABASE_URL", db.url.render_as_string(hide_password=False))


@pytest.fixture
def now_clock(clock: ManualClock) -> ManualClock:
    """The report judges how old a look is by the wall clock: looks are recorded at it."""
    clock.set(datetime.now(UTC).replace(microsecond=0))
    return clock


def looks_now(monkeypatch: pytest.MonkeyPatch, targets: dict[str, MemoryTarget]) -> None:
    """`report standing` without --no-look reads these stand-ins instead of the real targets."""
    monkeypatch.setattr("app.adapters.registry.build_adapters", lambda policy: dict(targets))


@pytest.mark.usefixtures("cli_env")
class TestReportStanding:
    def test_all_targets_read_and_clean_says_so_and_exits_0(
        self,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        targets: dict[str, MemoryTarget],
    ) -> None:
        looks_now(monkeypatch, targets)
        assert main(["report", "standing"]) == 0
        out = capsys.readouterr().out
        assert "No standing access: every account holding access on a target has a grant." in out
        assert "Targets read: directory (" in out and "pharmacy-db (" in out
        assert "NOT CHECKED" not in out

    def test_an_unreadable_target_is_named_with_its_last_read_and_exits_3(
        self,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        service: AccessService,
        targets: dict[str, MemoryTarget],
        now_clock: ManualClock,
    ) -> None:
        # Read in full an hour ago; now the directory is down.
        now_clock.advance(timedelta(hours=-1))
        service.find_standing()
        earlier = now_clock.now().astimezone(service.policy.zone)
        looks_now(monkeypatch, {**targets, "directory": BrokenTarget()})

        assert main(["report", "standing"]) == 3

        out = capsys.readouterr().out
        assert "every account" not in out  # never the clean sentence
        assert "No standing access on the targets checked (pharmacy-db)." in out
        assert "NOT CHECKED: 1 target; nothing is known of them:" in out
        assert (
            "directory: not checked: could not read it now (AdapterError: connection refused); "
            f"last full read {earlier:%Y-%m-%d %H:%M}" in out
        )

    def test_a_target_never_read_is_not_checked(
        self,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        targets: dict[str, MemoryTarget],
    ) -> None:
        targets["pharmacy-db"].members[READ] |= {"zoe"}
        looks_now(monkeypatch, {**targets, "directory": BrokenTarget()})
        assert main(["report", "standing"]) == 3
        out = capsys.readouterr().out
        assert "zoe" in out and "1 account holds access without a WardKey grant." in out
        assert "directory: not checked: could not read it now" in out
        assert "last full read never" in out

    def test_no_look_before_any_look_is_not_clean(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["report", "standing", "--no-look"]) == 3
        out = capsys.readouterr().out
        assert "No standing access" not in out
        assert "NOT CHECKED: 2 targets" in out
        assert "directory: not checked: never read; last full read never" in out
        assert "pharmacy-db: not checked: never read; last full read never" in out

    def test_no_look_after_a_recent_look_is_its_evidence(
        self,
        capsys: pytest.CaptureFixture[str],
        service: AccessService,
        now_clock: ManualClock,
    ) -> None:
        service.find_standing()
        assert main(["report", "standing", "--no-look"]) == 0
        out = capsys.readouterr().out
        assert "No standing access: every account holding access on a target has a grant." in out
        at = now_clock.now().astimezone(service.policy.zone)
        assert f"pharmacy-db ({at:%Y-%m-%d %H:%M})" in out

    def test_no_look_at_an_old_look_says_since_when(
        self,
        capsys: pytest.CaptureFixture[str],
        service: AccessService,
        now_clock: ManualClock,
    ) -> None:
        now_clock.advance(timedelta(hours=-3))  # the hourly check has stopped since
        service.find_standing()
        then = now_clock.now().astimezone(service.policy.zone)
        assert main(["report", "standing", "--no-look", "--format", "csv"]) == 3
        captured = capsys.readouterr()
        assert captured.out.splitlines() == ["target,entitlement,account,first_seen,last_seen"]
        assert (
            f"wardkey: pharmacy-db: not checked: no recent look; last full read "
            f"{then:%Y-%m-%d %H:%M}" in captured.err
        )

    def test_help_documents_the_exit_codes(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit):
            main(["report", "standing", "--help"])
        out = capsys.readouterr().out
        assert "exit codes:" in out
        assert "3  some targets were not checked" in out
