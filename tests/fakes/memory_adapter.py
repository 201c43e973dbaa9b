"""An in-memory target for lifecycle tests: a real implementation of the adapter protocol,
with switches to make the target fail or the process "crash" around a call."""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from app.adapters.base import (
    GrantResult,
    PermanentAdapterError,
    RevokeResult,
    TransientAdapterError,
)


class SimulatedCrash(BaseException):
    """Stands for the process dying: not an Exception, so nothing in the service catches it."""


@dataclass
class MemoryTarget:
    members: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    sessions: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    down: bool = False
    # Operations that "crash the process" right after the target has done them.
    crash_after: set[str] = field(default_factory=set)
    # Revokes that report success but leave the access in place (a lying target).
    sticky: bool = False
    # The next `fail_next` calls fail as a brief outage would; operations in `refuse` always
    # fail permanently.
    fail_next: int = 0
    refuse: set[str] = field(default_factory=set)
    # Accounts whose revoke the target refuses (permanently) while they are listed.
    refuse_revoke_of: set[str] = field(default_factory=set)
    # Operations the target performs but whose answer is lost (a time-out after the fact).
    lose_answer: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _enter(self, op: str, account: str, entitlement: str) -> None:
        self.calls.append((op, account, entitlement))
        if self.down:
            raise TransientAdapterError(f"target unreachable during {op}")
        if self.fail_next > 0:
            self.fail_next -= 1
            raise TransientAdapterError(f"target hiccup during {op}")
        if op in self.refuse:
            raise PermanentAdapterError(f"target refuses {op}: no such account")

    def _leave(self, op: str) -> None:
        if op in self.lose_answer:  # the target did it, but the answer never arrived
            raise TransientAdapterError(f"no answer in time during {op}")
        if op in self.crash_after:
            self.crash_after.discard(op)
            raise SimulatedCrash(op)

    def grant(self, account: str, entitlement: str, until: datetime) -> GrantResult:
        with self._lock:
            self._enter("grant", account, entitlement)
            present = account in self.members[entitlement]
            self.members[entitlement].add(account)
        self._leave("grant")
        return GrantResult(already_present=present)

    def revoke(self, account: str, entitlement: str) -> RevokeResult:
        with self._lock:
            self._enter("revoke", account, entitlement)
            if account in self.refuse_revoke_of:
                raise PermanentAdapterError(f"target refuses to revoke {account}: account locked")
            absent = account not in self.members[entitlement]
            if not self.sticky:
                self.members[entitlement].discard(account)
        self._leave("revoke")
        return RevokeResult(already_absent=absent)

    def check(self, account: str, entitlement: str) -> bool:
        with self._lock:
            self._enter("check", account, entitlement)
            present = account in self.members[entitlement]
        self._leave("check")
        return present

    def end_sessions(self, account: str) -> int:
        with self._lock:
            self._enter("end_sessions", account, "")
            ended, self.sessions[account] = self.sessions[account], 0
            return ended

    def list_members(self, entitlement: str) -> set[str]:
        with self._lock:
            self._enter("list_members", "", entitlement)
            return set(self.members[entitlement])

    def holds(self, account: str, entitlement: str) -> bool:
        return account in self.members[entitlement]
