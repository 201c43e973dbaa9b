"""The sweeps a real `wardkey worker` and `wardkey serve` run: every sweep the code defines (a
feature's declared job, or a marked method of Sweeps) is registered with its interval, and the
controls the docs promise (service-account attestation, signed audit checkpoints) really happen
in a running worker, not only when a test calls them."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import get_args

import pytest

from app.demo.slack_fake import FakeSlack
from app.jobs import Cadence, Job
from app.scheduler import Sweeps, cadence_of
from tests.conftest import HERE
from tests.processes import wardkey_env

ROOT = HERE.parent
# Not a sweep: what a process does once, before the sweeps start ticking.
AT_START_UP = {"catch_up"}
SWEEP_SECONDS, EXPIRY_SECONDS, CHECKPOINT_SECONDS = 1, 2, 1
TAKEOVER_SECONDS, PROBE_SECONDS = 3, 4
SECONDS = {
    "sweep": SWEEP_SECONDS,
    "expiry": EXPIRY_SECONDS,
    "checkpoint": CHECKPOINT_SECONDS,
    "takeover": TAKEOVER_SECONDS,
    "probe": PROBE_SECONDS,
}


def public_sweeps() -> dict[str, str | None]:
    """Every public method of Sweeps, with the cadence it is marked with (None: unmarked)."""
    return {
        name: cadence_of(member)
        for name, member in inspect.getmembers(Sweeps, inspect.isfunction)
        if not name.startswith("_") and name not in AT_START_UP
    }


def declared_jobs() -> dict[str, list[str]]:
    """Every job a feature declares next to its code (`JOBS` in any app/…/jobs.py), found here
    by reading app/ and not through the scheduler, so a job it fails to gather is missed:
    {name: [its cadence, once per declaration]}."""
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / "app").rglob("jobs.py")):
        module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for job in getattr(module, "JOBS", ()):
            assert isinstance(job, Job), f"{module.__name__}.JOBS holds {job!r}, not a Job"
            found.setdefault(job.name, []).append(job.cadence)
    return found


def expected_jobs(checkpoints: bool) -> dict[str, float]:
    every = {
        **{name: cadence for name, cadence in public_sweeps().items() if cadence is not None},
        **{name: cadences[0] for name, cadences in declared_jobs().items()},
    }
    return {
        name: SECONDS[cadence]
        for name, cadence in every.items()
        if checkpoints or cadence != "checkpoint"
    }


def scheduled_jobs(log: Path, process: subprocess.Popen[bytes]) -> tuple[dict[str, float], str]:
    """The jobs the process says it scheduled (its one `event=sweeps_scheduled` line)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = re.search(r"event=sweeps_scheduled jobs=(\S*) checkpoints=(\w+)", log.read_text())
        if found:
            jobs = dict(item.split(":") for item in found.group(1).split(",") if item)
            return {name: float(seconds.rstrip("s")) for name, seconds in jobs.items()}, found[2]
        assert process.poll() is None, log.read_text()
        time.sleep(0.1)
    raise AssertionError(f"no sweeps_scheduled line in the log:\n{log.read_text()}")


@pytest.fixture
def env(tmp_path: Path, fake: FakeSlack) -> dict[str, str]:
    return wardkey_env(
        tmp_path,
        fake,
        WARDKEY_SWEEP_SECONDS=str(SWEEP_SECONDS),
        WARDKEY_EXPIRY_SWEEP_SECONDS=str(EXPIRY_SECONDS),
        WARDKEY_CHECKPOINT_SECONDS=str(CHECKPOINT_SECONDS),
        WARDKEY_TAKEOVER_SECONDS=str(TAKEOVER_SECONDS),
        WARDKEY_PROBE_SECONDS=str(PROBE_SECONDS),
    )


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "app", *command], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(timeout=10)


class TestEverySweepIsScheduled:
    def test_every_public_sweep_says_how_often_it_runs(self) -> None:
        unmarked = [name for name, cadence in public_sweeps().items() if cadence is None]
        assert unmarked == [], f"mark these with @sweep(...) so they are scheduled: {unmarked}"
        # The controls the docs promise are among them.
        assert {"checkpoint", "contracts", "expire"} <= set(public_sweeps())

    def test_every_feature_job_has_a_name_of_its_own_and_a_cadence(self) -> None:
        declared = declared_jobs()
        # The features that declare jobs today; identities is a control the docs promise.
        features = {"digest", "standing", "identities", "review", "tickets", "ticket_notes"}
        features |= {"lockdowns", "break_glass_waits", "oncall_sources", "directory_groups"}
        assert features <= set(declared)
        twice = [name for name, cadences in declared.items() if len(cadences) > 1]
        assert twice == [], f"declared more than once: {twice}"
        clash = sorted(set(declared) & set(public_sweeps()))
        assert clash == [], f"a feature's job and a sweep of Sweeps share a name: {clash}"
        unknown = {n: c for n, (c,) in declared.items() if c not in get_args(Cadence)}
        assert unknown == {}, unknown

    def test_a_worker_runs_every_sweep_and_writes_signed_checkpoints(
        self, env: dict[str, str], fake: FakeSlack, tmp_path: Path
    ) -> None:
        vault = tmp_path / "vault"
        vault.mkdir()
        env = {**env, "WARDKEY_CHECKPOINT_DIR": str(vault), "WARDKEY_CHECKPOINT_KEY": "k" * 32}
        log = tmp_path / "worker.log"
        worker = start(["worker"], env, log)
        try:
            jobs, checkpoints = scheduled_jobs(log, worker)
            assert jobs == expected_jobs(checkpoints=True)
            assert checkpoints == "on"
            # The checkpoint sweep really writes, and the identities sweep really asks the
            # owner of svc-lab (never attested) whether it is still needed.
            deadline = time.monotonic() + 20
            while not list(vault.glob("*.json")):
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            # (Other sweeps may speak first, e.g. the digest when this runs at 08:00.)
            asked = fake.wait_for("chat.postMessage", 1, timeout=20, channel="U0DEV")
            assert "svc-lab" in asked[0].args["text"]
        finally:
            stop(worker)
        verified = subprocess.run(
            [sys.executable, "-m", "app", "audit", "verify"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "signed checkpoint" in verified.stdout

    def test_serve_runs_every_sweep_but_writes_no_checkpoint_it_was_not_given_a_place_for(
        self, env: dict[str, str], tmp_path: Path
    ) -> None:
        log = tmp_path / "serve.log"
        serve = start(["serve", "--port", "0", "--host", "127.0.0.1"], env, log)
        try:
            jobs, checkpoints = scheduled_jobs(log, serve)
        finally:
            stop(serve)
        assert jobs == expected_jobs(checkpoints=False)
        assert checkpoints == "off"
