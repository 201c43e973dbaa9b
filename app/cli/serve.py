"""`wardkey serve` (the HTTP app for Slack) and `wardkey socket` (Socket Mode)."""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from app.cli.common import (
    STOP_SECONDS,
    Commands,
    end_within,
    keep_start_up_out_of_collections,
    starting,
    stop_on_sigterm,
)
from app.startup import StartupError

if TYPE_CHECKING:
    from slack_bolt import App

    from app.runtime import Runtime
    from app.stepup.pages import StepUpPages


# Each ack holds its HTTP thread while the inbox's writer records it, and the writer records
# every waiting request in one statement: more threads waiting make fuller statements and less
# CPU per ack. Under a burst (bench/ack_latency.py, 50 at once, 2 cores, docs/benchmarks.md) 16
# threads took 0.61-0.65 ms of CPU per ack in `record` mode where 8 took 0.89-1.06 ms, and less
# in every mode; 32 and 64 gained little more.
HTTP_THREADS = 16


def add_commands(commands: Commands) -> None:
    serve = commands.add_parser("serve", help="the HTTP app for Slack, with the scheduler")
    serve.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("PORT", "3000")),
        help="TCP port to listen on (default: $PORT, else 3000)",
    )
    serve.add_argument(
        "--host", default="0.0.0.0", help="address to listen on (default: every interface)"
    )
    serve.add_argument(
        "--threads",
        type=int,
        default=HTTP_THREADS,
        help=f"threads answering HTTP requests (default: {HTTP_THREADS})",
    )
    serve.add_argument(
        "--no-scheduler", action="store_true", help="run the sweeps elsewhere (wardkey worker)"
    )
    serve.set_defaults(run=_serve)
    socket = commands.add_parser("socket", help="the app over Socket Mode (no public URL)")
    socket.add_argument(
        "--no-scheduler", action="store_true", help="run the sweeps elsewhere (wardkey worker)"
    )
    socket.set_defaults(run=_socket)


