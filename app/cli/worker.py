"""`wardkey worker`: the sweeps (every declared job, app/scheduler), and the work `serve` hands
over, without a web server. The sweeps run the same way in the background of `serve` and
`socket` (`background_sweeps`)."""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from typing import TYPE_CHECKING

from app.cli.common import STOP_SECONDS, Commands, end_within, starting, stop_on_sigterm

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler

    from app.runtime import Runtime
    from app.web import Readiness


def add_commands(commands: Commands) -> None:
    commands.add_parser(
        "worker", help="the sweeps and the work handed over by serve, without a web server"
    ).set_defaults(run=_worker)


@starting
def _worker(_args: argparse.Namespace) -> int:
    from app.cli.configured import ready

    runtime = ready("slack_bot_token")  # before the scheduler is loaded
    from apscheduler.schedulers.blocking import BlockingScheduler

    lower_priority(runtime.settings.wardkey_worker_nice)
    redelivery = runtime.redelivery()
    redelivery.follow()  # takes each request serve hands over, as it comes
    scheduler = BlockingScheduler(timezone="UTC")

    def stop_sweeps() -> None:
        while not scheduler.running:  # SIGTERM came while it was starting
            time.sleep(0.05)
        scheduler.shutdown(wait=False)

    stop_on_sigterm("worker", stop_sweeps)
    try:
        start_sweeps(runtime, scheduler)
    finally:
        redelivery.intake.close()
        runtime.notifier.outbox.close(wait_seconds=3)
        end_within(STOP_SECONDS)
    return 0


def lower_priority(by: int) -> None:
    """Acks first across processes, as `app.priority` does within one: on a shared host the
    worker's work (recorded before it was acknowledged) gives way to serve's acks."""
    if by:
        now = os.nice(by)
        logging.getLogger("app.cli.worker").info("event=worker_priority nice=%d", now)


def background_sweeps(runtime: Runtime, readiness: Readiness | None = None) -> BaseScheduler:
    from apscheduler.schedulers.background import BackgroundScheduler

    return start_sweeps(runtime, BackgroundScheduler(timezone="UTC"), readiness)


def start_sweeps(
    runtime: Runtime, scheduler: BaseScheduler, readiness: Readiness | None = None
) -> BaseScheduler:
    """Tick, and catch up (reconcile, then expire) on a thread of its own, beside the ticks
    and the server, so nothing waits for it; `readiness` says "catching up" until it is done.
    A blocking scheduler runs here.

    Not a one-off scheduler job: APScheduler 3 marks itself stopped before it takes its lock,
    so a SIGTERM while it was starting that job made its own clean-up of it fail
    (JobLookupError), and `wardkey worker` exited 1 instead of stopping cleanly."""
    from app.scheduler import at_start_up, schedule
    from app.web import CATCHING_UP

    deps = runtime.job_deps()
    settings = runtime.settings
    schedule(
        scheduler,
        deps,
        settings.wardkey_sweep_seconds,
        expiry_seconds=settings.wardkey_expiry_sweep_seconds,
        checkpoint_seconds=settings.wardkey_checkpoint_seconds,
        takeover_seconds=settings.wardkey_takeover_seconds,
        probe_seconds=settings.wardkey_probe_seconds,
    )
    if readiness is not None:
        readiness.waiting_for(CATCHING_UP)
    catch_up = at_start_up(deps)

    def catch_up_then_ready() -> None:
        try:
            catch_up()
        finally:  # failed or not, the sweeps that tick now do the same work
            if readiness is not None:
                readiness.done(CATCHING_UP)

    threading.Thread(target=catch_up_then_ready, name="catch-up", daemon=True).start()
    scheduler.start()
    return scheduler
