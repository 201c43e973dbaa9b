"""The policy is edited while WardKey runs: a good edit is used at once by every instance; a bad
one is refused, the policy in force stays, and the log and the security channel say exactly
what is wrong and where (app/policy_reload.py)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml

from app.access import AccessService
from app.adapters.registry import build_adapters
from app.demo.slack_driver import SlackDriver
from app.demo.slack_fake import FakeSlack, SlackUser
from app.demo.webhook_target import WebhookTarget
from app.outbox_records import OutCall
from app.policy import Policy
from app.policy_reload import PolicyReloader, digest_of
from app.store import Database
from app.store.models import OutboxItem
from tests.conftest import AMIRA, HERE, fresh_postgres_schema, sqlite_copy
from tests.fakes.big_trust import APPROVER, staff
from tests.fakes.memory_adapter import MemoryTarget
from tests.processes import free_port

WARD_POLICY = HERE / "data" / "ward_policy.yaml"


@pytest.fixture
def db(tmp_path: Path, sqlite_template: Path) -> Iterator[Database]:
    """The reloader's own behaviour needs no PostgreSQL; the processes below use it."""
    yield from sqlite_copy(tmp_path, sqlite_template)


class Told:
    """The security channel's outbox, as the reloader sees it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[OutCall], str | None]] = []

    def enqueue(self, lane: str, calls: list[OutCall], key: str | None = None) -> None:
        self.sent.append((lane, calls, key))

    def texts(self) -> list[str]:
        return [call.args["text"] for _, calls, _ in self.sent for call in calls]


def edited(source: Path, change: Any) -> str:
    data = yaml.safe_load(source.read_text())
    change(data)
    return yaml.safe_dump(data, sort_keys=False)


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    shutil.copy(WARD_POLICY, path)
    return path


def memory_adapters(policy: Policy) -> dict[str, MemoryTarget]:
    return {name: MemoryTarget() for name in policy.targets}


def reloader(path: Path, service: AccessService, told: Told, **kw: Any) -> PolicyReloader:
    # A clock ten seconds ahead: a file the test just wrote counts as settled.
    return PolicyReloader(
        path, service, told, build=memory_adapters, clock=lambda: time.time() + 10, **kw
    )


def add_audit_role(data: dict[str, Any]) -> None:
    data["targets"]["pharmacy-db"]["roles"]["audit"] = {
        "path": "clinical",
        "entitlement": "pharmacy_audit",
        "eligible": ["clinical-systems"],
    }


class TestInOneProcess:
    def test_a_good_edit_is_used_at_once_and_told_once(
        self, policy_file: Path, service: AccessService
    ) -> None:
        told = Told()
        watcher = reloader(policy_file, service, told)
        kept = service.adapters["directory"]
        assert watcher.check() == "unchanged"
        policy_file.write_text(edited(policy_file, add_audit_role))

        assert watcher.check() == "reloaded"
        assert "audit" in service.policy.targets["pharmacy-db"].roles
        assert watcher.digest == digest_of(policy_file.read_bytes())
        # A target whose settings did not change keeps its adapter (and its connections).
        assert service.adapters["directory"] is kept
        req = service.request(
            AMIRA, "pharmacy-db", "audit", timedelta(minutes=30), "check the audit"
        )
        assert req.role == "audit"
        assert watcher.check() == "unchanged"
        ((lane, calls, key),) = told.sent
        assert lane == "security" and key == f"policy-loaded:{watcher.digest[:40]}"
        assert calls[0].args["channel"] == "C0SEC"
        assert "now using a changed policy file" in calls[0].args["text"]
        assert "changed: targets" in calls[0].args["text"]

    def test_a_bad_edit_keeps_the_policy_and_names_the_field(
        self, policy_file: Path, service: AccessService, caplog: pytest.LogCaptureFixture
    ) -> None:
        told = Told()
        watcher = reloader(policy_file, service, told)
        before, digest = service.policy, watcher.digest

        def wrong_path(data: dict[str, Any]) -> None:
            add_audit_role(data)
            data["targets"]["pharmacy-db"]["roles"]["audit"]["path"] = "auditing"

        policy_file.write_text(edited(policy_file, wrong_path))
        with caplog.at_level(logging.INFO, logger="app.policy_reload"):
            assert watcher.check() == "refused"
        assert service.policy is before and watcher.digest == digest
        (line,) = [r.getMessage() for r in caplog.records if "policy_reload_refused" in r.message]
        field = "targets.pharmacy-db.roles.audit.path"
        assert f"field={field} reason=" in line, line
        assert "auditing" in line and f"kept={digest[:12]}" in line, line
        ((_, calls, key),) = told.sent
        text = calls[0].args["text"]
        assert key is not None and key.startswith("policy-refused:")
        assert f"`{field}`: " in text and "The previous policy stays in force" in text
        assert calls[0].args["channel"] == "C0SEC"  # the channel of the policy in force

        # Looked at again: nothing new is said. Asked again (SIGHUP): said again, with the
        # same key, so the outbox posts it once.
        caplog.clear()
        assert watcher.check() == "unchanged"
        assert len(told.sent) == 1 and not caplog.records
        assert watcher.check(asked=True) == "refused"
        assert [k for _, _, k in told.sent] == [key, key]
        # Fixed: used at once.
        policy_file.write_text(edited(WARD_POLICY, add_audit_role))
        assert watcher.check() == "reloaded"
        assert "audit" in service.policy.targets["pharmacy-db"].roles

    def test_a_new_target_without_its_secret_is_refused(
        self, policy_file: Path, service: AccessService, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("PHARMACY_DB_PASSWORD", "x")
        monkeypatch.setenv("DIRECTORY_PASSWORD", "x")
        monkeypatch.delenv("LAB_CONSOLE_KEY", raising=False)
        told = Told()
        watcher = PolicyReloader(
            policy_file, service, told, build=build_adapters, clock=lambda: time.time() + 10
        )

        def add_lab(data: dict[str, Any]) -> None:
            data["targets"]["lab"] = {
                "kind": "webhook",
                "settings": {"url": "https://lab.ward.nhs.uk/wardkey"},
                "secrets": {"signing_key": "LAB_CONSOLE_KEY"},
                "roles": {
                    "admin": {
                        "path": "admin",
                        "entitlement": "LAB_ADMIN",
                        "eligible": ["infrastructure"],
                    }
                },
            }

        policy_file.write_text(edited(policy_file, add_lab))
        assert watcher.check() == "refused"
        assert "lab" not in service.policy.targets
        said = "`targets.lab`: set the environment variable LAB_CONSOLE_KEY"
        assert said in told.texts()[0]

    def test_a_target_with_open_requests_cannot_be_removed(
        self, policy_file: Path, service: AccessService
    ) -> None:
        told = Told()
        watcher = reloader(policy_file, service, told)
        service.request(
            AMIRA, "directory", "helpdesk", timedelta(minutes=30), "unlock ward 12 clerk",
            ticket="INC0012345",
        )  # fmt: skip
        policy_file.write_text(edited(policy_file, lambda d: d["targets"].pop("directory")))
        assert watcher.check() == "refused"
        assert "directory" in service.policy.targets
        assert "removed, but 1 request on it is still open" in told.texts()[0]


# ------------------------------------------------------------------- two real processes

SCHEMA = os.environ.get("WARDKEY_TEST_SCHEMA", "wardkey") + "_reload"
KEY = "r" * 32
SECRET = "s" * 32
ASKERS = 4
SERVE = [sys.executable, "-m", "app", "serve", "--no-scheduler", "--host", "127.0.0.1"]


def ward_policy(console_url: str, roles: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": 1,
        "timezone": "Europe/London",
        "channels": {"security_alerts": "C0SECURITY", "manager_reviews": "C0MANAGERS"},
        "admins": "admins",
        "groups": {
            "admins": [APPROVER.email],
            "leads": [APPROVER.email],
            "staff": [staff(n).email for n in range(ASKERS)],
        },
        "paths": {
            **{
                name: {"risk": risk, "approvers": [{"group": "leads"}], "max_duration": "4h"}
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
        "targets": {
            "epr": {
                "kind": "webhook",
                "settings": {"url": console_url},
                "insecure": True,
                "secrets": {"signing_key": "EPR_KEY"},
                "account": {"template": "{local}"},
                "roles": roles,
            }
        },
    }


def write_atomically(path: Path, data: dict[str, Any]) -> None:
    """As a ConfigMap update or a deploy tool does: a new file renamed over the old."""
    fresh = path.with_suffix(".new")
    fresh.write_text(yaml.safe_dump(data))
    os.replace(fresh, path)


def wait_for(log: Path, test: Any, within: float = 20) -> None:
    deadline = time.monotonic() + within
    while not test():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


@pytest.mark.postgres
def test_two_instances_take_a_new_role_and_keep_it_through_a_broken_edit(
    tmp_path: Path,
) -> None:
    database = fresh_postgres_schema(SCHEMA)
    console = WebhookTarget(KEY.encode(), name="epr").start()
    slack = FakeSlack(token="xoxb-reload").start()
    for n in range(ASKERS):
        person = staff(n)
        slack.add_user(SlackUser(person.slack_user_id or "", person.email, f"Staff {n}"))
    slack.add_user(SlackUser(APPROVER.slack_user_id or "", APPROVER.email, "Lead"))
    ward_admin = {"path": "clinical", "entitlement": "WARD_ADMIN", "eligible": ["staff"]}
    clerk = {"path": "clinical", "entitlement": "RECORDS_CLERK", "eligible": ["staff"]}
    policy_path = tmp_path / "policy.yaml"
    write_atomically(policy_path, ward_policy(console.url, {"ward-admin": ward_admin}))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "WARDKEY_"))},
        "DATABASE_URL": database.url.render_as_string(hide_password=False),
        "WARDKEY_POLICY": str(policy_path),
        "WARDKEY_POLICY_CHECK_SECONDS": "0.5",
        "EPR_KEY": KEY,
        "SLACK_BOT_TOKEN": "xoxb-reload",
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_API_URL": slack.api_url,
    }
    ports = [free_port(), free_port()]
    logs = [tmp_path / f"serve{n}.log" for n in range(2)]
    processes: list[subprocess.Popen[bytes]] = []
    http = httpx.Client(timeout=10)
    try:
        for port, log in zip(ports, logs, strict=True):
            with log.open("wb") as out:
                processes.append(
                    subprocess.Popen(
                        [*SERVE, "--port", str(port)],
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
        drivers = [
            SlackDriver(f"http://127.0.0.1:{port}", slack, http, SECRET, team="T0WARD")
            for port in ports
        ]
        for driver, log in zip(drivers, logs, strict=True):

            def healthy(url: str = driver.url) -> bool:
                try:
                    return http.get(f"{url}/healthz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(log, healthy)
            wait_for(log, lambda log=log: "event=policy_watch" in log.read_text())

        asked = 0

        def ask(driver: SlackDriver, role: str) -> str:
            nonlocal asked
            person = staff(asked % ASKERS)
            asked += 1
            answer = driver.command(
                "/jit",
                f"request epr:{role} 30m check the ward {asked} records",
                person.slack_user_id or "",
            )
            assert answer.status_code == 200, answer.text
            return slack.wait_for("response_url", asked, timeout=10)[-1].args.get("text", "")

        for driver in drivers:  # not a role yet, on either instance
            assert "epr has no role 'records-clerk'" in ask(driver, "records-clerk")

        # The new role: instance 0 is told with SIGHUP, instance 1 sees the file change.
        write_atomically(
            policy_path,
            ward_policy(console.url, {"ward-admin": ward_admin, "records-clerk": clerk}),
        )
        began = time.monotonic()
        processes[0].send_signal(signal.SIGHUP)
        for log in logs:
            wait_for(log, lambda log=log: "event=policy_reloaded" in log.read_text())
        converged = time.monotonic() - began
        for driver in drivers:
            assert "is with the clinical approvers" in ask(driver, "records-clerk")
        good = digest_of(policy_path.read_bytes())

        # A broken edit: the role's path does not exist. Both refuse it, keep the role.
        broken = dict(clerk, path="records")
        write_atomically(
            policy_path,
            ward_policy(console.url, {"ward-admin": ward_admin, "records-clerk": broken}),
        )
        for log in logs:
            wait_for(log, lambda log=log: "policy_reload_refused" in log.read_text())
        for driver in drivers:
            assert "is with the clinical approvers" in ask(driver, "records-clerk")
        field = "targets.epr.roles.records-clerk.path"
        for log in logs:
            (line,) = [x for x in log.read_text().splitlines() if "policy_reload_refused" in x]
            assert f"field={field} reason=" in line and f"kept={good[:12]}" in line, line
            assert "records" in line.split("reason=")[1]

        # The security channel hears of each change once, whichever instance told it.
        posts = slack.wait_for("chat.postMessage", 2, channel="C0SECURITY")
        with database.read() as session:
            keys = sorted(
                session.scalars(sa.select(OutboxItem.key).where(OutboxItem.key.like("policy-%")))
            )
        assert [k.split(":")[0] for k in keys] == ["policy-loaded", "policy-refused"], keys
        texts = [p.args["text"] for p in posts]
        assert "now using a changed policy file" in texts[0]
        assert f"`{field}`: " in texts[1] and "stays in force" in texts[1]
        print(f"\npolicy reload: both instances on the new policy {converged:.1f}s after the edit")
    finally:
        http.close()
        for process in processes:
            process.terminate()
            process.wait(timeout=10)
        console.stop()
        slack.stop()
        database.dispose()
    for log in logs:
        assert "Traceback" not in log.read_text(), log.read_text()