class QueuedRequestsSummary(logging.Filter):
    """waitress warns once for every request that waits for a busy HTTP thread ("Task queue
    depth is N"): under load, a line per request, a flood that costs the acks a share of the
    interpreter and buries everything else. This lets one line through per `every_seconds`,
    saying how deep the queue was and how many warnings it stands for."""

    def __init__(
        self, every_seconds: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.every_seconds = every_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._last: float | None = None
        self._deepest = 0
        self._held = 0  # warnings since the last line let through

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        depth = args[0] if args and isinstance(args[0], int) else 0
        with self._lock:
            self._deepest = max(self._deepest, depth)
            self._held += 1
            now = self.clock()
            if self._last is not None and now - self._last < self.every_seconds:
                return False
            self._last = now
            deepest, held = self._deepest, self._held
            self._deepest = self._held = 0
        record.msg = (
            "event=http_requests_queued depth=%d deepest=%d warnings=%d what=requests waited "
            "for a busy HTTP thread; if this goes on, add threads (--threads) or instances"
        )
        record.args = (depth, deepest, held)
        return True


CONNECTION_LIMIT = 500  # well under the usual 1,024 open files per process
IDLE_CONNECTION_SECONDS = 15


@starting
def _serve(args: argparse.Namespace) -> int:
    from app.cli.configured import ready

    runtime = ready("slack_bot_token", "slack_signing_secret")  # before the server is loaded
    from waitress import serve

    from app.cli.worker import background_sweeps
    from app.web import METRICS_OFF, WardKeyWSGI

    settings = runtime.settings
    wsgi = WardKeyWSGI(
        _bolt(runtime),
        runtime.service.db,
        settings.slack_signing_secret or "",
        settings.wardkey_metrics_token,
        intake_work=settings.wardkey_intake_work,
        metrics_public=settings.wardkey_metrics_public,
        max_body_bytes=settings.wardkey_max_body_bytes,
        step_up=_step_up_pages(runtime),
    )
    if not settings.wardkey_metrics_token and not settings.wardkey_metrics_public:
        logging.getLogger("app.web").warning("event=metrics_off %s", METRICS_OFF)
    _say_intake_work(settings.wardkey_intake_work)
    # Catch-up runs beside the server: /healthz answers at once, /readyz says "catching up".
    scheduler = None if args.no_scheduler else background_sweeps(runtime, wsgi.readiness)
    stop_on_sigterm("serve")
    logging.getLogger("waitress.queue").addFilter(QueuedRequestsSummary())
    keep_start_up_out_of_collections()
    try:
        # waitress buffers a body before the app sees it: it must refuse big ones itself.
        serve(
            wsgi,
            host=args.host,
            port=args.port,
            threads=args.threads,
            ident="wardkey",
            max_request_body_size=settings.wardkey_max_body_bytes,
            # A client that sends half a request holds a connection, not a thread: allow many
            # (waitress's 100 let 110 slow clients shut out Slack and /healthz) and drop the
            # idle ones sooner. Behind a buffering proxy this never comes up (docs/security.md).
            connection_limit=CONNECTION_LIMIT,
            channel_timeout=IDLE_CONNECTION_SECONDS,
        )
    finally:
        wsgi.close()
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        runtime.notifier.outbox.close(wait_seconds=3)
        end_within(STOP_SECONDS)
    return 0


@starting
def _socket(args: argparse.Namespace) -> int:
    from app.cli.configured import ready

    runtime = ready("slack_bot_token", "slack_app_token")  # before Socket Mode is loaded
    from app.cli.worker import background_sweeps
    from app.slack.intake import Intake
    from app.slack.socket_intake import RecordingSocketModeHandler

    if runtime.stepup() is not None:
        raise StartupError(
            "the policy has an identity_provider for step-up approval, whose sign-in pages "
            "are served over HTTP: run `wardkey serve` behind WARDKEY_PUBLIC_URL instead"
        )
    app = _bolt(runtime, socket_mode=True)
    scheduler = None if args.no_scheduler else background_sweeps(runtime)
    work = runtime.settings.wardkey_intake_work
    inbox = Intake(runtime.service.db, runtime.service.clock, hand_off=work == "worker")
    _say_intake_work(work)
    stop_on_sigterm("socket")
    keep_start_up_out_of_collections()
    try:
        # Each envelope is recorded in the inbox before it is acknowledged, as over HTTP.
        RecordingSocketModeHandler(app, runtime.settings.slack_app_token or "", inbox).start()  # type: ignore[no-untyped-call]
    finally:
        inbox.close()
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        runtime.notifier.outbox.close(wait_seconds=3)
        end_within(STOP_SECONDS)
    return 0


def _bolt(runtime: Runtime, socket_mode: bool = False) -> App:
    """The Bolt app, which asks Slack who its token is (auth.test) first: if Slack does not
    answer, one line saying where WardKey asked and what to check; if it refuses, what it
    said."""
    from slack_bolt.error import BoltError

    sdk = logging.getLogger("slack_sdk.web.base_client")
    level = sdk.level
    sdk.setLevel(logging.CRITICAL)  # its line per failed try would bury the one below
    try:
        return runtime.bolt(socket_mode=socket_mode)
    except OSError as exc:  # urllib's URLError, a time-out, a refused connection
        url = runtime.client.base_url + "auth.test"
        reason = getattr(exc, "reason", None) or exc
        raise StartupError(
            f"Slack did not answer at {url} ({reason}); check SLACK_API_URL (unset, it is "
            "Slack's own https://slack.com/api/) and that this machine can reach it: a "
            "firewall, or a proxy to set in HTTPS_PROXY"
        ) from None
    except BoltError as exc:
        raise StartupError(f"Slack refused to start the app: {exc}") from None
    finally:
        sdk.setLevel(level)


def _step_up_pages(runtime: Runtime) -> StepUpPages | None:
    """The sign-in pages of step-up approval, when the policy has an identity provider."""
    from app.stepup.pages import StepUpPages

    stepup = runtime.stepup()
    if stepup is None:
        return None
    return StepUpPages(stepup, runtime.notifier.deliver_now)


def _say_intake_work(work: str) -> None:
    """Say once, at start, who does the work after the acks."""
    if work == "worker":
        logging.getLogger("app.slack.intake").info(
            "event=intake_work where=worker what=this process records and acknowledges; run "
            "`wardkey worker` to do the work (with the sweeps on, a request no worker takes "
            "within 10 s is done here)"
        )
