"""Acks first: work after earlier acks gives way while a Slack request is being acknowledged,
and only for a bounded time (the work is recorded; waiting delays it, never loses it)."""

from __future__ import annotations

import threading

from app.priority import AckFirst


def test_work_waits_for_the_acks_in_flight() -> None:
    acks = AckFirst(most_seconds=30)
    order: list[str] = []
    working = threading.Event()

    def work() -> None:
        working.set()
        acks.wait_turn()
        order.append("work")

    with acks.acking():
        thread = threading.Thread(target=work)
        thread.start()
        working.wait(10)
        with acks.acking():  # a second ack arrives meanwhile
            order.append("ack 1")
        order.append("ack 2")
    thread.join(10)
    assert order == ["ack 1", "ack 2", "work"]


def test_work_gives_way_only_so_long() -> None:
    acks = AckFirst(most_seconds=0.01)
    done = threading.Event()
    with acks.acking():  # an ack that does not end while the work waits
        thread = threading.Thread(target=lambda: (acks.wait_turn(), done.set()))
        thread.start()
        assert done.wait(10)
    thread.join(10)


def test_no_ack_in_flight_no_wait() -> None:
    acks = AckFirst(most_seconds=30)
    acks.wait_turn()  # returns at once: nothing to give way to
