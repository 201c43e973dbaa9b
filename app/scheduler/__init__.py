"""Timers: gather every job the code declares and tick it with APScheduler; no job's work is
done here.

Each package declares its jobs next to its code (`JOBS` in its jobs.py, as app/jobs.py `Job`s):
the features' (grants, requests, identities, reviews, …) and the audit trail's checkpoints, the
Slack inbox's redelivery and the outbox's delivery. This module gathers them (`ALL_JOBS`), gives
each what it needs (`JobDeps`, built by `job_deps`), and registers one interval job per job
(never one stored job per grant), guarded so a failing tick never stops the others. What a
process does once at start-up is the grants' `catch_up` (`at_start_up`). The database is the
source of truth.

Several processes may run the jobs at once. Each job claims the rows it works on with
`SELECT … FOR UPDATE SKIP LOCKED` (PostgreSQL), so workers share a wave of expiries instead of
queueing on the same rows; a grant or revoke in progress carries a lease, and a worker that dies
mid-call has its work taken over by `reconcile` once the lease runs out. Every transition is also
a conditional update, so nothing is applied twice even where row locks do not exist (SQLite).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sized
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from apscheduler.schedulers.base import BaseScheduler

from app.access import AccessService
from app.audit import jobs as audit_jobs
from app.breakglass import jobs as breakglass_jobs
from app.digest import jobs as digest_jobs
from app.digest.service import DigestService
from app.grants import jobs as grant_jobs
from app.groups import jobs as groups_jobs
from app.groups.jobs import Alerts
from app.identities import jobs as identity_jobs
from app.identities.service import IdentityService
from app.jobs import Cadence, Job
from app.lockdown import jobs as lockdown_jobs
from app.lockdown.service import Lockdowns
from app.notify import jobs as outbox_jobs
from app.notify.outbox import Outbox
from app.oncall import jobs as oncall_jobs
from app.requests import jobs as request_jobs
from app.reviews import jobs as review_jobs
from app.reviews.service import ReviewService
from app.slack import jobs as inbox_jobs
from app.slack.jobs import Inbox
from app.standing import jobs as standing_jobs
from app.standing.service import StandingService
from app.store.db import is_database_error
from app.tickets import jobs as ticket_jobs
from app.tickets.service import TicketService

log = logging.getLogger(__name__)
OwnerGone = Callable[[str], str | None]


@dataclass(frozen=True)
class JobDeps:
    """What the jobs are given: this process's request core (`core`) and feature services;
    the outbox (None: nobody is told), which `tell` asks to deliver what a tick recorded (a
    failure is logged, never raised) and `kick` asks directly; the inbox to redeliver;
    (directory, key) for signed audit checkpoints; and `background`: in a running process,
    work on targets goes to each target's lane and is not waited for (each is told as it is
    recorded), while tests run it through and look at the result."""

    core: AccessService
    digests: DigestService
    standing: StandingService
    identities: IdentityService
    reviews: ReviewService
    tickets: TicketService
    lockdowns: Lockdowns
    owner_gone: OwnerGone
    oncall: Callable[[], Sized] | None
    outbox: Outbox | None
    alerts: Alerts | None
    inbox: Inbox | None
    checkpoint_to: tuple[Path, bytes] | None
    background: bool
    tell: Callable[[Sized], None]
    kick: Callable[[], None] | None


def job_deps(
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
) -> JobDeps:
    """What the jobs are given in a process or a test. `outbox`: where the notices the jobs'
    changes wrote wait; asked to deliver after each change (None: nobody is told, as in tests
    of the changes alone). `owner_gone`: why a service account's owner is no longer a current
    person (Slack), or None. `checkpoint_to`: (directory, key) for signed audit checkpoints.
    `inbox`: Slack requests to redeliver. `oncall`: reads the rotas' sources that are due and
    tells security of one that stopped answering or answers again (app/oncall/flows.py
    `read_sources`). `digests`, `standing`, `identities`, `reviews`, `tickets`: the
    process's feature services (None: each built on `service`)."""
    return JobDeps(
        core=service,
        digests=digests or DigestService(service),
        standing=standing or StandingService(service),
        identities=identities or IdentityService(service),
        reviews=reviews or ReviewService(service),
        tickets=tickets or TicketService(service),
        lockdowns=Lockdowns(service),
        owner_gone=owner_gone or (lambda _member: None),
        oncall=oncall,
        outbox=outbox,
        alerts=outbox,
        inbox=inbox,
        checkpoint_to=checkpoint_to,
        background=background,
        tell=partial(_tell, service, outbox),
        kick=outbox.kick if outbox is not None else None,
    )


