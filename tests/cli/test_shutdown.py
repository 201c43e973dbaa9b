"""Stopped as Kubernetes and systemd stop a process (SIGTERM), `serve` and `worker` end cleanly:
exit status 0, the requests being answered finished, and what the inbox had finished written
down at once (not left for another process to take over when its claim lapses)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from app.demo.slack_driver import SlackDriver
from app.demo.slack_fake import FakeSlack
from app.store import Database, upgrade
from app.store.models import SeenRequest
from tests.conftest import HERE
from tests.slack_harness import SIGNING_SECRET, WARD_USERS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    slack = FakeSlack().start()
    for user in WARD_USERS:
        slack.add_user(user)
    yield slack
    slack.stop()


@pytest.fixture
def env(tmp_path: Path, fake: FakeSlack) -> dict[str, str]:
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
    }


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
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert serve.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)
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
