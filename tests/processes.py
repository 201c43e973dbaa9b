"""Real `wardkey` processes for the tests: a free port, the environment they are given, and
waiting until `serve` answers."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import httpx

from app.demo.slack_fake import FakeSlack
from app.store import upgrade
from tests.conftest import HERE
from tests.slack_harness import SIGNING_SECRET


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wardkey_env(tmp_path: Path, fake: FakeSlack, **more: str) -> dict[str, str]:
    """What a process is started with: this machine's environment without Slack or WardKey
    settings, a migrated SQLite database of the test's own, the test trust's policy (whose
    targets name secrets the adapters read only when asked to act) and the fake Slack."""
    db = f"sqlite:///{tmp_path / 'wardkey.db'}"
    upgrade(db)
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "WARDKEY_"))},
        "DATABASE_URL": db,
        "WARDKEY_POLICY": str(HERE / "data" / "ward_policy.yaml"),
        "PHARMACY_DB_PASSWORD": "not-used-here",
        "DIRECTORY_PASSWORD": "not-used-here",
        "SLACK_BOT_TOKEN": fake.token,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": fake.api_url,
        **more,
    }


def wait_until_healthy(url: str, process: subprocess.Popen[str], seconds: float = 30) -> None:
    """Until `serve` at `url` answers /healthz; fails with its output if it exits first."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        assert time.monotonic() < deadline, "serve did not start"
        time.sleep(0.1)


# How long a test waits for a process it stops with SIGTERM before killing it. A stop takes up
# to 5 s for requests in flight and 2 s for work still running (docs/operations.md), longer on a
# loaded machine; tests/cli/test_shutdown.py checks the stop itself.
STOP_GRACE_SECONDS = 30


def stop(*processes: subprocess.Popen[bytes] | subprocess.Popen[str] | None) -> None:
    """Stop the test's processes as an operator would (SIGTERM), all at once; any still running
    after STOP_GRACE_SECONDS is killed, so none outlives its test."""
    running = [p for p in processes if p is not None and p.poll() is None]
    for process in running:
        process.terminate()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for process in running:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
