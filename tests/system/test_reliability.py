"""Faults a hospital will meet, shown on real processes and a real PostgreSQL: a database that
takes the connection and never answers, a database that goes away for a while, a target that
hangs, a target that is down and comes back. Each story says what the operator sees (one line,
not a traceback or a hang) and that other work does not wait for the broken part."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import yaml

from app import audit
from app.access import AccessService
from app.adapters.registry import build_adapters
from app.clock import ManualClock
from app.demo.slack_fake import FakeSlack, SlackUser
from app.demo.webhook_target import WebhookTarget
from app.lifecycle.deps import CoreDeps
from app.policy import load_policy
from app.store import AuditEvent, Database
from app.store.models import AccessRequest, OutboxItem, OutboxState, RequestState
from app.web import WardKeyWSGI
from tests.conftest import HERE, fresh_postgres_schema
from tests.fakes.big_trust import APPROVER, staff
from tests.processes import stop
from tests.relay import Relay

SCHEMA = os.environ.get("WARDKEY_TEST_SCHEMA", "wardkey") + "_reliability"
KEYS = {"epr": "e" * 32, "lab": "l" * 32}
# How long the outages in the fault tests last. The suite uses short ones; bench/outages.py
# runs the same tests with the (a target down 5 minutes, Slack down a minute).
TARGET_OUTAGE_SECONDS = float(os.environ.get("WARDKEY_FAULT_TARGET_OUTAGE", "10"))
SLACK_OUTAGE_SECONDS = float(os.environ.get("WARDKEY_FAULT_SLACK_OUTAGE", "12"))
ROLE, ENTITLEMENT, STAFF = "ward-admin", "WARD_ADMIN", ["staff"]
RISKS = (("clinical", "low"), ("admin", "medium"), ("engineering", "high"))
# Hang guards only: each command below fails within its connect time-out (5 s by default);
# before, they waited for ever. Generous, because four processes start at once and a busy
# machine takes many seconds to start each (30 s was overrun with other test runs beside).
HANG_GUARD_SECONDS = 90


# ------------------------------------------------------------------ stand-ins and helpers


@pytest.fixture
def silent_database() -> Iterator[str]:
    """A database server that takes the connection and never says a word (a hung host)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{listener.getsockname()[1]}/test"
    finally:
        listener.close()
        for conn in held:
            conn.close()


def write_policy(path: Path, urls: dict[str, str], people: int, timeout: float = 10.0) -> None:
    """Two ward consoles on signed webhooks, each tried once per revoke (no retries), so a
    hung one is given up on after its time-out."""
    targets = {
        name: {
            "kind": "webhook",
            "settings": {"url": url, "timeout_seconds": timeout},
            "attempts": 1,
            "insecure": True,
            "secrets": {"signing_key": f"{name.upper()}_KEY"},
            "account": {"template": "{local}"},
            "roles": {
                ROLE: {"path": "clinical", "entitlement": ENTITLEMENT, "eligible": ["staff"]}
            },
        }
        for name, url in urls.items()
    }
    policy = {
        "version": 1,
        "timezone": "Europe/London",
        "channels": {"security_alerts": "C0SECURITY", "manager_reviews": "C0MANAGERS"},
        "admins": "admins",
        "groups": {
            "admins": [APPROVER.email],
            "leads": [APPROVER.email],
            "staff": [staff(n).email for n in range(people)],
        },
        "paths": {
            **{
                name: {"risk": risk, "approvers": [{"group": "leads"}], "max_duration": "1d"}
                for name, risk in (
                    ("clinical", "low"),
                    ("admin", "medium"),
                    ("engineering", "high"),
                )
            },
            "breakglass": {
                "risk": "critical",
                "max_duration": "1h",
                "reviewers": [{"group": "leads"}],
                "review_within": "1d",
            },
        },
        "targets": targets,
    }
    path.write_text(yaml.safe_dump(policy))


