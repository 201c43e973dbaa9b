"""The production topology, as deploy/kubernetes runs it, on real processes and the real
PostgreSQL: two `wardkey serve --no-scheduler` behind a round-robin proxy (the Service), two
`wardkey worker`s, Slack (the fake Web API) and a signed-webhook console. A night's wave: staff
ask with signed /jit commands, the lead approves each card (some twice, on both instances),
while a batch of earlier grants expires. Nothing is lost or doubled: one request, one card and
one grant per ask; one revoke per expiry; every command answered; and the audit chain holds."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from app import audit
from app.access import AccessService
from app.adapters.registry import build_adapters
from app.clock import ManualClock
from app.demo.slack_driver import SlackDriver
from app.demo.slack_fake import FakeSlack, SlackUser
from app.demo.webhook_target import WebhookTarget
from app.lifecycle.deps import CoreDeps
from app.policy import load_policy
from app.requests.messages import APPROVE_ACTION
from app.store import AuditEvent, Database
from app.store.models import AccessRequest, RequestState
from tests.conftest import fresh_postgres_schema
from tests.fakes.big_trust import (
    APPROVER,
    CONSOLE,
    ENTITLEMENT,
    KEY_VARIABLE,
    ROLE,
    account_of,
    staff,
    write_big_trust,
)
from tests.processes import free_port, stop
from tests.relay import Relay

pytestmark = pytest.mark.postgres

SCHEMA = os.environ.get("WARDKEY_TEST_SCHEMA", "wardkey") + "_topology"
KEY = "t" * 32
SECRET = "s" * 32
ASKS = 24  # staff 0..23 ask through Slack
EXPIRING = range(100, 124)  # staff 100..123 hold grants that end during the wave
TWICE = 6  # the first six cards are approved twice, once on each instance


class Night:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.db = fresh_postgres_schema(SCHEMA)
        self.console = WebhookTarget(KEY.encode(), name=CONSOLE).start()
        self.slack = FakeSlack(token="xoxb-topology").start()
        for n in [*range(ASKS), *EXPIRING]:
            person = staff(n)
            self.slack.add_user(SlackUser(person.slack_user_id or "", person.email, f"Staff {n}"))
        self.slack.add_user(SlackUser(APPROVER.slack_user_id or "", APPROVER.email, "Lead"))
        self.policy_path = tmp / "policy.yaml"
        write_big_trust(self.policy_path, self.console.url, max(EXPIRING) + 1)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "WARDKEY_"))},
            "DATABASE_URL": self.db.url.render_as_string(hide_password=False),
            "WARDKEY_POLICY": str(self.policy_path),
            KEY_VARIABLE: KEY,
            "SLACK_BOT_TOKEN": "xoxb-topology",
            "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": self.slack.api_url,
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *command: str) -> None:
        with (self.tmp / f"{name}.log").open("wb") as out:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "app", *command],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def alive(self) -> None:
        for name, process in self.processes.items():
            assert process.poll() is None, f"{name} exited:\n{self.log(name)}"

    def close(self) -> None:
        stop(*self.processes.values())
        self.console.stop()
        self.slack.stop()
        self.db.dispose()


@pytest.fixture
def night(tmp_path: Path) -> Iterator[Night]:
    night = Night(tmp_path)
    yield night
    night.close()


def states(db: Database, requesters: list[str]) -> dict[str, list[str]]:
    with db.read() as session:
        rows = session.execute(
            sa.select(AccessRequest.requester, AccessRequest.state).where(
                AccessRequest.requester.in_(requesters)
            )
        ).all()
    found: dict[str, list[str]] = {}
    for requester, state in rows:
        found.setdefault(requester, []).append(state)
    return found


def events(db: Database, action: str) -> Counter[int | None]:
    with db.read() as session:
        return Counter(
            session.scalars(sa.select(AuditEvent.request_id).where(AuditEvent.action == action))
        )


def wait(what: str, test: object, within: float, night: Night) -> None:
    deadline = time.monotonic() + within
    while not test():  # type: ignore[operator]
        night.alive()
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_two_web_instances_and_two_workers_lose_and_double_nothing(night: Night) -> None:
    began = time.monotonic()
    # Earlier tonight: grants that end in the middle of the wave (made before the processes
    # start, through the service, on the real console).
    ending = datetime.now(UTC) + timedelta(seconds=14)
    policy = load_policy(night.policy_path)
    adapters = build_adapters(policy, night.env)
    setup = AccessService(
        CoreDeps(night.db, policy, adapters, ManualClock(ending - timedelta(minutes=30)))
    )

    def grant(n: int) -> int:
        req = setup.request(staff(n), CONSOLE, ROLE, timedelta(minutes=30), "ward 12 night fix")
        assert setup.approve(req.id, APPROVER).state == RequestState.ACTIVE
        return req.id

    with ThreadPoolExecutor(4) as pool:
        expiring = list(pool.map(grant, EXPIRING))

    # The topology: two web pods behind the proxy, two workers.
    ports = [free_port(), free_port()]
    for n, port in enumerate(ports):
        night.start(
            f"web{n}", "serve", "--no-scheduler", "--host", "127.0.0.1", "--port", str(port)
        )
    for n in range(2):
        night.start(f"worker{n}", "worker")
    proxy = Relay(*[("127.0.0.1", port) for port in ports])
    # No keep-alive: each request is a new connection, so the proxy alternates per request.
    http = httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0))
    try:
        for port in ports:

            def up(port: int = port) -> bool:
                try:
                    return http.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
                except httpx.TransportError:
                    return False

            wait(f"web on {port} ready", up, 30, night)
        for n in range(2):
            wait(f"worker{n}", lambda n=n: "sweeps_scheduled" in night.log(f"worker{n}"), 30, night)
        started = time.monotonic() - began
        slack = SlackDriver(f"http://127.0.0.1:{proxy.port}", night.slack, http, SECRET)

        # The wave: every ask through the proxy, several at once.
        def ask(n: int) -> httpx.Response:
            reason = f"night shift fix number {n} on ward {n % 7}"
            return slack.command(
                "/jit", f"request {CONSOLE}:{ROLE} 30m {reason}", staff(n).slack_user_id or ""
            )

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(ask, range(ASKS)))
        assert [a.status_code for a in answers] == [200] * ASKS, [a.text for a in answers]
        replies = slack.replies(ASKS)
        assert sum("is with the clinical approvers" in r for r in replies) == ASKS, replies

        # Each request's card reaches the lead once; the lead approves each from its card.
        asked = [staff(n).email for n in range(ASKS)]
        wait("every request recorded", lambda: len(states(night.db, asked)) == ASKS, 20, night)
        with night.db.read() as session:
            ids = dict(
                session.execute(
                    sa.select(AccessRequest.requester, AccessRequest.id).where(
                        AccessRequest.requester.in_(asked)
                    )
                ).all()
            )
        card_of: dict[int, tuple[str, str]] = {}

        def cards() -> bool:
            for call in night.slack.calls_to("chat.postMessage"):
                found = re.match(r"Access request #(\d+):", call.args.get("text", ""))
                if (
                    found
                    and int(found[1]) in ids.values()
                    and call.args["channel"] == APPROVER.slack_user_id
                ):
                    card_of.setdefault(
                        int(found[1]), (call.response["channel"], call.response["ts"])
                    )
            return len(card_of) == ASKS

        wait("a card for every request", cards, 30, night)

        def approve(request_id: int) -> httpx.Response:
            channel, ts = card_of[request_id]
            return slack.click(
                APPROVE_ACTION, str(request_id), APPROVER.slack_user_id or "", channel, ts
            )

        order = sorted(card_of)
        with ThreadPoolExecutor(6) as pool:
            clicks = list(pool.map(approve, order + order[:TWICE]))
        assert [c.status_code for c in clicks] == [200] * len(clicks)

        def all_active() -> bool:
            return all(s == [RequestState.ACTIVE.value] for s in states(night.db, asked).values())

        wait("every approved grant active", all_active, 30, night)
        ended = set(expiring)

        def expired() -> bool:
            with night.db.read() as session:
                return (
                    set(
                        session.scalars(
                            sa.select(AccessRequest.id).where(
                                AccessRequest.id.in_(expiring),
                                AccessRequest.state == RequestState.ENDED.value,
                            )
                        )
                    )
                    == ended
                )

        wait("every earlier grant revoked at its end", expired, 30, night)

        # Every card updated to say it is approved and active (the outbox keeps order).
        def updated() -> bool:
            last = {
                (c.args["channel"], c.args["ts"]): c.args.get("text", "")
                for c in night.slack.calls_to("chat.update")
            }
            return all(
                "Approved" in last.get(card, "") or "approved" in last.get(card, "")
                for card in card_of.values()
            )

        wait("every card says it was approved", updated, 30, night)
        took = time.monotonic() - began
    finally:
        http.close()
        proxy.close()

    # Nothing lost, nothing doubled.
    granted = events(night.db, "grant.succeeded")
    revoked = events(night.db, "revoke.succeeded")
    wave = set(ids.values())
    assert {i: granted[i] for i in wave} == dict.fromkeys(wave, 1)
    assert {i: revoked[i] for i in expiring} == dict.fromkeys(expiring, 1)
    gave = Counter(
        line for line in night.console.log if line.endswith(f" {ENTITLEMENT}") and ": gave " in line
    )
    for n in range(ASKS):
        assert gave[f"{CONSOLE}: gave {account_of(n)} {ENTITLEMENT}"] == 1, n
    assert night.console.members[ENTITLEMENT] == {account_of(n) for n in range(ASKS)}
    assert {night.console.removals[(ENTITLEMENT, account_of(n))] for n in EXPIRING} == {1}
    posted = Counter(
        int(found[1])
        for call in night.slack.calls_to("chat.postMessage")
        if call.args["channel"] == APPROVER.slack_user_id
        and (found := re.match(r"Access request #(\d+):", call.args.get("text", "")))
    )
    assert {i: posted[i] for i in wave} == dict.fromkeys(wave, 1), "one card per request"
    # The second click on a card: the lead is told it is decided already; nothing changes.
    again = [
        c.args.get("text", "")
        for c in night.slack.calls_to("chat.postEphemeral", user=APPROVER.slack_user_id)
    ]
    assert sum("has already been approved" in t for t in again) == TWICE, again
    # Both web instances took requests; the workers did the expiries.
    assert min(proxy.connections.values()) >= ASKS // 3, proxy.connections
    with night.db.read() as session:
        revokers = Counter(
            body.split('"worker":"')[1].split(":")[1]
            for body in session.scalars(
                sa.select(AuditEvent.body).where(
                    AuditEvent.action == "revoke.started", AuditEvent.request_id.in_(expiring)
                )
            )
        )
    workers = {str(night.processes[f"worker{n}"].pid) for n in range(2)}
    assert set(revokers) <= workers, (revokers, workers)
    result = audit.verify(night.db)
    assert result.ok, result
    for name in night.processes:
        assert "Traceback" not in night.log(name), night.log(name)
    print(
        f"\ntopology: 2 web + 2 workers up in {started:.1f}s; asks={ASKS} recorded={len(wave)} "
        f"granted={sum(granted[i] for i in wave)} clicks={len(clicks)} (twice: {TWICE}) "
        f"expiries={len(expiring)} revoked={sum(revoked[i] for i in expiring)} lost=0 doubled=0; "
        f"proxy connections {dict(proxy.connections)}; revokes by worker pid {dict(revokers)}; "
        f"all done {took:.1f}s"
    )
