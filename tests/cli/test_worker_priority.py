"""A `wardkey worker` lowers its own CPU priority at start (WARDKEY_WORKER_NICE, 10 unless
set), so on a host it shares with `serve` Slack's acks come first; 0 leaves it as started."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.demo.slack_fake import FakeSlack
from tests.processes import wardkey_env


@pytest.fixture
def env(tmp_path: Path, fake: FakeSlack) -> dict[str, str]:
    return wardkey_env(tmp_path, fake)


def nice_of_worker(env: dict[str, str], log: Path) -> int:
    """The nice value of a worker started with `env`, once it has scheduled its sweeps."""
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "app", "worker"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while "event=sweeps_scheduled" not in log.read_text():
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        return os.getpriority(os.PRIO_PROCESS, worker.pid)
    finally:
        worker.terminate()
        worker.wait(timeout=10)


def test_a_worker_gives_way_to_acks_by_default(env: dict[str, str], tmp_path: Path) -> None:
    started_at = os.getpriority(os.PRIO_PROCESS, 0)
    log = tmp_path / "worker.log"
    assert nice_of_worker(env, log) == min(19, started_at + 10)
    assert f"event=worker_priority nice={min(19, started_at + 10)}" in log.read_text()


def test_an_operator_may_leave_it_as_started(env: dict[str, str], tmp_path: Path) -> None:
    started_at = os.getpriority(os.PRIO_PROCESS, 0)
    log = tmp_path / "worker.log"
    assert nice_of_worker({**env, "WARDKEY_WORKER_NICE": "0"}, log) == started_at
    assert "event=worker_priority" not in log.read_text()