class Ward:
    """A real PostgreSQL schema, the fake Slack, webhook consoles and the environment a
    `wardkey` process needs to use them."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, people: int) -> None:
        self.db = fresh_postgres_schema(SCHEMA)
        self.tmp = tmp_path
        self.consoles = {
            name: WebhookTarget(key.encode(), name=name).start() for name, key in KEYS.items()
        }
        self.slack = FakeSlack(token="xoxb-ward").start()
        self.policy_path = tmp_path / "policy.yaml"
        write_policy(self.policy_path, {n: c.url for n, c in self.consoles.items()}, people)
        for name, key in KEYS.items():
            monkeypatch.setenv(f"{name.upper()}_KEY", key)
        self.policy = load_policy(self.policy_path)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "WARDKEY_"))},
            "DATABASE_URL": self.db.url.render_as_string(hide_password=False),
            "WARDKEY_POLICY": str(self.policy_path),
            "SLACK_BOT_TOKEN": "xoxb-ward",
            "SLACK_SIGNING_SECRET": "s" * 32,
            "SLACK_API_URL": self.slack.api_url,
            "WARDKEY_EXPIRY_SWEEP_SECONDS": "0.2",
            "WARDKEY_TAKEOVER_SECONDS": "1",
            "WARDKEY_PROBE_SECONDS": "1",
        }
        self.processes: list[subprocess.Popen[bytes]] = []

    def grants(self, target: str, people: range, ending: datetime) -> list[int]:
        """Grants for these staff on the target, approved so that they end at `ending`."""
        clock = ManualClock(ending - timedelta(minutes=30))
        service = AccessService(CoreDeps(self.db, self.policy, build_adapters(self.policy), clock))

        def grant(n: int) -> int:
            req = service.request(staff(n), target, ROLE, timedelta(minutes=30), "ward 12 fix")
            assert service.approve(req.id, APPROVER).state == RequestState.ACTIVE
            return req.id

        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(grant, people))

    def start(self, *command: str, **env: str) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{command[0]}{len(self.processes)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "app", *command],
                env={**self.env, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        return process

    def log_of(self, n: int) -> str:
        process = self.processes[n]
        return (self.tmp / f"{process.args[3]}{n}.log").read_text(errors="replace")  # type: ignore[index]

    def close(self) -> None:
        stop(*self.processes)
        for console in self.consoles.values():
            console.fail_with, console.delay_seconds = None, 0.0
            console.stop()
        self.slack.stop()
        self.db.dispose()


@pytest.fixture
def ward(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Ward]:
    ward = Ward(tmp_path, monkeypatch, people=40)
    yield ward
    ward.close()


def state_of(db: Database, ids: list[int]) -> dict[int, str]:
    with db.read() as session:
        rows = session.execute(
            sa.select(AccessRequest.id, AccessRequest.state).where(AccessRequest.id.in_(ids))
        ).all()
    return {rid: state for rid, state in rows}


def wait_until_ended(db: Database, ids: list[int], within: float = 45) -> None:
    deadline = time.monotonic() + within
    while set(state_of(db, ids).values()) != {RequestState.ENDED.value}:
        assert time.monotonic() < deadline, state_of(db, ids)
        time.sleep(0.1)


def ended_at(db: Database, ids: list[int]) -> dict[int, datetime]:
    """When each revoke was recorded as done (its `revoke.succeeded` event)."""
    with db.read() as session:
        events = session.scalars(
            sa.select(AuditEvent).where(
                AuditEvent.action == "revoke.succeeded", AuditEvent.request_id.in_(ids)
            )
        ).all()
    found: dict[int, datetime] = {}
    for event in events:
        assert event.request_id is not None and event.request_id not in found, "ended twice"
        found[event.request_id] = event.at
    return found


# ------------------------------------------------------- a database that never answers


class TestADatabaseThatNeverAnswers:
    def test_each_command_fails_in_seconds_with_one_line(
        self, silent_database: str, tmp_path: Path
    ) -> None:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "WARDKEY_"))},
            "DATABASE_URL": silent_database,
            "WARDKEY_POLICY": str(HERE / "data" / "ward_policy.yaml"),
            "PHARMACY_DB_PASSWORD": "not-used-here",
            "DIRECTORY_PASSWORD": "not-used-here",
            "SLACK_BOT_TOKEN": "xoxb-not-used",
            "SLACK_SIGNING_SECRET": "s" * 32,
        }
        commands = [["db", "upgrade"], ["audit", "verify"], ["worker"], ["serve", "--port", "0"]]

        def run(command: list[str]) -> tuple[subprocess.CompletedProcess[str], float]:
            began = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-m", "app", *command],
                env=env,
                capture_output=True,
                text=True,
                timeout=HANG_GUARD_SECONDS,
            )
            return done, time.monotonic() - began

        with ThreadPoolExecutor(len(commands)) as pool:
            results = list(pool.map(run, commands))
        for command, (done, seconds) in zip(commands, results, strict=True):
            said = done.stderr.strip().splitlines()
            print(f"\n{' '.join(command)}: exit {done.returncode} after {seconds:.1f}s: {said}")
            assert done.returncode == 2, (command, done.stderr)
            assert len(said) == 1, (command, done.stderr)
            assert said[0].startswith("wardkey: ") and "did not answer" in said[0], said
            assert "Traceback" not in done.stderr

    def test_readyz_answers_503_within_a_second(self, silent_database: str) -> None:
        from tests.test_web_edge import serving

        app = WardKeyWSGI(bolt=None, db=Database(silent_database), signing_secret="x")  # type: ignore[arg-type]
        with serving(app) as url, httpx.Client(timeout=2) as http:
            # Well inside a second each, while the check itself is still waiting on the server
            # (the client's 2 s limit guards a probe that would hang).
            answers = [http.get(f"{url}/readyz") for _ in range(3)]
            alive = http.get(f"{url}/healthz")
        assert [(a.status_code, a.text) for a in answers] == [(503, "database unreachable")] * 3
        assert max(a.elapsed.total_seconds() for a in answers) < 1  # issue 12's bar
        assert alive.status_code == 200


# ------------------------------------------------------------------ a target that hangs


def test_a_hung_target_does_not_delay_another_targets_revokes(ward: Ward) -> None:
    """The lab console hangs (it answers after 30 s; WardKey gives up after 10). Twenty grants
    on it end a moment before twenty on the EPR console: the EPR ones are still revoked on
    time, each recorded as it is done."""
    ending = datetime.now(UTC) + timedelta(seconds=12)
    hung = ward.grants("lab", range(0, 20), ending - timedelta(seconds=1))
    healthy = ward.grants("epr", range(20, 40), ending)
    ward.consoles["lab"].delay_seconds = 30
    ward.start("worker")
    wait_until_ended(ward.db, healthy, within=45)
    late = sorted((at - ending).total_seconds() for at in ended_at(ward.db, healthy).values())
    lab_states = set(state_of(ward.db, hung).values())
    print(
        f"\nhung target: healthy revokes attempted={len(healthy)} applied={len(late)} lost=0 "
        f"late p50={late[len(late) // 2]:.2f}s max={late[-1]:.2f}s; hung target's: {lab_states}"
    )
    # Before, one expiry job served both and waited for the hung one's time-out (10 s+). Issue
    # 12's bar is < 2 s added by the hung target; this holds the whole lateness to it.
    assert late[-1] < 2, late
    assert set(ward.consoles["epr"].removals.values()) == {1}


def test_a_hung_slack_does_not_delay_revokes_and_its_messages_are_sent_when_it_is_back(
    ward: Ward,
) -> None:
    """Slack's Web API hangs (it answers after an hour; WardKey gives up on each call after
    10 s). Twenty grants end meanwhile: each is revoked on time, its messages (the requester
    told, the cards updated) wait in the outbox, and they are sent once Slack answers again,
    each once."""
    for n in range(20):
        person = staff(n)
        ward.slack.add_user(SlackUser(person.slack_user_id or "", person.email, f"Staff {n}"))
    ward.slack.add_user(SlackUser(APPROVER.slack_user_id or "", APPROVER.email, "Lead"))
    ending = datetime.now(UTC) + timedelta(seconds=12)
    granted = ward.grants("epr", range(0, 20), ending)
    ward.slack.latency = 3600
    ward.start("worker")
    wait_until_ended(ward.db, granted, within=45)
    late = sorted((at - ending).total_seconds() for at in ended_at(ward.db, granted).values())
    waiting = outbox_waiting(ward.db)
    calls_while_hung = len(ward.slack.calls)
    hanging = ward.slack.in_flight  # calls WardKey made that Slack has not answered
    ward.slack.latency = 0  # Slack is back
    deadline = time.monotonic() + 90
    while outbox_waiting(ward.db):
        assert time.monotonic() < deadline, (outbox_waiting(ward.db), ward.log_of(0)[-3000:])
        time.sleep(0.2)
    keys = [
        (post.get("metadata") or {}).get("event_payload", {}).get("key")
        for post in ward.slack.posts()
    ]
    print(
        f"\nhung Slack: revokes attempted={len(granted)} applied={len(late)} lost=0 "
        f"late p50={late[len(late) // 2]:.2f}s max={late[-1]:.2f}s; messages waiting while "
        f"hung={waiting}, calls hanging={hanging}, answered={calls_while_hung}; "
        f"then sent={len(keys)}"
    )
    # Issue 12: a hung Slack adds < 2 s to revokes (before: 31 s late).
    assert late[-1] < 2, late
    assert set(ward.consoles["epr"].removals.values()) == {1}
    assert waiting > 0 and hanging > 0, "nothing waited on Slack: the test proves nothing"
    assert len(keys) >= len(granted) and None not in keys and len(set(keys)) == len(keys), keys
    with ward.db.read() as session:
        ends = session.execute(
            sa.select(OutboxItem.state, sa.func.count()).group_by(OutboxItem.state)
        ).all()
    assert dict(ends) == {OutboxState.DONE.value: dict(ends)[OutboxState.DONE.value]}, ends
    result = audit.verify(ward.db)
    assert result.ok, result


def outbox_waiting(db: Database) -> int:
    with db.read() as session:
        return int(
            session.scalar(
                sa.select(sa.func.count())
                .select_from(OutboxItem)
                .where(OutboxItem.state.in_([OutboxState.NEW.value, OutboxState.WORKING.value]))
            )
            or 0
        )


def test_start_up_answers_health_at_once_while_a_target_hangs(ward: Ward) -> None:
    """`wardkey serve` starts with a grant on the hung lab console already expired: /healthz
    answers while its revoke is still waiting on the console, and /readyz says ready once
    catch-up has handed the work over."""
    grant = ward.grants("lab", range(1), datetime.now(UTC) - timedelta(seconds=1))
    ward.consoles["lab"].delay_seconds = 30
    port = _free_port()
    ward.start("serve", "--port", str(port), "--host", "127.0.0.1")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    with httpx.Client(timeout=2) as http:
        while True:
            assert time.monotonic() < deadline, ward.log_of(0)
            try:
                health = http.get(f"{url}/healthz")
                break
            except httpx.TransportError:
                time.sleep(0.05)
        assert health.status_code == 200
        ready = http.get(f"{url}/readyz")
        while ready.status_code != 200:
            assert ready.text in ("catching up", "database unreachable; catching up"), ready.text
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.1)
            ready = http.get(f"{url}/readyz")
    # Before, catch-up ran before the server, and the server came up only once the lab
    # console had been given up on (the revoke failed).
    assert state_of(ward.db, grant) == {grant[0]: RequestState.REVOKING.value}


# --------------------------------------------------------- a target down, then back


def test_revokes_land_soon_after_a_target_comes_back(ward: Ward) -> None:
    """The EPR console answers 503 to everything; ten grants end and their revokes fail.
    Ten seconds later (TARGET_OUTAGE_SECONDS) it is back: the revokes land within seconds, not
    at the end of their back-off (30 s after the first failure, then longer)."""
    ending = datetime.now(UTC) + timedelta(seconds=8)
    ids = ward.grants("epr", range(10), ending)
    epr = ward.consoles["epr"]
    epr.fail_with = 503
    ward.start("worker")
    deadline = time.monotonic() + 30
    while set(state_of(ward.db, ids).values()) != {RequestState.REVOKE_FAILED.value}:
        assert time.monotonic() < deadline, state_of(ward.db, ids)
        time.sleep(0.1)
    time.sleep(TARGET_OUTAGE_SECONDS)  # the outage goes on; the probe finds it still down
    back = datetime.now(UTC)
    epr.fail_with = None
    wait_until_ended(ward.db, ids, within=40)
    after = sorted((at - back).total_seconds() for at in ended_at(ward.db, ids).values())
    print(
        f"\ntarget back after {TARGET_OUTAGE_SECONDS:.0f}s down: attempted={len(ids)} "
        f"applied={len(after)} lost={len(ids) - len(after)} "
        f"doubled={sum(n - 1 for n in epr.removals.values())} "
        f"landed after return p50={after[len(after) // 2]:.1f}s max={after[-1]:.1f}s"
    )
    assert after[-1] <= 15, after  # before: 20 s or more, at the back-off's next try
    assert set(epr.removals.values()) == {1}
    result = audit.verify(ward.db)
    assert result.ok, result


# -------------------------------------------------------- a database that goes away


def test_a_database_outage_is_logged_once_and_its_end_once(ward: Ward) -> None:
    """The database goes away for eight seconds under a running worker (its expiry sweep
    ticks five times a second): the log says so once, then says it is back, with no
    tracebacks; and a grant that ended during the outage is revoked once it is over."""
    url = ward.db.url
    proxy = Relay((url.host or "127.0.0.1", url.port or 5432))
    try:
        through = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        worker = ward.start("worker", DATABASE_URL=through)
        # Running and ticking (its start-up, slow on a busy machine, needs the database)…
        deadline = time.monotonic() + 60
        while "event=sweeps_scheduled" not in ward.log_of(0):
            assert worker.poll() is None and time.monotonic() < deadline, ward.log_of(0)
            time.sleep(0.1)
        time.sleep(1)
        proxy.cut()
        # …when the database goes away; meanwhile a grant comes to its end (made on the real
        # server, which the worker cannot reach).
        down_at = time.monotonic()
        ids = ward.grants("epr", range(1), datetime.now(UTC) + timedelta(seconds=2))
        time.sleep(max(0.0, down_at + 8 - time.monotonic()))
        proxy.restore()
        wait_until_ended(ward.db, ids, within=30)
        deadline = time.monotonic() + 15
        while "event=database_back" not in ward.log_of(0):
            assert time.monotonic() < deadline, ward.log_of(0)
            time.sleep(0.1)
        # Stop the worker before the relay closes: closing it cuts every connection again,
        # which the worker would rightly log as a second outage.
        stop(worker)
    finally:
        proxy.close()
    log = ward.log_of(0)
    print("\n" + "\n".join(line for line in log.splitlines() if "event=database_" in line))
    assert log.count("event=database_unreachable") == 1, log
    assert log.count("event=database_back") == 1, log
    assert "Traceback" not in log, log


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
