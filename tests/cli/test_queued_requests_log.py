"""Requests queued behind busy HTTP threads are logged as a summary, not a line each."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from waitress.task import ThreadedTaskDispatcher

from app.cli.serve import QueuedRequestsSummary


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def summary() -> Iterator[tuple[QueuedRequestsSummary, Clock]]:
    clock = Clock()
    summary = QueuedRequestsSummary(every_seconds=10, clock=clock)
    queue_logger = logging.getLogger("waitress.queue")
    queue_logger.addFilter(summary)
    yield summary, clock
    queue_logger.removeFilter(summary)


def test_waitress_warning_for_each_queued_request_becomes_one_line_per_interval(
    summary: tuple[QueuedRequestsSummary, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    _, clock = summary
    dispatcher = ThreadedTaskDispatcher()  # no threads: every task waits, and waitress warns
    caplog.set_level(logging.WARNING, logger="waitress.queue")
    for _ in range(5):
        dispatcher.add_task(object())
    clock.now = 9.9
    dispatcher.add_task(object())
    clock.now = 10.0
    dispatcher.add_task(object())

    lines = [r.getMessage() for r in caplog.records if r.name == "waitress.queue"]
    assert len(lines) == 2
    assert lines[0].startswith("event=http_requests_queued depth=1 deepest=1 warnings=1 ")
    # The second stands for the six warnings since the first, the queue 7 deep at most.
    assert lines[1].startswith("event=http_requests_queued depth=7 deepest=7 warnings=6 ")
    assert "add threads (--threads) or instances" in lines[1]
