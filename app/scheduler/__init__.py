"""Timers: every feature's jobs (declared next to its code, app/<feature>/jobs.py, and gathered
here) and the sweeps not yet moved to a feature (the methods of `Sweeps`). The database is the
source of truth; APScheduler only ticks, with one interval job per job or sweep (never one stored
job per grant).

Several processes may run the sweeps at once. Each sweep claims the rows it works on with
`SELECT … FOR UPDATE SKIP LOCKED` (PostgreSQL), so workers share a wave of expiries instead of
queueing on the same rows; a grant or revoke in progress carries a lease, and a worker that dies
mid-call has its work taken over by `reconcile` once the lease runs out. Every transition is also
a conditional update, so nothing is applied twice even where row locks do not exist (SQLite).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sized
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol, TypeVar

from apscheduler.schedulers.base import BaseScheduler

from app import audit
from app.breakglass import jobs as breakglass_jobs
from app.digest import jobs as digest_jobs
from app.digest.service import DigestService
from app.groups import jobs as groups_jobs
from app.groups.jobs import Alerts
from app.identities import jobs as identity_jobs
from app.identities.service import IdentityService
from app.jobs import Cadence, Job
from app.lockdown import jobs as lockdown_jobs
from app.lockdown.service import Lockdowns
from app.oncall import jobs as oncall_jobs
from app.reviews import jobs as review_jobs
from app.reviews.service import ReviewService
from app.service import AccessService
from app.standing import jobs as standing_jobs
from app.standing.service import StandingService
from app.store.db import is_database_error
from app.store.models import RequestState
from app.tickets import jobs as ticket_jobs
from app.tickets.service import TicketService

log = logging.getLogger(__name__)
EXPIRY_HOLD = 1.0  # seconds the expiry sweep goes on claiming a wave as target lanes free up
# How often a sweep ticks (app/jobs.py `Cadence`). Every public method of Sweeps but catch_up
# carries one (a test checks it), and `schedule` registers exactly the marked ones and every
# feature's declared jobs (FEATURE_JOBS), so neither can be forgotten.
_CADENCE = "_wardkey_cadence"
Method = TypeVar("Method", bound=Callable[..., object])


def sweep(cadence: Cadence) -> Callable[[Method], Method]:
    def mark(job: Method) -> Method:
        setattr(job, _CADENCE, cadence)
        return job

    return mark


def cadence_of(job: object) -> Cadence | None:
    found: Cadence | None = getattr(job, _CADENCE, None)
    return found


OwnerGone = Callable[[str], str | None]


@dataclass(frozen=True)
class JobDeps:
    """What the features' jobs are given: this process's feature services, the request core
    (`core`), and `tell`, which asks the outbox to deliver what a tick recorded (a failure is
    logged, never raised); `kick` asks it directly (None without an outbox)."""

    digests: DigestService
    standing: StandingService
    tell: Callable[[Sized], None]
    identities: IdentityService
    owner_gone: OwnerGone
    reviews: ReviewService
    tickets: TicketService
    alerts: Alerts | None
    core: AccessService
    lockdowns: Lockdowns
    kick: Callable[[], None] | None
    oncall: Callable[[], Sized] | None


# Every feature's jobs (each feature's jobs.py, JOBS). A feature's job runs with JobDeps, so
# mypy checks here that JobDeps gives each what it needs.
FEATURE_JOBS: tuple[Job[JobDeps], ...] = (
    *digest_jobs.JOBS,
    *standing_jobs.JOBS,
    *identity_jobs.JOBS,
    *review_jobs.JOBS,
    *ticket_jobs.JOBS,
    *lockdown_jobs.JOBS,
    *breakglass_jobs.JOBS,
    *oncall_jobs.JOBS,
    *groups_jobs.JOBS,
)


class Inbox(Protocol):
    """Slack requests acknowledged by a process that died before doing their work
    (app/slack/intake.py `Redelivery`)."""

    def redeliver_due(self) -> list[str]: ...


class Outbox(Protocol):
    """Slack messages recorded with the changes that caused them (app/notify/outbox.py):
    every notice a sweep causes is written with its change, so a sweep only asks for delivery
    (`kick`); `tick` is the delivery sweep itself."""

    def kick(self) -> None: ...

    def tick(self) -> int: ...


class Sweeps:
    def __init__(
        self,
        service: AccessService,
        outbox: Outbox | None = None,
        *,
        owner_gone: OwnerGone | None = None,
        checkpoint_to: tuple[Path, bytes] | None = None,
        inbox: Inbox | None = None,
        background: bool = False,
        oncall: Callable[[], Sized] | None = None,
        digests: DigestService | None = None,
        standing: StandingService | None = None,
        identities: IdentityService | None = None,
        reviews: ReviewService | None = None,
        tickets: TicketService | None = None,
    ) -> None:
        """`outbox`: where the notices the sweeps' changes wrote wait; asked to deliver after
        each change (None: nobody is told, as in tests of the changes alone). `owner_gone`:
        why a service account's owner is no longer a current person (Slack), or None.
        `checkpoint_to`: (directory, key) for signed audit checkpoints. `inbox`: Slack
        requests to redeliver. `oncall`: reads the rotas' sources that are due and tells
        security of one that stopped answering or answers again (app/oncall/flows.py
        `read_sources`). `digests`, `standing`, `identities`: the process's digest,
        standing-privilege and service-account services, for the features' jobs (None: each
        built on `service`).
        `reviews`: the process's break-glass review service, for its job (None: one on
        `service`); `tickets`: its tickets' service, likewise."""
        self.service = service
        self.deps = JobDeps(
            digests or DigestService(service),
            standing or StandingService(service),
            self._tell,
            identities or IdentityService(service),
            owner_gone=owner_gone or (lambda _member: None),
            reviews=reviews or ReviewService(service),
            tickets=tickets or TicketService(service),
            alerts=outbox if isinstance(outbox, Alerts) else None,
            core=service,
            lockdowns=Lockdowns(service),
            kick=outbox.kick if outbox is not None else None,
            oncall=oncall,
        )
        self.outbox = outbox
        self.checkpoint_to = checkpoint_to
        self.inbox = inbox
        # In a running process, work on targets goes to each target's lane and is not waited
        # for (each is told as it is recorded); tests run it through and look at the result.
        self.background = background

    def _tell(self, changed: Sized) -> None:
        """Deliver the notices of what changed (written with each change); a failed delivery
        is logged and never stops the sweep (the change is already committed). A database
        outage is logged once."""
        if not changed or self.outbox is None:
            return
        try:
            self.outbox.kick()
        except Exception as exc:
            if is_database_error(exc):
                self.service.db.outage.failed("notify_failed", exc)
            else:
                log.exception("event=notify_failed")

    def _tell_one(self, request_id: int) -> None:
        self._tell([request_id])

    @sweep("expiry")
    def expire(self) -> list[int]:
        """Revoke grants whose time is up; in a process, returns those taken (each is told
        once recorded); in a test, those recorded."""
        if self.background:
            # Claiming goes on as lanes free up, for up to a second (the tick): a wave is not
            # held to one lane's worth of grants a tick.
            return self.service.expire_due(wait=False, on_done=self._tell_one, hold=EXPIRY_HOLD)
        ids = self.service.expire_due()
        self._tell(ids)
        return ids

    @sweep("expiry")
    def intake(self) -> list[str]:
        """Do the work of Slack requests that were acknowledged (so recorded) by a process
        that died before finishing it; every second, so a crash delays a click by seconds."""
        return self.inbox.redeliver_due() if self.inbox is not None else []

    @sweep("expiry")
    def deliver(self) -> int:
        """Send the Slack messages waiting in the outbox (those whose process died, or that
        wait out a Slack error); every second, so any serve or worker delivers them."""
        return self.outbox.tick() if self.outbox is not None else 0

    @sweep("sweep")
    def warn(self) -> list[int]:
        """Tell holders their access ends soon, with Extend and Revoke-now buttons."""
        ids = self.service.warn_expiring()
        self._tell(ids)
        return ids

    @sweep("sweep")
    def escalate(self) -> list[tuple[int, int]]:
        """Remind approvers at half the approval SLA; escalate at the SLA."""
        reached = self.service.escalate_overdue()
        self._tell(reached)
        return reached

    @sweep("sweep")
    def time_out(self) -> list[int]:
        ids = self.service.time_out_overdue()
        self._tell(ids)
        return ids

    @sweep("sweep")
    def contracts(self) -> list[int]:
        """Vendors whose contract has ended: their waiting requests are cancelled and their
        access ended, and each requester is told why."""
        ids = self.service.end_lapsed_contracts()
        self._tell(ids)
        return ids

    @sweep("sweep")
    def retry_revokes(self) -> list[int]:
        """Try failed revokes again when their back-off is over, each in its target's lane;
        returns those that ended (in a process, those tried). Every try is told, so a revoke
        that keeps failing keeps alerting."""
        if self.background:
            return self.service.retry_revokes_due(wait=False, on_done=self._tell_one)
        ids = self.service.retry_revokes_due()
        self._tell(ids)
        return [i for i in ids if self.service.get(i).state == RequestState.ENDED]

    @sweep("probe")
    def probe(self) -> dict[str, bool]:
        """Ask each target with failed revokes whether it answers; one that is back has its
        failed revokes tried at once, not when their back-off ends."""
        if self.background:
            return self.service.probe_failing_targets(wait=False, on_done=self._tell_one)
        tried: list[int] = []
        answers = self.service.probe_failing_targets(on_done=tried.append)
        self._tell(tried)
        return answers

    @sweep("takeover")
    def reconcile(self) -> None:
        """Take over and finish the work of crashed workers (claims whose lease lapsed)."""
        if self.background:
            report = self.service.reconcile(wait=False, on_done=self._tell_one)
        else:
            report = self.service.reconcile()
        self._tell(report.granted + report.abandoned + report.revoked)

    @sweep("checkpoint")
    def checkpoint(self) -> Path | None:
        """Write a signed checkpoint of the audit chain's head off the box."""
        if self.checkpoint_to is None:
            return None
        directory, key = self.checkpoint_to
        return audit.write_signed_checkpoint(
            self.service.db, directory, key, clock=self.service.clock
        )

    def catch_up(self) -> None:
        """At start-up: finish what a crash left, then revoke whatever expired while down
        (in a process, claimed and handed to each target's lane: a hung target holds up
        only its own work)."""
        self.reconcile()
        self.expire()


