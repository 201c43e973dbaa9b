"""The Bolt app factory: one App per process, listeners registered once. The shell knows no
feature: it is given the listeners' registrars and what they need (app/listeners.py gathers
both)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from slack_bolt import Ack, App, BoltContext, Respond
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from app.slack import errors
from app.slack.deps import Shell
from app.slack.gate import PersonResolver, WorkspaceGate

Deps = TypeVar("Deps")


def web_client(token: str, api_url: str) -> WebClient:
    """A Web API client that waits out HTTP 429 (Retry-After) instead of losing the message."""
    base_url = api_url if api_url.endswith("/") else api_url + "/"
    client = WebClient(token=token, base_url=base_url, timeout=10)
    client.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=5))
    return client


def build_app(
    client: WebClient,
    signing_secret: str,
    shell: Shell,
    deps: Deps,
    listeners: Iterable[Callable[[App, Deps], None]],
) -> App:
    """The Bolt app, with the shell's middleware, error handler and `/jit`, then each of
    `listeners` registered with `deps` (which holds `shell`).

    A shell that is not `live` builds the app that does again the work of requests recorded in
    the inbox whose process died (app/slack/intake.py): it checks no signature (each was
    checked when it was recorded, and may be older than Slack's five minutes by now), asks
    Slack nothing at start and opens no dialogs."""
    redelivery = not shell.live
    # App(client=…) checks the token with auth.test now, so a bad token fails at start-up.
    # Listeners only parse, ack and hand the rest to `work` (Shell.after_ack), so they run
    # on the HTTP thread (process_before_response) and the ack never queues behind other
    # requests' Slack calls, as it would in Bolt's listener pool, which also runs that work.
    # The work pool is small on purpose: its jobs wait mostly on Slack and the database, and
    # every extra busy thread takes a share of the interpreter from the threads sending acks
    # (bench/ack_latency.py: 16 threads gave 2-3x the bare app's p99, 4 threads 1.2-1.5x).
    app = App(
        client=client,
        signing_secret=signing_secret or "redelivery-checks-no-signature",
        process_before_response=True,
        request_verification_enabled=not redelivery,
        token_verification_enabled=not redelivery,
    )
    directory = shell.directory
    if not redelivery:
        directory.workspace()  # learnt now, at start-up, never in a request's ack path
    # Before every listener: refuse anyone outside the trust's workspace(s), then say who is
    # asking (resolved once per request, when first needed) and how to answer them.
    app.use(WorkspaceGate(directory, shell.later))
    app.use(PersonResolver(directory))
    errors.register(app, shell.later)

    @app.command("/jit")
    def jit(
        ack: Ack, command: dict[str, Any], respond: Respond, client: WebClient, context: BoltContext
    ) -> None:
        shell.jit.dispatch(ack, command, respond, client, context)

    for register in listeners:
        register(app, deps)
    return app
