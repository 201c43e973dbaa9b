"""The request core's dependencies (database, policy, adapters, clock, this worker's name and
lease, ticket systems), set up once and shared by its parts (reads, grants, requests,
break-glass), and the calls that need only them: a target's adapter with retries, taking access
away, and a once-per-period job's turn (app/lifecycle does the work)."""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import TypeVar

from app.adapters.base import Adapter, RevokeResult
from app.clock import Clock, SystemClock
from app.lifecycle import periods, targets
from app.lifecycle.leases import Heartbeat, TargetLanes
from app.policy.model import Policy
from app.store.db import Database
from app.ticket_systems import TicketDesk

T = TypeVar("T")

# How long a worker's lease on a grant or revoke in progress lasts unless renewed. A worker with
# a heartbeat renews its leases every third of this while it calls the target, however long the
# call takes; so a crashed worker's work is taken over about this long after it died.
DEFAULT_LEASE = timedelta(seconds=10)


class CoreDeps:
    """What the request core's parts are built from, one object shared by them all: a policy
    reload replaces its policy and adapters, so every part sees the new ones at once."""

    def __init__(
        self,
        db: Database,
        policy: Policy,
        adapters: Mapping[str, Adapter],
        clock: Clock | None = None,
        pause: Callable[[float], None] = time.sleep,
        *,
        worker: str | None = None,
        lease: timedelta = DEFAULT_LEASE,
        concurrency: int = 8,
        heartbeat: bool = False,
        tickets: TicketDesk | None = None,
    ) -> None:
        self.db = db
        self.policy = policy  # replaced, with the adapters, when the policy is reloaded
        self.adapters = adapters
        self.clock: Clock = clock or SystemClock()
        self.pause = pause  # waits between adapter retries; tests pass one that only records
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.lease = lease
        self.concurrency = concurrency  # calls a sweep makes at once on any one target
        self.lanes = TargetLanes(concurrency)
        # Processes renew their leases while they work; tests on a ManualClock need not.
        self.heartbeat = Heartbeat(self) if heartbeat else None
        # Reads tickets in the systems paths name (ServiceNow, Jira) and writes notes on them.
        self.tickets = tickets or TicketDesk()

    def call_target(self, target: str, operation: Callable[[Adapter], T]) -> T:
        """Call the target's adapter with the policy's retries (`targets.call_target`)."""
        return targets.call_target(self.adapters, self.policy, target, operation, self.pause)

    def take_away(
        self, target: str, account: str, entitlement: str, *, read_back: bool = True
    ) -> tuple[RevokeResult, int]:
        """Remove the access on the target, end the account's sessions and (unless `read_back`
        is False) read the target back (`targets.take_away`; StillPresent if it still shows the
        access). Returns the target's answer and how many sessions it ended."""
        return targets.take_away(
            self.adapters,
            self.policy,
            target,
            account,
            entitlement,
            self.pause,
            read_back=read_back,
        )

    def take_turn(self, job: str, period: str, at: datetime) -> bool:
        """Take this period's turn of a once-per-period job (a day's digest, an hour's look at
        the targets) for this worker: True for exactly one worker (`periods.take_turn`)."""
        return periods.take_turn(self.db, job, period, at, self.worker)
