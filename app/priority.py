"""Acks first: Slack's 3 s limit is on the ack, and the work after it is already recorded.

In one process the ack path (signature, inbox write, Bolt's ack) and the work after earlier
acks (service calls, rendering and sending messages) share one interpreter. During a burst the
work would take the CPU from the acks being measured by Slack; so each piece of work waits,
briefly and boundedly, until no ack is in flight. Waiting delays the work, never loses it:
it is in the inbox or the outbox already.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class AckFirst:
    def __init__(self, most_seconds: float = 0.5) -> None:
        self.most_seconds = most_seconds  # the longest a piece of work gives way
        self._acking = 0
        self._quiet = threading.Condition()

    @contextmanager
    def acking(self) -> Iterator[None]:
        """Around the handling of one Slack request, up to its answer."""
        with self._quiet:
            self._acking += 1
        try:
            yield
        finally:
            with self._quiet:
                self._acking -= 1
                if not self._acking:
                    self._quiet.notify_all()

    def wait_turn(self) -> None:
        """Before a piece of work: let the acks in flight finish first (bounded)."""
        if not self._acking:  # the usual case: no lock, no wait
            return
        with self._quiet:
            self._quiet.wait_for(lambda: not self._acking, timeout=self.most_seconds)


ACKS = AckFirst()
