"""The inbox's one writer (app/slack/intake.py): the requests of concurrent acks are recorded
together, and the work of acknowledged ones is handed to the workers in the same statement; a
hand-over the database refused is tried again, never dropped."""

from __future__ import annotations

import threading
import time
from contextlib import closing
from datetime import timedelta

import pytest
from sqlalchemy import select

from app.access import AccessService
from app.slack.intake import GroupCommit, InboxWriteFailed, Intake, NotRecorded, Pending, _Row
from app.store.models import SeenRequest

KEY = "v0=" + "b" * 64
OTHER = "v0=" + "c" * 64


def row_of(service: AccessService, key: str) -> tuple[str, str | None]:
    with service.db.read() as session:
        found = session.execute(
            select(SeenRequest.state, SeenRequest.claimed_by).where(SeenRequest.signature == key)
        ).one()
    return found.state, found.claimed_by


def settled(service: AccessService, key: str, state: str) -> tuple[str, str | None]:
    """The row once it reaches `state` (the writer works on its own thread), or as it is
    after 10 s."""
    deadline = time.monotonic() + 10
    while (found := row_of(service, key))[0] != state and time.monotonic() < deadline:
        time.sleep(0.01)
    return found


def test_work_handed_to_the_workers_is_theirs_once_written(service: AccessService) -> None:
    inbox = Intake(service.db, service.clock, hand_off=True)
    with closing(inbox):
        assert inbox.record(KEY, b"command=%2Fjit", {})
        assert row_of(service, KEY) == ("working", inbox.owner)  # serve's, while it acks
        inbox.start(Pending(key=KEY, jobs=[lambda: None]))
        # Handed over by the writer while serving, not only when the inbox closes.
        assert settled(service, KEY, "new") == ("new", None)


def test_after_close_a_request_is_not_recorded(service: AccessService) -> None:
    inbox = Intake(service.db, service.clock)
    inbox.close()
    with pytest.raises(NotRecorded):
        inbox.record(KEY, b"command=%2Fjit", {})
    with service.db.read() as session:
        assert session.scalar(select(SeenRequest.signature)) is None


@pytest.mark.postgres
@pytest.mark.parametrize(
    "db", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_a_hand_over_wakes_the_listening_workers(service: AccessService) -> None:
    inbox = Intake(service.db, service.clock, hand_off=True)
    with closing(inbox), inbox.listener() as listening:
        listening.execute(f"LISTEN {Intake.CHANNEL}")
        assert inbox.record(KEY, b"command=%2Fjit", {})
        recorded_only = list(listening.notifies(timeout=0.2, stop_after=1))
        inbox.start(Pending(key=KEY, jobs=[lambda: None]))
        woken = list(listening.notifies(timeout=10, stop_after=1))
        assert row_of(service, KEY) == ("new", None)  # handed over by the time they wake
    assert recorded_only == []  # recording wakes nobody: the work is serve's until handed
    assert [n.channel for n in woken] == [Intake.CHANNEL]


class InboxTable:
    """Stands in for the inbox table behind a GroupCommit: refuses the writes it is told to,
    and keeps what each write was given."""

    def __init__(self, refuse: int, refuse_undo: int = 0) -> None:
        self.refuse = refuse
        self.refuse_undo = refuse_undo
        self.undos: list[list[str]] = []
        self.undone = threading.Event()
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

    def undo(self, keys: list[str]) -> bool:
        self.undos.append(list(keys))
        if len(self.undos) <= self.refuse_undo:
            return False
        self.undone.set()
        return True

    def hand(self, keys: list[str]) -> None:
        self.handed.append(keys)
        self.handed_some.set()


def group(database: InboxTable, retry_seconds: float) -> GroupCommit:
    return GroupCommit(database.write, database.undo, 5, database.hand, retry_seconds)


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
    with pytest.raises(InboxWriteFailed) as failed:
        writer.record(_Row(KEY, "command=%2Fjit", "{}"))
    assert isinstance(failed.value.__cause__, ConnectionError)
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


@pytest.mark.postgres
@pytest.mark.parametrize(
    "db", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_a_write_sent_again_after_its_answer_was_lost_still_finds_its_requests_new(
    service: AccessService,
) -> None:
    """The writer sends a write once more on a fresh connection when the first broke: if the
    first had committed, its rows are there already, and must not be called replays (the
    person would be told their click was a replay while it is done later)."""
    inbox, other = Intake(service.db, service.clock), Intake(service.db, service.clock)
    rows = [_Row(KEY, "command=%2Fjit", "{}")]
    with closing(inbox), closing(other):
        assert inbox._write_postgres(rows, []) == {KEY}
        assert inbox._write_postgres(rows, []) == {KEY}  # the same write, the same instant
        assert other._write_postgres(rows, []) == set()  # anyone else's: a replay
        service.clock.advance(timedelta(seconds=1))
        assert inbox._write_postgres(rows, []) == set()  # later: a replay


def test_a_request_recorded_after_its_ack_gave_up_is_undone_though_the_first_undo_failed() -> None:
    """The ack said "not recorded": the row the database wrote late must not be left for a
    sweep to do."""
    database = InboxTable(refuse=0, refuse_undo=1)
    writer = GroupCommit(database.write, database.undo, 0.05, database.hand, 0.01)
    database.release.clear()  # the write hangs past the ack's wait
    with pytest.raises(TimeoutError):
        writer.record(_Row(KEY, "command=%2Fjit", "{}"))
    database.release.set()  # and then lands
    assert database.undone.wait(10)
    writer.close(10)
    assert database.undos == [[KEY], [KEY]]
