"""Grants' jobs: expire grants whose time is up (every second), warn holders before their access
ends and retry failed revokes (every sweep), probe targets with failed revokes (every few
seconds), and take over the work of crashed workers (`reconcile`, every few seconds). Each claims
the rows it works on, so several processes share the work and nothing is done twice.

`catch_up` is not a job: a process calls it once at start-up, before the ticks matter."""

from __future__ import annotations

from collections.abc import Callable, Sized
from typing import Protocol

from app.grants.service import Grants
from app.jobs import Job
from app.lifecycle.reads import Reads
from app.store.models import RequestState

EXPIRY_HOLD = 1.0  # seconds the expiry job goes on claiming a wave as target lanes free up


class Core(Protocol):
    """The parts of the request core (app/access.py `AccessService`) the grants' jobs call."""

    @property
    def grants(self) -> Grants: ...

    @property
    def reads(self) -> Reads: ...


class Needs(Protocol):
    """What the grants' jobs are given (app/scheduler `JobDeps`)."""

    @property
    def core(self) -> Core: ...

    @property
    def tell(self) -> Callable[[Sized], None]:
        """Ask the outbox to deliver what was recorded (holders, approvers, security told)."""
        ...

    @property
    def background(self) -> bool:
        """In a running process, work on targets goes to each target's lane and is not waited
        for (each is told as it is recorded); tests run it through and look at the result."""
        ...


def _tell_one(given: Needs) -> Callable[[int], None]:
    return lambda request_id: given.tell([request_id])


def expire(given: Needs) -> list[int]:
    """Revoke grants whose time is up; in a process, returns those taken (each is told once
    recorded); in a test, those recorded."""
    if given.background:
        # Claiming goes on as lanes free up, for up to a second (the tick): a wave is not
        # held to one lane's worth of grants a tick.
        return given.core.grants.expire_due(wait=False, on_done=_tell_one(given), hold=EXPIRY_HOLD)
    ids = given.core.grants.expire_due()
    given.tell(ids)
    return ids


def warn(given: Needs) -> list[int]:
    """Tell holders their access ends soon, with Extend and Revoke-now buttons."""
    ids = given.core.grants.warn_expiring()
    given.tell(ids)
    return ids


def retry_revokes(given: Needs) -> list[int]:
    """Try failed revokes again when their back-off is over, each in its target's lane;
    returns those that ended (in a process, those tried). Every try is told, so a revoke
    that keeps failing keeps alerting."""
    grants = given.core.grants
    if given.background:
        return grants.retry_revokes_due(wait=False, on_done=_tell_one(given))
    ids = grants.retry_revokes_due()
    given.tell(ids)
    return [i for i in ids if given.core.reads.get(i).state == RequestState.ENDED]


def probe(given: Needs) -> dict[str, bool]:
    """Ask each target with failed revokes whether it answers; one that is back has its
    failed revokes tried at once, not when their back-off ends."""
    if given.background:
        return given.core.grants.probe_failing_targets(wait=False, on_done=_tell_one(given))
    tried: list[int] = []
    answers = given.core.grants.probe_failing_targets(on_done=tried.append)
    given.tell(tried)
    return answers


def reconcile(given: Needs) -> None:
    """Take over and finish the work of crashed workers (claims whose lease lapsed)."""
    if given.background:
        report = given.core.grants.reconcile(wait=False, on_done=_tell_one(given))
    else:
        report = given.core.grants.reconcile()
    given.tell(report.granted + report.abandoned + report.revoked)


def catch_up(given: Needs) -> None:
    """At start-up: finish what a crash left, then revoke whatever expired while down (in a
    process, claimed and handed to each target's lane: a hung target holds up only its own
    work)."""
    reconcile(given)
    expire(given)


JOBS = (
    Job("expire", "expiry", expire),
    Job("warn", "sweep", warn),
    Job("retry_revokes", "sweep", retry_revokes),
    Job("probe", "probe", probe),
    Job("reconcile", "takeover", reconcile),
)