def jobs(sweeps: Sweeps) -> dict[str, tuple[Cadence, Callable[[], object]]]:
    """Every job a process runs, by name, with its cadence: each marked method of `sweeps`, and
    each feature's declared job given `sweeps.deps`."""
    found: dict[str, tuple[Cadence, Callable[[], object]]] = {}
    for name, method in inspect.getmembers(sweeps, inspect.ismethod):
        cadence = cadence_of(method)
        if cadence is not None:
            found[name] = (cadence, method)
    for job in FEATURE_JOBS:
        if job.name in found:
            raise ValueError(f"two jobs are called {job.name}")
        found[job.name] = (job.cadence, partial(job.run, sweeps.deps))
    return found


def schedule(
    scheduler: BaseScheduler,
    sweeps: Sweeps,
    every_seconds: float = 15.0,
    *,
    expiry_seconds: float = 1.0,
    checkpoint_seconds: float = 300.0,
    takeover_seconds: float = 2.0,
    probe_seconds: float = 5.0,
) -> dict[str, float]:
    """One interval job per feature job and marked sweep (`jobs`); returns {job name: seconds}
    and logs it once, so an operator (and a test) can see what this process will run. Expiry
    runs every second: its query reads only the rows that are due (an index range scan), so a
    quiet tick costs one cheap query. Checkpoints are written only where a directory and key
    are configured."""
    seconds_of: dict[Cadence, float] = {
        "expiry": expiry_seconds,
        "takeover": takeover_seconds,
        "probe": probe_seconds,
        "sweep": every_seconds,
        "checkpoint": checkpoint_seconds,
    }
    registered: dict[str, float] = {}
    for name, (cadence, job) in sorted(jobs(sweeps).items()):
        if cadence == "checkpoint" and sweeps.checkpoint_to is None:
            continue
        # max_instances=1 and coalesce: a slow sweep is never run twice at once or queued
        # up; misfire_grace_time=None: a late tick still runs (APScheduler would skip it).
        scheduler.add_job(
            guarded(sweeps, name, job),
            "interval",
            seconds=seconds_of[cadence],
            id=name,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )
        registered[name] = seconds_of[cadence]
    log.info(
        "event=sweeps_scheduled jobs=%s checkpoints=%s",
        ",".join(f"{name}:{seconds:g}s" for name, seconds in sorted(registered.items())),
        "on" if "checkpoint" in registered else "off",
    )
    return registered


def guarded(sweeps: Sweeps, name: str, job: Callable[[], object]) -> Callable[[], None]:
    """A sweep that never raises into the scheduler: a database outage is logged once when
    it starts and once when it ends (not a traceback a tick), anything else with its
    traceback."""
    outage = sweeps.service.db.outage

    def run() -> None:
        try:
            job()
        except Exception as exc:
            if is_database_error(exc):
                outage.failed(name, exc)
            else:
                log.exception("event=sweep_failed job=%s", name)
            return
        outage.answered()

    run.__name__ = run.__qualname__ = name
    return run