def _tell(service: AccessService, outbox: Outbox | None, changed: Sized) -> None:
    """Deliver the notices of what changed (written with each change); a failed delivery is
    logged and never stops the job (the change is already committed). A database outage is
    logged once."""
    if not changed or outbox is None:
        return
    try:
        outbox.kick()
    except Exception as exc:
        if is_database_error(exc):
            service.db.outage.failed("notify_failed", exc)
        else:
            log.exception("event=notify_failed")


# Every job, as each package declares it next to its code. A job runs with JobDeps, so mypy
# checks here that JobDeps gives each what it needs.
ALL_JOBS: tuple[Job[JobDeps], ...] = (
    *grant_jobs.JOBS,
    *request_jobs.JOBS,
    *identity_jobs.JOBS,
    *review_jobs.JOBS,
    *breakglass_jobs.JOBS,
    *lockdown_jobs.JOBS,
    *ticket_jobs.JOBS,
    *oncall_jobs.JOBS,
    *groups_jobs.JOBS,
    *digest_jobs.JOBS,
    *standing_jobs.JOBS,
    *audit_jobs.JOBS,
    *inbox_jobs.JOBS,
    *outbox_jobs.JOBS,
)


def jobs(deps: JobDeps) -> dict[str, tuple[Cadence, Callable[[], object]]]:
    """Every job a process runs, by name, with its cadence, each given `deps`."""
    found: dict[str, tuple[Cadence, Callable[[], object]]] = {}
    for job in ALL_JOBS:
        if job.name in found:
            raise ValueError(f"two jobs are called {job.name}")
        found[job.name] = (job.cadence, partial(job.run, deps))
    return found


def at_start_up(deps: JobDeps) -> Callable[[], None]:
    """What a process does once, before the ticks matter: the grants' `catch_up` (finish what
    a crash left, then revoke whatever expired while down), guarded like a tick."""
    return guarded(deps, "catch_up", partial(grant_jobs.catch_up, deps))


def schedule(
    scheduler: BaseScheduler,
    deps: JobDeps,
    every_seconds: float = 15.0,
    *,
    expiry_seconds: float = 1.0,
    checkpoint_seconds: float = 300.0,
    takeover_seconds: float = 2.0,
    probe_seconds: float = 5.0,
) -> dict[str, float]:
    """One interval job per declared job (`jobs`); returns {job name: seconds} and logs it
    once, so an operator (and a test) can see what this process will run. Expiry runs every
    second: its query reads only the rows that are due (an index range scan), so a quiet tick
    costs one cheap query. Checkpoints are written only where a directory and key are
    configured."""
    seconds_of: dict[Cadence, float] = {
        "expiry": expiry_seconds,
        "takeover": takeover_seconds,
        "probe": probe_seconds,
        "sweep": every_seconds,
        "checkpoint": checkpoint_seconds,
    }
    registered: dict[str, float] = {}
    for name, (cadence, job) in sorted(jobs(deps).items()):
        if cadence == "checkpoint" and deps.checkpoint_to is None:
            continue
        # max_instances=1 and coalesce: a slow job is never run twice at once or queued
        # up; misfire_grace_time=None: a late tick still runs (APScheduler would skip it).
        scheduler.add_job(
            guarded(deps, name, job),
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


def guarded(deps: JobDeps, name: str, job: Callable[[], object]) -> Callable[[], None]:
    """A job that never raises into the scheduler: a database outage is logged once when
    it starts and once when it ends (not a traceback a tick), anything else with its
    traceback."""
    outage = deps.core.db.outage

    def run() -> None:
        began = outage.call_began()
        try:
            job()
        except Exception as exc:
            if is_database_error(exc):
                outage.failed(name, exc)
            else:
                log.exception("event=sweep_failed job=%s", name)
            return
        outage.answered(began)

    run.__name__ = run.__qualname__ = name
    return run
