"""Whether the Slack request being handled was seen before, by any app instance.

The HTTP layer (app/web.py) does not wait for the shared check before acking: it hands Bolt a
`Verdict` that is worked out on first asking, by the work the request causes after its ack
(which drops itself for a replay), or by a form submission before its answer. A request that
causes no work never asks. Under Socket Mode, or where the check was already made in memory,
there is no verdict and work runs at once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar

log = logging.getLogger(__name__)


class Verdict:
    """True if the request is new, False for a replay: asked at most once, whoever asks."""

    def __init__(self, decide: Callable[[], bool]) -> None:
        self._decide: Callable[[], bool] | None = decide
        self._new = False
        self._lock = threading.Lock()

    def is_new(self) -> bool:
        with self._lock:
            if self._decide is not None:
                decide, self._decide = self._decide, None
                self._new = decide()  # an error propagates now and counts as a replay later
            return self._new


_current: ContextVar[Verdict | None] = ContextVar("wardkey_replay_verdict", default=None)


@contextlib.contextmanager
def judging(verdict: Verdict | None) -> Iterator[None]:
    """While the request runs through Bolt (listeners run on this thread), `current()` is it."""
    token = _current.set(verdict)
    try:
        yield
    finally:
        _current.reset(token)


def current() -> Verdict | None:
    return _current.get()


def is_new(verdict: Verdict | None) -> bool:
    """A check that failed counts as a replay: acting on a request that might be one is worse
    than asking the person to try again."""
    if verdict is None:
        return True
    try:
        new = verdict.is_new()
    except Exception as exc:
        log.error("event=replay_check_failed error=%s", type(exc).__name__)
        return False
    if not new:
        log.warning("event=replayed_request_ignored")
    return new
