"""Several `wardkey serve` instances on one PostgreSQL: a captured Slack request replayed to
another instance changes nothing there either, and forged requests are never remembered.

Every signed request is recorded in the inbox before it is acknowledged, in the one upsert
that refuses a request any instance recorded before, so a replay gets 409 at once wherever it
is sent (app/slack/intake.py)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from urllib.parse import urlencode

import pytest
from sqlalchemy import func, select

from app.access import AccessService
from app.slack.intake import Intake, Pending
from app.store.models import SeenRequest
from tests.slack_harness import RunningApp, run_app

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.parametrize(
        "db", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
    ),
]
HELP = "command=%2Fjit&text=help&user_id=U0AMIRA&team_id=T0WARD"
COMMAND = {
    "command": "/jit",
    "text": "request pharmacy-db:read 30m fix stuck order set on ward 12",
    "user_id": "U0AMIRA",
    "team_id": "T0WARD",
    "channel_id": "C0WARDOPS",
    "trigger_id": "1.0a",
}


@pytest.fixture
def two_instances(service: AccessService) -> Iterator[tuple[RunningApp, RunningApp]]:
    first, second = run_app(service), run_app(service)
    try:
        yield next(first), next(second)
    finally:
        first.close()
        second.close()


def test_a_replay_sent_to_the_same_instance_is_refused_at_once(
    two_instances: tuple[RunningApp, RunningApp],
) -> None:
    one, _ = two_instances
    now = int(time.time())
    assert one.post(HELP, timestamp=now).status_code == 200
    assert one.post(HELP, timestamp=now).status_code == 409
    assert one.post(HELP, timestamp=now + 1).status_code == 200  # a new request


def test_a_command_replayed_to_another_instance_is_refused_there_at_once(
    two_instances: tuple[RunningApp, RunningApp],
    service: AccessService,
) -> None:
    one, other = two_instances
    body = urlencode({**COMMAND, "response_url": one.fake.response_url()})
    now = int(time.time())
    assert one.post(body, timestamp=now).status_code == 200
    one.fake.wait_for("chat.postMessage", 2)  # the approvers' cards: the request was made
    assert other.post(body, timestamp=now).status_code == 409
    other.settle()
    assert len(service.requests_of_key("amira@ward.nhs.uk")) == 1
    assert other.fake.calls_to("chat.postMessage") == []
    assert other.fake.calls_to("response_url") == []


def test_a_form_replayed_to_another_instance_is_refused(
    two_instances: tuple[RunningApp, RunningApp], service: AccessService
) -> None:
    one, other = two_instances
    payload = {
        "type": "view_submission",
        "team": {"id": "T0WARD"},
        "user": {"id": "U0AMIRA", "team_id": "T0WARD"},
        "view": {"callback_id": "unknown-form", "state": {"values": {}}},
    }
    body = urlencode({"payload": json.dumps(payload)})
    now = int(time.time())
    assert one.post(body, timestamp=now).status_code != 409
    assert other.post(body, timestamp=now).status_code == 409


def test_forged_requests_are_not_remembered(
    two_instances: tuple[RunningApp, RunningApp], service: AccessService
) -> None:
    one, _ = two_instances
    for n in range(5):
        assert one.post(f"command=%2Fjit&text={n}", signature="v0=" + "0" * 64).status_code == 401
    with service.db.read() as session:
        assert session.scalar(select(func.count()).select_from(SeenRequest)) == 0


def test_a_wave_recorded_from_many_threads_takes_each_signature_once(
    service: AccessService,
) -> None:
    one, other = Intake(service.db), Intake(service.db)
    first = [f"v0={n:064x}" for n in range(200)]
    second = first[100:] + [f"v0={n:064x}" for n in range(200, 300)]

    def new(inbox: Intake, signatures: list[str]) -> set[str]:
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = pool.map(lambda s: inbox.record(s, b"command=%2Fjit", {}), signatures)
        return {s for s, answer in zip(signatures, answers, strict=True) if answer}

    with closing(one), closing(other):  # their heartbeats renew the claims until closed
        assert new(one, first) == set(first)
        assert new(other, second) == set(second[100:])
    with service.db.read() as session:
        assert session.scalar(select(func.count()).select_from(SeenRequest)) == 300


def test_an_inbox_closed_at_shutdown_marks_done_what_finished_and_stops_its_heartbeat(
    service: AccessService,
) -> None:
    """A heartbeat left running after its process stopped serving would renew its claims for
    ever, so no other process could take them over."""
    inbox = Intake(service.db, service.clock)
    key = "v0=" + "a" * 64
    assert inbox.record(key, b"command=%2Fjit", {})
    before = set(threading.enumerate())
    inbox.start(Pending(key=key))  # caused no work: marked done with others on the next beat
    heartbeats = [t for t in threading.enumerate() if t not in before]
    assert [t.name for t in heartbeats] == ["inbox-heartbeat"]
    inbox.close()
    assert not heartbeats[0].is_alive()
    with service.db.read() as session:
        assert session.scalar(select(SeenRequest.state).where(SeenRequest.signature == key)) == (
            "done"
        )
