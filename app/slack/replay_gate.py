"""Whether the Slack request being handled was seen before, by any app instance.

The HTTP layer (app/web.py) starts the shared check beside the ack rather than before it, so the
ack never waits on the database; the work a request causes after its ack waits for the verdict
first and is dropped for a replay. Under Socket Mode, or where the check was already made in
memory, there is no pending verdict and work runs at once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from concurrent.futures import Future
from contextvars import ContextVar

log = logging.getLogger(__name__)
VERDICT_WAIT_SECONDS = 15.0

Verdict = Future[bool]  # True: first time seen; False: a replay
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
    """Wait for the verdict. A check that failed counts as a replay: acting on a request that
    might be one is worse than asking the person to try again."""
    if verdict is None:
        return True
    try:
        new = verdict.result(timeout=VERDICT_WAIT_SECONDS)
    except Exception as exc:
        log.error("event=replay_check_failed error=%s", type(exc).__name__)
        return False
    if not new:
        log.warning("event=replayed_request_ignored")
    return new
