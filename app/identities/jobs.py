"""Identities' jobs, on every sweep tick.

Service accounts (`identities`): ask the owners whose account is due to confirm it and report
rounds past their deadline (once each; one open round per account, so two workers never ask
twice), then, once an hour by one worker (the hour is claimed in the database), flag accounts
whose owner is gone.

Vendors and contractors (`contracts`): when a vendor's contract has ended, its people's waiting
requests are cancelled and their access ended, each through a conditional transition (never
twice), and each requester told why."""

from __future__ import annotations

from collections.abc import Callable, Sized
from typing import Protocol

from app.access import AccessService
from app.identities.service import AttestationStep, IdentityService
from app.jobs import Job


class Needs(Protocol):
    """What the identities' jobs are given (app/scheduler `JobDeps`)."""

    @property
    def identities(self) -> IdentityService: ...

    @property
    def core(self) -> AccessService:
        """The request core: the vendors in its policy, and the ending of their access."""
        ...

    @property
    def owner_gone(self) -> Callable[[str], str | None]:
        """Why an owner is no longer a current person (deleted or unknown in Slack), or None."""
        ...

    @property
    def tell(self) -> Callable[[Sized], None]:
        """Ask the outbox to deliver what was recorded (the owners' cards, security's alerts,
        vendors' people told their access ended)."""
        ...


def identities(given: Needs) -> list[tuple[str, AttestationStep]]:
    """Service accounts: owners asked to re-attest, overdue ones reported; once an hour,
    one worker flags those whose owner is gone."""
    steps = given.identities.attestation_follow_ups()
    given.tell(steps)
    given.tell(given.identities.orphans_due(given.owner_gone) or [])
    return steps


def contracts(given: Needs) -> list[int]:
    """Vendors whose contract has ended: their waiting requests are cancelled and their
    access ended, and each requester is told why."""
    ids = given.core.end_lapsed_contracts()
    given.tell(ids)
    return ids


JOBS = (
    Job("identities", "sweep", identities),
    Job("contracts", "sweep", contracts),
)
