"""The Bolt app factory: one App per process, listeners registered once."""

from __future__ import annotations

from concurrent.futures import Executor, ThreadPoolExecutor

from slack_bolt import App
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from app.access import AccessService
from app.directory import SlackDirectory, Workspace
from app.identities import listeners as identity_listeners
from app.identities.service import IdentityService
from app.lockdown import listeners as lockdown_listeners
from app.notify.notifier import Notifier
from app.reviews import listeners as review_listeners
from app.reviews.service import ReviewService
from app.slack import errors
from app.slack.deps import SlackDeps
from app.slack.gate import PersonResolver, WorkspaceGate
from app.slack.listeners import actions, commands, events, views
from app.slack.listeners import breakglass as breakglass_listeners
from app.standing.service import StandingService
from app.stepup.service import StepUpService


def web_client(token: str, api_url: str) -> WebClient:
    """A Web API client that waits out HTTP 429 (Retry-After) instead of losing the message."""
    base_url = api_url if api_url.endswith("/") else api_url + "/"
    client = WebClient(token=token, base_url=base_url, timeout=10)
    client.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=5))
    return client


def build_app(
    service: AccessService,
    client: WebClient,
    signing_secret: str,
    work: Executor | None = None,
    dialogs: Executor | None = None,
    workspace: Workspace | None = None,
    *,
    notifier: Notifier | None = None,
    redelivery: bool = False,
    stepup: StepUpService | None = None,
    standing: StandingService | None = None,
    identities: IdentityService | None = None,
    reviews: ReviewService | None = None,
) -> App:
    """`workspace`: whose people may use WardKey (SLACK_TEAM_IDS, SLACK_ENTERPRISE_ID); None
    means the workspace the bot token belongs to, asked of Slack now.

    `notifier`: the process's one Notifier, whose Slack directory (and workspace) the app
    uses too; None builds both here (tests, the demo).

    `redelivery`: the app that does again the work of requests recorded in the inbox whose
    process died (app/slack/intake.py): it checks no signature (each was checked when it was
    recorded, and may be older than Slack's five minutes by now), asks Slack nothing at start
    and opens no dialogs.

    `standing`, `identities`: the process's standing-privilege and service-account services
    (None: each one on `service`).

    `reviews`: the process's break-glass review service (None: one on `service`)."""
    # App(client=…) checks the token with auth.test now, so a bad token fails at start-up.
    # Listeners only parse, ack and hand the rest to `work` (SlackDeps.after_ack), so they run
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
    if notifier is None:
        notifier = Notifier(client, service, SlackDirectory(client, workspace))
    directory = notifier.directory
    if not redelivery:
        directory.workspace()  # learnt now, at start-up, never in a request's ack path
    deps = SlackDeps(
        service=service,
        standing=standing or StandingService(service),
        identities=identities or IdentityService(service),
        reviews=reviews or ReviewService(service),
        directory=directory,
        notifier=notifier,
        work=work or ThreadPoolExecutor(max_workers=4, thread_name_prefix="after-ack"),
        dialogs=dialogs or ThreadPoolExecutor(max_workers=2, thread_name_prefix="dialogs"),
        live=not redelivery,
        stepup=stepup,
    )
    # Before every listener: refuse anyone outside the trust's workspace(s), then say who is
    # asking (resolved once per request, when first needed) and how to answer them.
    app.use(WorkspaceGate(directory, deps.later))
    app.use(PersonResolver(directory))
    errors.register(app, deps.later)
    for listeners in (commands, actions, views, events):
        listeners.register(app, deps)
    identity_listeners.register(app, deps)  # Still needed / Retire on an attestation card
    review_listeners.register(app, deps)  # Justified / Not justified, and the note
    lockdown_listeners.register(app, deps)  # the lockdown dialog's Lock down
    breakglass_listeners.register(app, deps)  # Confirm on a held break-glass use
    return app
