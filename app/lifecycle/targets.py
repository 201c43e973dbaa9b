"""Calls to a target's adapter: transient failures retried with back-off and jitter, and the
one way access is taken away (revoke, end the sessions, read the target back)."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from typing import TypeVar

from app.adapters.base import Adapter, AdapterError, RevokeResult
from app.policy.model import Policy

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_BASE_SECONDS = 0.25  # first wait up to 0.5 s, then 1 s, 2 s… (full jitter)
RETRY_CAP_SECONDS = 8.0


class StillPresent(Exception):
    """The target still shows access that was just removed."""


def describe_error(exc: BaseException) -> str:
    """An error as recorded on a request and in the audit trail (bounded)."""
    return f"{type(exc).__name__}: {exc}"[:1000]


def call_target(
    adapters: Mapping[str, Adapter],
    policy: Policy,
    target: str,
    operation: Callable[[Adapter], T],
    pause: Callable[[float], None],
) -> T:
    """Call the target's adapter, retrying transient failures with exponential back-off and
    full jitter (so workers retrying together do not hit a recovering target at once), up
    to the target's `attempts`, waiting with `pause`; the last error is raised."""
    adapter = adapters[target]
    attempts = policy.targets[target].attempts
    for attempt in range(1, attempts + 1):
        try:
            return operation(adapter)
        except AdapterError as exc:
            if not exc.transient or attempt == attempts:
                raise
            delay = random.uniform(0, min(RETRY_CAP_SECONDS, RETRY_BASE_SECONDS * 2**attempt))
            log.warning(
                "event=adapter_retry target=%s attempt=%s wait=%.2f error=%s",
                target,
                attempt,
                delay,
                describe_error(exc),
            )
            pause(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def take_away(
    adapters: Mapping[str, Adapter],
    policy: Policy,
    target: str,
    account: str,
    entitlement: str,
    pause: Callable[[float], None],
    *,
    read_back: bool = True,
) -> tuple[RevokeResult, int]:
    """Remove the access on the target and end the account's live sessions, then (unless
    `read_back` is False) read the target back: StillPresent if it still shows the access.
    Returns the target's answer and how many sessions it said it ended. Every removal
    (expiry, revoke, lockdown, standing access, an uncertain grant undone) goes through
    here, so none of them can forget the sessions or the read-back."""

    def call(operation: Callable[[Adapter], T]) -> T:
        return call_target(adapters, policy, target, operation, pause)

    result = call(lambda a: a.revoke(account, entitlement))
    sessions = call(lambda a: a.end_sessions(account))
    if read_back and call(lambda a: a.check(account, entitlement)):
        raise StillPresent("the target still shows the access after the revoke")
    return result, sessions
