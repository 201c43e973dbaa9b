"""The sweeps a real `wardkey worker` and `wardkey serve` run: every job the code declares (`JOBS`
in an app/…/jobs.py) is registered with its interval, and the controls the docs promise
(service-account attestation, vendors' contracts, signed audit checkpoints) really happen in a
running worker, not only when a test calls them."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import get_args

import pytest

from app.demo.slack_fake import FakeSlack
from app.jobs import Cadence, Job
from tests.conftest import HERE
from tests.processes import wardkey_env

ROOT = HERE.parent
# Not a sweep: what a process does once, before the sweeps start ticking (app/grants/jobs.py).
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
# The sweeps operators know by name (the `sweeps_scheduled` log line, the docs), each with the
# cadence it has always had, wherever its code lives.
KNOWN_SWEEPS = {
    "expire": "expiry",
    "intake": "expiry",
    "deliver": "expiry",
    "warn": "sweep",
    "escalate": "sweep",
    "time_out": "sweep",
    "contracts": "sweep",
    "retry_revokes": "sweep",
    "probe": "probe",
    "reconcile": "takeover",
    "checkpoint": "checkpoint",
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
    every = {name: cadences[0] for name, cadences in declared_jobs().items()}
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
    def test_every_known_sweep_is_declared_with_its_cadence(self) -> None:
        declared = {name: cadences[0] for name, cadences in declared_jobs().items()}
        assert {name: declared.get(name) for name in KNOWN_SWEEPS} == KNOWN_SWEEPS
        # The controls the docs promise are among them; catching up is not a sweep.
        assert {"checkpoint", "contracts", "expire", "identities"} <= set(declared)
        assert not AT_START_UP & set(declared)

    def test_every_feature_job_has_a_name_of_its_own_and_a_cadence(self) -> None:
        declared = declared_jobs()
        # The features that declare jobs today; identities is a control the docs promise.
        features = {"digest", "standing", "identities", "review", "tickets", "ticket_notes"}
        features |= {"lockdowns", "break_glass_waits", "oncall_sources", "directory_groups"}
        assert features | set(KNOWN_SWEEPS) <= set(declared)
        twice = [name for name, cadences in declared.items() if len(cadences) > 1]
        assert twice == [], f"declared more than once: {twice}"
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
