"""The protocol every target adapter implements.

Every operation is idempotent: granting what is already there, or revoking what is already gone,
is success, reported as such so that access which existed before WardKey is recorded and left
alone. Failures are typed: transient ones are worth retrying, permanent ones need a person.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from app.adapters.redact import redact


class AdapterError(Exception):
    """The target did not do what was asked. `transient` says whether retrying may help.

    The text is logged, audited and shown in Slack: credentials in it become ***."""

    transient = False

    def __init__(self, message: str = "") -> None:
        super().__init__(redact(message))


class TransientAdapterError(AdapterError):
    """Timeouts, connection refused, throttling, a server error: retry later."""

    transient = True


class PermanentAdapterError(AdapterError):
    """Unknown account, missing privilege, bad configuration: retrying will not help."""


@dataclass(frozen=True)
class GrantResult:
    already_present: bool = False
    detail: str = ""


@dataclass(frozen=True)
class RevokeResult:
    already_absent: bool = False
    detail: str = ""
    sessions_ended: int = 0


@runtime_checkable
class Adapter(Protocol):
    def grant(self, account: str, entitlement: str, until: datetime) -> GrantResult:
        """Give `account` the entitlement; `until` lets targets with expiring membership use it."""
        ...

    def revoke(self, account: str, entitlement: str) -> RevokeResult:
        """Take the entitlement away (and end the account's sessions where the target has them)."""
        ...

    def check(self, account: str, entitlement: str) -> bool:
        """True when the target says `account` holds the entitlement right now."""
        ...

    def end_sessions(self, account: str) -> int:
        """End the account's open sessions; returns how many were ended (0 if none or N/A)."""
        ...

    def list_members(self, entitlement: str) -> set[str]:
        """Every account holding the entitlement, for reconciliation."""
        ...


@runtime_checkable
class BatchRevoker(Protocol):
    """Optionally, an adapter that can take many grants away in one call (a lockdown, a wave
    of expiries). It answers for each item, in order: its RevokeResult (sessions ended too, as
    `revoke` does), or the AdapterError that item met. An error raised for the whole call
    (the target unreachable) means none is known to be done; retrying is safe, every item
    being idempotent. `None` from `revoke_many` means the target has no batch call: the caller
    falls back to one `revoke` per grant."""

    def revoke_many(
        self, items: Sequence[tuple[str, str]]
    ) -> list[RevokeResult | AdapterError] | None: ...
