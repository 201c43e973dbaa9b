"""Acknowledged means recorded: real `wardkey serve` and `wardkey worker` processes on a real
PostgreSQL, the fake Slack, and a signed-webhook console.

The approver clicks Approve on ten cards, three staff ask by command and one by the form; serve
acknowledges every one and is killed (SIGKILL) before any work after the ack is done (Slack
answers nothing meanwhile, so each piece of work waits on its first Slack call). A worker
started afterwards does all of it: every approval applied once, every card updated, every new
request made once with its cards posted once, and the audit chain intact.

A later kill point: serve killed while it waits on the console to grant approved access; the
worker takes the grants over, and none is lost or done twice.

And with the database unreachable, every click and command is answered at once that it was not
recorded, and nothing is acknowledged as accepted and then lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from app import audit
from app.access import AccessService
from app.adapters.registry import build_adapters
from app.demo.slack_driver import SlackDriver
from app.demo.slack_fake import FakeSlack, SlackUser
from app.demo.webhook_target import WebhookTarget
from app.directory import SlackDirectory
from app.lifecycle.deps import CoreDeps
from app.notify.notifier import Notifier
from app.policy import load_policy
from app.requests import messages as v
from app.requests.messages import APPROVE_ACTION
from app.slack.app import web_client
from app.slack.intake import Intake, NotRecorded
from app.store import AuditEvent, Database
from app.store.models import AccessRequest, Decision, RequestState, SeenRequest
from tests.conftest import fresh_postgres_schema
from tests.fakes.big_trust import APPROVER, CONSOLE, KEY_VARIABLE, ROLE, staff, write_big_trust
from tests.processes import free_port, stop
from tests.relay import Relay
from tests.system.test_reliability import state_of

pytestmark = pytest.mark.postgres

SCHEMA = os.environ.get("WARDKEY_TEST_SCHEMA", "wardkey") + "_intake"
SECRET = "intake-signing-secret-0123456789"
KEY = "k" * 32
CLICKS = 10
ASKERS = range(CLICKS, CLICKS + 3)  # staff who ask by command
FORM_ASKER = CLICKS + 3  # and one by the form
STAFF = CLICKS + 4
DB_OUTAGE_SECONDS = 30.0  # issue 12's outage, clicks arriving throughout


@dataclass
class Trust:
    db: Database
    service: AccessService
    fake: FakeSlack
    console: WebhookTarget
    env: dict[str, str]
    logs: Path

    def start(self, command: str, name: str, **extra: str) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("wb") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "app", *command.split()],
                env={**self.env, **extra},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def log_of(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")


@pytest.fixture
def trust(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Trust]:
    db = fresh_postgres_schema(SCHEMA)
    console = WebhookTarget(KEY.encode(), name="epr").start()
    fake = FakeSlack(token="xoxb-intake").start()
    fake.add_user(SlackUser(APPROVER.slack_user_id or "", APPROVER.email, "Boss", "Lead"))
    for n in range(STAFF):
        person = staff(n)
        fake.add_user(SlackUser(person.slack_user_id or "", person.email, f"Staff {n}", "Nurse"))
    policy_path = tmp_path / "policy.yaml"
    write_big_trust(policy_path, console.url, STAFF)
    monkeypatch.setenv(KEY_VARIABLE, KEY)
    policy = load_policy(policy_path)
    service = AccessService(CoreDeps(db, policy, build_adapters(policy)))
    env = {
        **{k: val for k, val in os.environ.items() if not k.startswith("SLACK_")},
        "DATABASE_URL": db.url.render_as_string(hide_password=False),
        "WARDKEY_POLICY": str(policy_path),
        "SLACK_BOT_TOKEN": "xoxb-intake",
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_API_URL": fake.api_url,
        "WARDKEY_EXPIRY_SWEEP_SECONDS": "0.2",
        "WARDKEY_SWEEP_SECONDS": "1",
        KEY_VARIABLE: KEY,
    }
    (tmp_path / "logs").mkdir()
    try:
        yield Trust(db, service, fake, console, env, tmp_path / "logs")
    finally:
        fake.latency = 0
        console.stop()
        fake.stop()
        db.dispose()


def wait_until_up(url: str, proc: subprocess.Popen[bytes], trust: Trust, name: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, trust.log_of(name)
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, trust.log_of(name)
        time.sleep(0.1)


def request_form(user: str) -> dict[str, object]:
    return {
        v.ACCESS_BLOCK: {v.ACCESS_ACTION: {"selected_option": {"value": f"{CONSOLE}:{ROLE}"}}},
        v.DURATION_BLOCK: {v.DURATION_ACTION: {"value": "1h"}},
        v.REASON_BLOCK: {v.REASON_ACTION: {"value": f"ward 12 order sets stuck ({user})"}},
        v.TICKET_BLOCK: {v.TICKET_ACTION: {"value": ""}},
    }


def decisions(db: Database) -> Counter[int]:
    with db.read() as session:
        return Counter(session.scalars(sa.select(Decision.request_id)))


def requests_by(db: Database) -> Counter[str]:
    with db.read() as session:
        return Counter(session.scalars(sa.select(AccessRequest.requester)))


def waiting_with_cards(trust: Trust) -> tuple[list[int], dict[str, str]]:
    """Ten staff waiting for the lead's approval, the cards in the lead's DMs (their ts by
    text)."""
    fake = trust.fake
    notifier = Notifier(
        web_client(fake.token, fake.api_url),
        trust.service,
        SlackDirectory(web_client(fake.token, fake.api_url)),
    )
    waiting = []
    for n in range(CLICKS):
        view = trust.service.request(
            staff(n), CONSOLE, ROLE, timedelta(hours=1), f"ward {n} order sets stuck"
        )
        notifier.deliver_now()
        waiting.append(view.id)
    cards = {
        c.args["text"].split(":")[0]: c.response["ts"] for c in fake.calls_to("chat.postMessage")
    }
    assert len(cards) == CLICKS
    return waiting, cards


@pytest.mark.parametrize("work", ["local", "worker"])
def test_serve_killed_after_acking_clicks_commands_and_a_form_loses_none(
    trust: Trust, tmp_path: Path, work: str
) -> None:
    """`work`: WARDKEY_INTAKE_WORK, who does the work after the ack (serve, or the workers:
    then serve hands each request over and no worker runs until serve is dead)."""
    db, service, fake = trust.db, trust.service, trust.fake
    waiting, cards = waiting_with_cards(trust)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = trust.start(
        f"serve --port {port} --host 127.0.0.1 --no-scheduler", "serve", WARDKEY_INTAKE_WORK=work
    )
    worker: subprocess.Popen[bytes] | None = None
    try:
        wait_until_up(url, serve, trust, "serve")
        slack = SlackDriver(url, fake, httpx.Client(timeout=10), SECRET)
        form_user = staff(FORM_ASKER).slack_user_id or ""
        acked = []
        if work == "local":
            # The form's asker looked at their status earlier (serve knows who they are).
            assert slack.command("/jit", "status", form_user).status_code == 200
            fake.wait_for("response_url", 1, timeout=10)
        else:
            # Serve does no work: the form (whose ack looks its asker up) comes while Slack
            # still answers; its work waits for a worker like the rest.
            form = slack.submit_view(v.REQUEST_VIEW, request_form(form_user), form_user)
            acked.append(form.status_code)

        # From now on Slack answers nothing: work after each ack waits on its first call.
        fake.latency = 3600
        for request_id in waiting:
            answer = slack.click(APPROVE_ACTION, str(request_id), APPROVER.slack_user_id or "")
            acked.append(answer.status_code)
        for n in ASKERS:
            said = slack.command(
                "/jit",
                f"request {CONSOLE}:{ROLE} 1h ward {n} order sets stuck",
                staff(n).slack_user_id or "",
            )
            acked.append(said.status_code)
        if work == "local":
            form = slack.submit_view(v.REQUEST_VIEW, request_form(form_user), form_user)
            acked.append(form.status_code)
        assert form.content in (b"", b"{}") or "errors" not in form.json(), form.text
        assert acked == [200] * len(acked)
        applied_at_kill = sum(1 for n in decisions(db).values() if n)
        serve.send_signal(signal.SIGKILL)
        serve.wait()
        killed = time.monotonic()

        # Slack is back; a worker (no HTTP, no Slack at start) finishes what serve acked.
        fake.latency = 0
        worker = trust.start("worker", "worker")
        deadline = time.monotonic() + 60
        expected_requesters = {staff(n).email for n in [*ASKERS, FORM_ASKER]}
        while True:
            done = (
                len(decisions(db)) == CLICKS
                and expected_requesters <= set(requests_by(db))
                and _all_told(fake, waiting, expected_requesters)
            )
            if done:
                break
            assert worker.poll() is None, trust.log_of("worker")
            assert time.monotonic() < deadline, (decisions(db), trust.log_of("worker")[-3000:])
            time.sleep(0.1)
        recovered_in = time.monotonic() - killed
        fake.latency = 0
        time.sleep(1)  # let anything doubled show itself before counting
    finally:
        stop(serve, worker)

    # Every approval applied exactly once, and the access granted once.
    assert applied_at_kill == 0, "the kill came after the work; it proves nothing"
    assert decisions(db) == Counter({rid: 1 for rid in waiting})
    granted = [line for line in trust.console.log if "gave" in line]
    assert len(granted) == len(set(granted)) == CLICKS
    assert {service.get(rid).state for rid in waiting} <= {
        RequestState.ACTIVE,
        RequestState.GRANTING,
    }
    # Every card was updated (in place: no new card for a click).
    updated = {c.args["ts"] for c in fake.calls_to("chat.update")}
    assert set(cards.values()) <= updated
    # Each asker's request made once, its card posted once to the lead, and the asker told once.
    made = requests_by(db)
    for n in [*ASKERS, FORM_ASKER]:
        assert made[staff(n).email] == 1
    new_cards = [c for c in fake.calls_to("chat.postMessage") if c.args.get("blocks")]
    by_request = Counter(c.args["text"].split(":")[0] for c in new_cards)
    assert set(by_request.values()) == {1}, by_request
    told = [
        c
        for c in fake.calls_to("chat.postMessage")
        if c.args["channel"] == staff(FORM_ASKER).slack_user_id
    ]
    assert len([c for c in told if "is with the" in c.args["text"]]) == 1
    replies = [c for c in fake.calls_to("response_url") if "is with the" in c.args.get("text", "")]
    assert len(replies) == len(ASKERS)
    assert audit.verify(db).ok
    print(
        f"\nintake ({work}) after SIGKILL: attempted={len(acked)} acked={acked.count(200)} "
        f"applied={len(decisions(db)) + len(ASKERS) + 1} lost=0 doubled=0 "
        f"recovery={recovered_in:.1f}s"
    )


def test_with_the_work_on_workers_serve_records_and_a_worker_does_each_once(
    trust: Trust,
) -> None:
    """WARDKEY_INTAKE_WORK=worker: serve (its sweeps on, as usual) only records and
    acknowledges; the worker takes each request as it is handed over and does its work, on
    its first try, once."""
    db, service, fake = trust.db, trust.service, trust.fake
    waiting = [
        service.request(staff(n), CONSOLE, ROLE, timedelta(hours=1), f"ward {n} order sets").id
        for n in range(3)
    ]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    worker = trust.start("worker", "worker")
    serve = trust.start(
        f"serve --port {port} --host 127.0.0.1", "serve", WARDKEY_INTAKE_WORK="worker"
    )
    boss = APPROVER.slack_user_id or ""
    asker = staff(ASKERS[0])
    email = asker.email or ""
    try:
        wait_until_up(url, serve, trust, "serve")
        slack = SlackDriver(url, fake, httpx.Client(timeout=10), SECRET)
        acked = [slack.click(APPROVE_ACTION, str(rid), boss).status_code for rid in waiting]
        said = slack.command(
            "/jit", f"request {CONSOLE}:{ROLE} 1h ward 7 order sets", asker.slack_user_id or ""
        )
        assert [*acked, said.status_code] == [200] * (len(waiting) + 1)
        deadline = time.monotonic() + 30
        while not (len(decisions(db)) == len(waiting) and requests_by(db)[email] == 1):
            assert worker.poll() is None, trust.log_of("worker")
            assert time.monotonic() < deadline, trust.log_of("worker")[-3000:]
            time.sleep(0.1)
        fake.wait_for("response_url", 1, timeout=10)  # the asker is told where it went
        time.sleep(1)  # let anything doubled show itself before counting
    finally:
        stop(serve, worker)

    assert decisions(db) == Counter({rid: 1 for rid in waiting})
    assert requests_by(db)[email] == 1
    with db.read() as session:
        rows = session.execute(
            sa.select(SeenRequest.claimed_by, SeenRequest.attempts, SeenRequest.state).where(
                SeenRequest.body.is_(None), SeenRequest.claimed_by.is_not(None)
            )
        ).all()
    # The worker claimed each request with work, on its first try; serve did none of it.
    by_worker = [r for r in rows if r.claimed_by.split(":")[1] == str(worker.pid)]
    assert len(by_worker) == len(waiting) + 1, rows
    assert {(r.attempts, r.state) for r in by_worker} == {(1, "done")}
    assert "event=intake_work where=worker" in trust.log_of("serve")
    assert "event=intake_following how=listen" in trust.log_of("worker")
    assert audit.verify(db).ok


def test_serve_killed_while_granting_approved_access_loses_none_and_doubles_none(
    trust: Trust,
) -> None:
    """A later kill point: serve has recorded approvals and is waiting on the console to grant
    the access (it answers after 5 s) when it is SIGKILLed, other clicks' work not yet begun. A
    worker takes it all over: each approval recorded once, each grant finished once (the
    console asked again only for what was taken over), every card updated, the audit chain
    intact."""
    db, fake, console = trust.db, trust.fake, trust.console
    waiting, _ = waiting_with_cards(trust)
    console.delay_seconds = 5
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = trust.start(f"serve --port {port} --host 127.0.0.1 --no-scheduler", "serve")
    worker: subprocess.Popen[bytes] | None = None
    try:
        wait_until_up(url, serve, trust, "serve")
        slack = SlackDriver(url, fake, httpx.Client(timeout=10), SECRET)
        boss = APPROVER.slack_user_id or ""
        acked = [slack.click(APPROVE_ACTION, str(rid), boss).status_code for rid in waiting]
        assert acked == [200] * CLICKS
        deadline = time.monotonic() + 30
        while granting(db, waiting) < 2:  # two on the console: kill
            assert time.monotonic() < deadline, trust.log_of("serve")[-3000:]
            time.sleep(0.02)
        serve.send_signal(signal.SIGKILL)
        serve.wait()
        killed = time.monotonic()
        states_at_kill = Counter(state_of(db, waiting).values())
        console.delay_seconds = 0
        worker = trust.start("worker", "worker")
        deadline = time.monotonic() + 60
        while set(state_of(db, waiting).values()) != {RequestState.ACTIVE.value} or not (
            _all_told(fake, waiting, set())
        ):
            assert worker.poll() is None, trust.log_of("worker")
            assert time.monotonic() < deadline, (state_of(db, waiting), trust.log_of("worker"))
            time.sleep(0.1)
        recovered_in = time.monotonic() - killed
        time.sleep(1)  # let anything doubled show itself before counting
    finally:
        stop(serve, *([worker] if worker else []))

    assert states_at_kill[RequestState.GRANTING.value] >= 2, "not killed mid-grant: no proof"
    assert decisions(db) == Counter({rid: 1 for rid in waiting})
    succeeded = audit_of(db, "grant.succeeded")
    assert sorted(succeeded) == sorted(waiting)  # each grant finished once
    taken_over = audit_of(db, "grant.taken_over")
    accounts = [line for line in console.log if " gave " in line]
    assert len(set(accounts)) == CLICKS
    assert len(accounts) <= CLICKS + len(taken_over)  # asked again only where taken over
    assert audit.verify(db).ok
    print(
        f"\nintake, serve killed mid-grant: attempted={CLICKS} applied={len(decisions(db))} "
        f"lost=0 doubled=0 states at kill={dict(states_at_kill)} taken over={len(taken_over)} "
        f"console asked={len(accounts)} recovery={recovered_in:.1f}s"
    )


def granting(db: Database, ids: list[int]) -> int:
    return sum(s == RequestState.GRANTING.value for s in state_of(db, ids).values())


def audit_of(db: Database, action: str) -> list[int]:
    with db.read() as session:
        return [
            rid
            for rid in session.scalars(
                sa.select(AuditEvent.request_id).where(AuditEvent.action == action)
            )
            if rid is not None
        ]


def _all_told(fake: FakeSlack, waiting: list[int], askers: set[str]) -> bool:
    updated = {c.args["text"].split(":")[0] for c in fake.calls_to("chat.update")}
    if not all(f"Access request #{rid}" in updated for rid in waiting):
        return False
    replies = [c for c in fake.calls_to("response_url") if "is with the" in c.args.get("text", "")]
    return len(replies) >= len(askers) - 1


def test_clicks_while_the_database_is_unreachable_are_told_not_recorded(trust: Trust) -> None:
    db, service, fake = trust.db, trust.service, trust.fake
    waiting = [
        service.request(staff(n), CONSOLE, ROLE, timedelta(hours=1), f"ward {n} order sets").id
        for n in range(3)
    ]
    url = db.url
    link = Relay((url.host or "127.0.0.1", url.port or 5432))
    through_link = url.set(host="127.0.0.1", port=link.port)
    port = free_port()
    serve = trust.start(
        f"serve --port {port} --host 127.0.0.1 --no-scheduler",
        "serve",
        DATABASE_URL=through_link.render_as_string(hide_password=False),
    )
    boss = APPROVER.slack_user_id or ""
    try:
        wait_until_up(f"http://127.0.0.1:{port}", serve, trust, "serve")
        slack = SlackDriver(f"http://127.0.0.1:{port}", fake, httpx.Client(timeout=10), SECRET)

        link.cut()  # the database is gone for DB_OUTAGE_SECONDS, the clicks arriving throughout
        gone = time.monotonic()
        clicks = []
        while True:
            clicks += [slack.click(APPROVE_ACTION, str(rid), boss) for rid in waiting]
            if time.monotonic() - gone >= DB_OUTAGE_SECONDS:
                break
            time.sleep(DB_OUTAGE_SECONDS / 5)
        asked = slack.command("/jit", f"request {CONSOLE}:{ROLE} 1h ward 9 order sets", boss)
        form = slack.submit_view(v.REQUEST_VIEW, request_form(boss), boss)
        event = slack.event({"type": "app_home_opened", "user": boss, "tab": "home"}, "EvDown1")

        # Each is answered at once, and none as if it had been accepted.
        assert [c.status_code for c in clicks] == [200] * len(clicks)
        told = fake.wait_for("response_url", len(clicks), timeout=10)
        assert all("could not record this" in c.args["text"] for c in told)
        assert "could not record this" in asked.json()["text"]
        assert form.json()["response_action"] == "errors"
        assert "Not recorded" in next(iter(form.json()["errors"].values()))
        assert event.status_code == 503  # Slack sends the event again
        assert {service.get(rid).state for rid in waiting} == {RequestState.PENDING}

        # The database is back: the next click is recorded and done.
        link.restore()
        again = slack.click(APPROVE_ACTION, str(waiting[0]), boss)
        assert again.status_code == 200
        deadline = time.monotonic() + 20
        while service.get(waiting[0]).state == RequestState.PENDING:
            assert time.monotonic() < deadline, trust.log_of("serve")[-2000:]
            time.sleep(0.1)
    finally:
        stop(serve)
        link.close()
    log = trust.log_of("serve")
    # The outage is logged once, and its end once: not a line (or traceback) per request.
    assert log.count("event=intake_failed") == 1, log[-3000:]
    not_recorded = len(clicks) + 3  # and the command, the form and the event
    assert log.count(f"event=intake_recovered not_recorded={not_recorded}") == 1, log[-3000:]
    assert {service.get(rid).state for rid in waiting[1:]} == {RequestState.PENDING}
    assert decisions(db) == Counter({waiting[0]: 1})
    print(
        f"\nintake with the database down {DB_OUTAGE_SECONDS:.0f} s: attempted={not_recorded} "
        f"told not recorded={len(told) + 2} ({len(clicks)} clicks, a command, a form) sent "
        "again by Slack=1 (an event, 503) applied=0 lost=0; once it was back: attempted=1 "
        "applied=1"
    )


def test_an_ack_whose_database_hangs_says_not_recorded_and_the_late_row_is_undone(
    trust: Trust,
) -> None:
    """The database stops answering mid-conversation (connected, silent). The ack must still
    leave within Slack's 3 s, saying the request was not recorded; when the database answers
    later and has recorded it after all, it is marked done with nothing done, as the person
    was told, and no worker ever does it."""
    url = trust.db.url
    link = Relay((url.host or "127.0.0.1", url.port or 5432))
    through_link = Database(url.set(host="127.0.0.1", port=link.port))
    inbox = Intake(through_link)
    answers: list[object] = []

    def record(key: str) -> None:
        try:
            answers.append(inbox.record(key, b"command=%2Fjit&text=status", {}))
        except NotRecorded as exc:
            answers.append(exc)

    try:
        record("v0=before")  # the inbox's connection is open and has answered
        link.freeze()  # from now on nothing passes
        acking = threading.Thread(target=record, args=("v0=during",))
        acking.start()
        acking.join(timeout=30)  # generous: Slack gives an ack 3 s, the inbox 2.5 s of it
        assert not acking.is_alive(), "the ack hung on a database that does not answer"
        link.thaw()  # the database answers again, and records the request late
        deadline = time.monotonic() + 20
        while _state(trust.db, "v0=during") != "done":
            assert time.monotonic() < deadline, _state(trust.db, "v0=during")
            time.sleep(0.1)
    finally:
        inbox.close()
        link.close()
        through_link.dispose()
    assert answers[0] is True
    assert isinstance(answers[1], NotRecorded)
    with trust.db.read() as session:
        outcome = session.scalar(
            sa.select(SeenRequest.outcome).where(SeenRequest.signature == "v0=during")
        )
    assert outcome == "not recorded"
    # Nothing is left for a worker to take up.
    assert [p.key for p, *_ in Intake(trust.db).claim_due(new_after=timedelta(0))] == []


def _state(db: Database, key: str) -> str | None:
    with db.read() as session:
        found: str | None = session.scalar(
            sa.select(SeenRequest.state).where(SeenRequest.signature == key)
        )
    return found
