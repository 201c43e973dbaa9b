"""Stopped as Kubernetes and systemd stop a process (SIGTERM), `serve` and `worker` end cleanly:
exit status 0, the requests being answered finished, and what the inbox had finished written
down at once (not left for another process to take over when its claim lapses)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from app.demo.slack_driver import SlackDriver
from app.demo.slack_fake import FakeSlack
from app.store import Database
from app.store.models import SeenRequest
from tests.processes import free_port, wait_until_healthy, wardkey_env
from tests.slack_harness import SIGNING_SECRET


@pytest.fixture
def env(tmp_path: Path, fake: FakeSlack) -> dict[str, str]:
    return wardkey_env(tmp_path, fake)


def stopped(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=30)
    return process.returncode, out


def test_serve_stopped_by_sigterm_ends_cleanly_and_writes_down_what_it_finished(
    env: dict[str, str], fake: FakeSlack
) -> None:
    port = free_port()
    serve = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(port), "--host", "127.0.0.1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, serve)
        slack = SlackDriver(url, fake, httpx.Client(timeout=10), SIGNING_SECRET)
        answer = slack.command("/jit", "help", "U0AMIRA")
        assert answer.status_code == 200
        # Answered, caused no work: marked done on the inbox's next beat, seconds from now.
        code, log = stopped(serve)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait(timeout=10)
    assert code == 0, log[-3000:]
    assert "event=stopping signal=SIGTERM process=serve" in log
    db = Database(env["DATABASE_URL"])
    try:
        with db.read() as session:
            states = session.scalars(sa.select(SeenRequest.state)).all()
    finally:
        db.dispose()
    assert states == ["done"], log[-3000:]


def test_a_worker_stopped_by_sigterm_ends_cleanly(env: dict[str, str], tmp_path: Path) -> None:
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "app", "worker"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while "event=sweeps_scheduled" not in log_path.read_text():
            assert worker.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)
    log = log_path.read_text()
    assert code == 0, log[-3000:]
    assert "event=stopping signal=SIGTERM process=worker" in log
