"""`wardkey report standing` as the information-governance lead runs it: the report never calls
a target clean that it did not read, names each one with its last full read, and exits 3.

The targets are real signed-webhook consoles on loopback (the reference receiver): one that
answers, and one whose server is down."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from app.access import AccessService
from app.adapters.registry import build_adapters
from app.cli import main
from app.clock import ManualClock
from app.demo.webhook_target import WebhookTarget
from app.lifecycle.deps import CoreDeps
from app.policy import Policy, load_policy
from app.standing.service import StandingService
from app.store import Database
from tests.conftest import HERE

POLICY = HERE / "data" / "ward_policy.yaml"
READ = "pharmacy_read"
KEY = b"report-standing-test-key"


@pytest.fixture
def pharmacy() -> Iterator[WebhookTarget]:
    console = WebhookTarget(KEY, "pharmacy-db").start()
    yield console
    console.stop()


@pytest.fixture
def directory() -> Iterator[WebhookTarget]:
    console = WebhookTarget(KEY, "directory").start()
    yield console
    console.stop()


@pytest.fixture
def console_policy(tmp_path: Path, pharmacy: WebhookTarget, directory: WebhookTarget) -> Path:
    """The ward's policy with its two targets reached as signed-webhook consoles."""
    manifest = yaml.safe_load(POLICY.read_text())
    for name, console in (("pharmacy-db", pharmacy), ("directory", directory)):
        target = manifest["targets"][name]
        target.update(
            kind="webhook",
            settings={"url": console.url},
            secrets={"signing_key": "WARDKEY_TEST_CONSOLE_KEY"},
            insecure=True,
        )
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


@pytest.fixture
def cli_env(db: Database, console_policy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARDKEY_POLICY", str(console_policy))
    monkeypatch.setenv("WARDKEY_TEST_CONSOLE_KEY", KEY.decode())
    monkeypatch.setenv("DATABASE_URL", db.url.render_as_string(hide_password=False))


@pytest.fixture
def now_clock(clock: ManualClock) -> ManualClock:
    """The report judges how old a look is by the wall clock: looks are recorded at it."""
    clock.set(datetime.now(UTC).replace(microsecond=0))
    return clock


@pytest.fixture
def standing(
    db: Database, console_policy: Path, clock: ManualClock, cli_env: None
) -> StandingService:
    """The standing-privilege service reading the same consoles the command line does."""
    policy: Policy = load_policy(console_policy)
    core = AccessService(CoreDeps(db, policy, build_adapters(policy), clock, pause=lambda _: None))
    return StandingService(core)


@pytest.mark.usefixtures("cli_env")
class TestReportStanding:
    def test_all_targets_read_and_clean_says_so_and_exits_0(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["report", "standing"]) == 0
        out = capsys.readouterr().out
        assert "No standing access: every account holding access on a target has a grant." in out
        assert "Targets read: directory (" in out and "pharmacy-db (" in out
        assert "NOT CHECKED" not in out

    def test_an_unreadable_target_is_named_with_its_last_read_and_exits_3(
        self,
        capsys: pytest.CaptureFixture[str],
        standing: StandingService,
        directory: WebhookTarget,
        now_clock: ManualClock,
    ) -> None:
        # Read in full an hour ago; now the directory is down.
        now_clock.advance(timedelta(hours=-1))
        standing.find_standing()
        earlier = now_clock.now().astimezone(standing.policy.zone)
        directory.stop()

        assert main(["report", "standing"]) == 3

        out = capsys.readouterr().out
        assert "every account" not in out  # never the clean sentence
        assert "No standing access on the targets checked (pharmacy-db)." in out
        assert "NOT CHECKED: 1 target; nothing is known of them:" in out
        assert (
            "directory: not checked: could not read it now (" in out
            and f"); last full read {earlier:%Y-%m-%d %H:%M}" in out
        )

    def test_a_target_never_read_is_not_checked(
        self,
        capsys: pytest.CaptureFixture[str],
        pharmacy: WebhookTarget,
        directory: WebhookTarget,
    ) -> None:
        pharmacy.members[READ].add("zoe")
        directory.stop()
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
        standing: StandingService,
        now_clock: ManualClock,
    ) -> None:
        standing.find_standing()
        assert main(["report", "standing", "--no-look"]) == 0
        out = capsys.readouterr().out
        assert "No standing access: every account holding access on a target has a grant." in out
        at = now_clock.now().astimezone(standing.policy.zone)
        assert f"pharmacy-db ({at:%Y-%m-%d %H:%M})" in out

    def test_no_look_at_an_old_look_says_since_when(
        self,
        capsys: pytest.CaptureFixture[str],
        standing: StandingService,
        now_clock: ManualClock,
    ) -> None:
        now_clock.advance(timedelta(hours=-3))  # the hourly check has stopped since
        standing.find_standing()
        then = now_clock.now().astimezone(standing.policy.zone)
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
