"""The inbox's one writer (app/slack/intake.py): the requests of concurrent acks are recorded
together, and the work of acknowledged ones is handed to the workers in the same statement; a
hand-over the database refused is tried again, never dropped."""

from __future__ import annotations

import threading
import time
from contextlib import closing

import pytest
from sqlalchemy import select

from app.access import AccessService
from app.slack.intake import GroupCommit, Intake, Pending, _Row
from app.store.models import SeenRequest

KEY = "v0=" + "b" * 64
OTHER = "v0=" + "c" * 64


def row_of(service: AccessService, key: str) -> tuple[str, str | None]:
    with service.db.read() as session:
        found = session.execute(
            select(SeenRequest.state, SeenRequest.claimed_by).where(SeenRequest.signature == key)
        ).one()
    return found.state, found.claimed_by


def test_work_handed_to_the_workers_is_theirs_once_written(service: AccessService) -> None:
    inbox = Intake(service.db, service.clock, hand_off=True)
    with closing(inbox):
        assert inbox.record(KEY, b"command=%2Fjit", {})
        assert row_of(service, KEY) == ("working", inbox.owner)  # serve's, while it acks
        inbox.start(Pending(key=KEY, jobs=[lambda: None]))
    # Closing writes what waits: the request is new and unclaimed, for any worker to take.
    assert row_of(service, KEY) == ("new", None)


@pytest.mark.postgres
@pytest.mark.parametrize(
    "db", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_a_hand_over_wakes_the_listening_workers(service: AccessService) -> None:
    inbox = Intake(service.db, service.clock, hand_off=True)
    with closing(inbox), inbox.listener() as listening:
        listening.execute(f"LISTEN {Intake.CHANNEL}")
        assert inbox.record(KEY, b"command=%2Fjit", {})
        inbox.start(Pending(key=KEY, jobs=[lambda: None]))
        woken = list(listening.notifies(timeout=10, stop_after=1))
    assert [n.channel for n in woken] == [Intake.CHANNEL]
    assert row_of(service, KEY) == ("new", None)


class InboxTable:
    """Stands in for the inbox table behind a GroupCommit: refuses the writes it is told to,
    and keeps what each write was given."""

    def __init__(self, refuse: int) -> None:
        self.refuse = refuse
        self.writes: list[tuple[list[str], list[str]]] = []
        self.handed: list[list[str]] = []
        self.wrote = threading.Event()
        self.handed_some = threading.Event()
        self.release = threading.Event()  # cleared: a write waits until it is set
        self.release.set()

    def write(self, rows: list[_Row], handing: list[str]) -> set[str]:
        self.writes.append(([r.key for r in rows], list(handing)))
        self.wrote.set()
        self.release.wait(10)
        if len(self.writes) <= self.refuse:
            raise ConnectionError("the database went away")
        return {r.key for r in rows}

    def hand(self, keys: list[str]) -> None:
        self.handed.append(keys)
        self.handed_some.set()


def group(database: InboxTable, retry_seconds: float) -> GroupCommit:
    return GroupCommit(
        database.write, lambda keys: None, 5, database.hand, retry_seconds=retry_seconds
    )


def test_a_refused_hand_over_goes_with_the_next_write() -> None:
    database = InboxTable(refuse=1)
    writer = group(database, retry_seconds=600)  # no retry of its own in this test
    writer.hand_over(KEY)
    assert database.wrote.wait(10)
    assert writer.record(_Row(OTHER, "command=%2Fjit", "{}"))
    writer.close(10)
    assert database.writes == [([], [KEY]), ([OTHER], [KEY])]
    assert database.handed == [[KEY]]


def test_a_refused_hand_over_is_tried_again_with_no_other_traffic(
    caplog: pytest.LogCaptureFixture,
) -> None:
    database = InboxTable(refuse=2)
    writer = group(database, retry_seconds=0.01)
    writer.hand_over(KEY)
    assert database.handed_some.wait(10)
    writer.close(10)
    assert database.writes == [([], [KEY])] * 3
    assert database.handed == [[KEY]]
    said = [r.getMessage().split(" ", 1)[0] for r in caplog.records if "hand_over" in r.msg]
    # Two refusals in a row are one outage: logged once, and its end once.
    assert said == ["event=intake_hand_over_failed", "event=intake_hand_over_recovered"]


def test_acks_of_a_refused_write_are_told_it_failed_and_the_next_ones_are_recorded() -> None:
    database = InboxTable(refuse=1)
    writer = group(database, retry_seconds=600)
    with pytest.raises(ConnectionError):
        writer.record(_Row(KEY, "command=%2Fjit", "{}"))
    assert writer.record(_Row(OTHER, "command=%2Fjit", "{}"))
    writer.close(10)
    assert database.writes == [([KEY], []), ([OTHER], [])]


def test_the_same_request_twice_in_one_write_is_recorded_once_the_second_a_replay() -> None:
    database = InboxTable(refuse=0)
    writer = group(database, retry_seconds=600)
    database.release.clear()  # the writer holds its first write until told
    first = threading.Thread(target=writer.record, args=(_Row(OTHER, "command=%2Fjit", "{}"),))
    first.start()
    assert database.wrote.wait(10)
    answers: list[bool] = []
    twice = [
        threading.Thread(target=lambda: answers.append(writer.record(_Row(KEY, "a", "{}"))))
        for _ in range(2)
    ]
    for thread in twice:
        thread.start()
    deadline = time.monotonic() + 10
    while writer._queue.qsize() < 2 and time.monotonic() < deadline:  # both wait their turn
        time.sleep(0.01)
    database.release.set()
    for thread in [first, *twice]:
        thread.join(10)
    writer.close(10)
    assert database.writes == [([OTHER], []), ([KEY], [])]
    assert sorted(answers) == [False, True]
