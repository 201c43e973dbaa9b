"""`wardkey serve` as an operator runs it: a real process, configured by the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from app.access import AccessService
from app.clock import ManualClock
from app.demo.slack_driver import SlackDriver
from app.demo.slack_fake import FakeSlack, new_trigger_id
from app.lifecycle.deps import CoreDeps
from app.policy import Policy
from app.policy.rules import approvers_at
from app.requests.messages import APPROVE_ACTION
from app.store import Database, upgrade
from app.store.models import RequestState
from tests.conftest import AMIRA, BEN, HERE, NIGHT_SHIFT
from tests.fakes.memory_adapter import MemoryTarget
from tests.fakes.socket_mode import SocketModeServer
from tests.processes import free_port, wait_until_healthy
from tests.slack_harness import SIGNING_SECRET, WARD_USERS


def clinical_approver_dms(policy: Policy) -> list[str]:
    """The DM channels the clinical path's approvers have now, by the wall clock that a real
    `serve` reads (the rota turns over daily, so this is computed, never written down)."""
    people = approvers_at(policy, "clinical", datetime.now(UTC))
    by_email = {u.email: u.id for u in WARD_USERS}
    return sorted("D" + by_email[p].removeprefix("U") for p in people)


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLACK_")}
    db = f"sqlite:///{tmp_path / 'wardkey.db'}"
    upgrade(db)
    env.update(DATABASE_URL=db, WARDKEY_POLICY=str(HERE / "data" / "ward_policy.yaml"))
    # The ward's targets name these secrets; adapters connect only when asked to act.
    env.update(PHARMACY_DB_PASSWORD="not-used-here", DIRECTORY_PASSWORD="not-used-here")
    return env


class TestStartup:
    @pytest.mark.parametrize(
        ("command", "given", "missing"),
        [
            ("serve", {}, "SLACK_BOT_TOKEN"),
            ("serve", {"SLACK_BOT_TOKEN": "xoxb-1"}, "SLACK_SIGNING_SECRET"),
            ("socket", {"SLACK_BOT_TOKEN": "xoxb-1"}, "SLACK_APP_TOKEN"),
            ("worker", {}, "SLACK_BOT_TOKEN"),
        ],
    )
    def test_a_missing_variable_gets_one_clear_line(
        self, base_env: dict[str, str], command: str, given: dict[str, str], missing: str
    ) -> None:
        fake = FakeSlack(token="xoxb-1").start()
        try:
            env = {**base_env, **given, "SLACK_API_URL": fake.api_url}
            result = run([command], env)
        finally:
            fake.stop()
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        # Each missing variable has its line (serve without either Slack setting names both).
        assert any(line.startswith(f"wardkey: {missing} is not set") for line in lines), lines
        assert "Traceback" not in result.stderr

    def test_a_missing_adapter_secret_is_named(self, base_env: dict[str, str]) -> None:
        env = {**base_env, "SLACK_BOT_TOKEN": "x"}
        del env["PHARMACY_DB_PASSWORD"]
        result = run(["worker"], env)
        assert result.returncode == 2
        assert (
            "targets.pharmacy-db: set the environment variable PHARMACY_DB_PASSWORD"
            in result.stderr
        )

    def test_a_bad_policy_path_is_named(self, base_env: dict[str, str]) -> None:
        env = {**base_env, "SLACK_BOT_TOKEN": "x", "WARDKEY_POLICY": "/nowhere/policy.yaml"}
        result = run(["worker"], env)
        assert result.returncode == 2
        assert "WARDKEY_POLICY: no policy file at /nowhere/policy.yaml" in result.stderr


class TestServe:
    @pytest.fixture
    def served(self, base_env: dict[str, str]) -> Iterator[tuple[str, FakeSlack]]:
        fake = FakeSlack().start()
        for user in WARD_USERS:
            fake.add_user(user)
        port = free_port()
        env = {
            **base_env,
            "SLACK_BOT_TOKEN": fake.token,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_API_URL": fake.api_url,
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--port", str(port), "--host", "127.0.0.1"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_healthy(url, process)
            yield url, fake
        finally:
            process.terminate()
            process.wait(timeout=10)
            fake.stop()

    def test_serve_answers_health_and_signed_commands(
        self, served: tuple[str, FakeSlack], policy: Policy
    ) -> None:
        url, fake = served
        slack = SlackDriver(url, fake, httpx.Client(timeout=10), SIGNING_SECRET)
        assert slack.http.get(f"{url}/readyz").text == "ready"
        assert [c.method for c in fake.calls][:1] == ["auth.test"]
        answer = slack.command("/jit", "help", "U0AMIRA")
        assert answer.status_code == 200
        assert "/jit request" in answer.json()["text"]
        # Who is on call depends on the day `serve` runs; the policy's own rota code says who.
        before = clinical_approver_dms(policy)
        slack.command(
            "/jit", "request pharmacy-db:read 30m fix stuck order set on ward 12", "U0AMIRA"
        )
        after = clinical_approver_dms(policy)
        assert "is with the clinical approvers" in slack.replies()[-1]
        cards = fake.wait_for("chat.postMessage", 3)
        # A hand-off between the two readings may leave either shift's approver.
        assert sorted(c.response["channel"] for c in cards) in (before, after)


class TestSocketMode:
    """`wardkey socket`: no public URL; Slack's envelopes arrive over a WebSocket that
    apps.connections.open hands out, and each is acked over it by envelope_id."""

    @pytest.fixture
    def connected(
        self, base_env: dict[str, str], tmp_path: Path
    ) -> Iterator[tuple[SocketModeServer, FakeSlack]]:
        fake = FakeSlack().start()
        for user in WARD_USERS:
            fake.add_user(user)
        sockets = SocketModeServer().start()
        fake.socket_mode_url = sockets.url
        env = {
            **base_env,
            "SLACK_BOT_TOKEN": fake.token,
            "SLACK_APP_TOKEN": fake.app_token,
            "SLACK_API_URL": fake.api_url,
        }
        with open(tmp_path / "socket.log", "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "app", "socket", "--no-scheduler"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                sockets.wait_connected()
                yield sockets, fake
            finally:
                process.terminate()
                process.wait(timeout=10)
                sockets.stop()
                fake.stop()

    def command(self, text: str) -> dict[str, str]:
        return {
            "team_id": "T0WARD",
            "channel_id": "C0WARDOPS",
            "user_id": "U0AMIRA",
            "command": "/jit",
            "text": text,
            "response_url": "",
            "trigger_id": new_trigger_id(),
        }

    def test_commands_and_clicks_arrive_and_are_acked_over_the_socket(
        self, connected: tuple[SocketModeServer, FakeSlack]
    ) -> None:
        sockets, fake = connected
        assert [c.method for c in fake.calls if c.method == "apps.connections.open"]

        helped = sockets.ack_of(sockets.send("slash_commands", self.command("help")))
        assert "/jit request" in helped["payload"]["text"]
        usage = sockets.ack_of(sockets.send("slash_commands", self.command("request")))
        assert "For example" in usage["payload"]["text"]

        ask = self.command("request pharmacy-db:read 30m fix stuck order set on ward 12")
        ask["response_url"] = fake.response_url()
        sockets.ack_of(sockets.send("slash_commands", ask))
        reply = fake.wait_for("response_url")[0].args["text"]
        assert "is with the clinical approvers" in reply
        request_id = reply.split("#")[1].split(" ")[0]
        cards = fake.wait_for("chat.postMessage", 3, timeout=10)

        click = {
            "type": "block_actions",
            "team": {"id": "T0WARD"},
            # Hana, the duty manager, may approve clinical requests on any day; the on-call
            # lead changes with the date `wardkey socket` runs on.
            "user": {"id": "U0HANA", "team_id": "T0WARD"},
            "trigger_id": new_trigger_id(),
            "channel": {"id": cards[0].response["channel"]},
            "message": {"ts": cards[0].response["ts"]},
            "container": {"type": "message", "message_ts": cards[0].response["ts"]},
            "actions": [{"action_id": APPROVE_ACTION, "value": request_id, "type": "button"}],
        }
        sockets.ack_of(sockets.send("interactive", click))
        # Approved by Hana; the ward's pharmacy database is not there to grant it in this test.
        # A card may first say "being set up" while the grant is tried; each ends saying it failed.
        failed = f"Access request #{request_id}: ⚠️ Approved"
        deadline = time.monotonic() + 20
        while True:
            last = {c.args["channel"]: c for c in fake.calls_to("chat.update")}
            if len(last) == 3 and all(c.args["text"].startswith(failed) for c in last.values()):
                break
            assert time.monotonic() < deadline, [c.args["text"] for c in last.values()]
            time.sleep(0.1)
        assert all("Approved by Hana Novak" in json.dumps(c.args["blocks"]) for c in last.values())


class TestResolveFailedRevoke:
    def test_only_an_admin_with_a_note_can_close_it(
        self, base_env: dict[str, str], policy: Policy
    ) -> None:
        target = MemoryTarget()
        service = AccessService(CoreDeps(
            Database(base_env["DATABASE_URL"]), policy, {"pharmacy-db": target},
            ManualClock(NIGHT_SHIFT), pause=lambda _: None,
        ))  # fmt: skip
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), "fix ward 12")
        service.approve(req.id, BEN)
        target.down = True
        service.revoke(req.id, AMIRA, "done early")
        assert service.get(req.id).state == RequestState.REVOKE_FAILED

        note = "checked pg_auth_members on pharmacy-db by hand"
        refused = run(["revoke", "resolve", str(req.id), note, "--by", "ben@ward.nhs.uk"], base_env)
        assert refused.returncode == 1
        assert "Only a WardKey admin" in refused.stderr
        done = run(["revoke", "resolve", str(req.id), note, "--by", "gita@ward.nhs.uk"], base_env)
        assert done.returncode == 0, done.stderr
        assert "is now ended" in done.stdout
        assert service.get(req.id).state == RequestState.ENDED
