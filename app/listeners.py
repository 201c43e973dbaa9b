"""Every feature's Slack listeners, gathered, and what they are given: the Slack shell's Bolt app
(app/slack/app.py) knows no feature, so the app a process runs is built here.

A feature's `listeners.py` holds `register(app, deps)`, with what its listeners need written as
a `Needs` Protocol (as a jobs module's, app/jobs.py); `ListenerDeps` must satisfy every one,
which mypy checks where LISTENERS gathers them."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

from slack_bolt import App
from slack_sdk import WebClient

from app.access import AccessService
from app.breakglass import listeners as breakglass
from app.directory import SlackDirectory, Workspace
from app.grants import listeners as grants
from app.identities import listeners as identities
from app.identities.service import IdentityService
from app.kept_profiles import KeptProfiles
from app.lockdown import listeners as lockdown
from app.notify.notifier import Notifier
from app.requests import listeners as requests
from app.reviews import listeners as reviews
from app.reviews.service import ReviewService
from app.slack.app import build_app
from app.slack.deps import Shell
from app.standing import listeners as standing
from app.standing.service import StandingService
from app.stepup.listeners import SignInOffers
from app.stepup.service import StepUpService


@dataclass(frozen=True)
class ListenerDeps:
    """What every feature's listeners are given: the shell (pools, progress, `/jit`), the
    request core, the feature services and the notifier."""

    shell: Shell
    service: AccessService
    standing: StandingService
    identities: IdentityService
    reviews: ReviewService
    notifier: Notifier
    # Sign-in links offered on Approve for paths with step_up (app/stepup); None: no path has.
    stepup: SignInOffers | None = None


LISTENERS: tuple[Callable[[App, ListenerDeps], None], ...] = (
    requests.register,  # /jit (no text), request, status, targets, cancel, help; the form;
    #                     Approve, Deny and Cancel; the App Home
    grants.register,  # /jit extend and revoke; the App Home's Extend and Revoke
    breakglass.register,  # /breakglass; Confirm on a held break-glass use
    lockdown.register,  # /jit lockdown (and lift); the lockdown dialog's Lock down
    standing.register,  # /jit standing
    identities.register,  # Still needed / Retire on an attestation card
    reviews.register,  # Justified / Not justified, and the note
)


def slack_app(
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
    """The Bolt app with every feature's listeners (app/slack/app.py `build_app`).

    `workspace`: whose people may use WardKey (SLACK_TEAM_IDS, SLACK_ENTERPRISE_ID); None
    means the workspace the bot token belongs to, asked of Slack now.

    `notifier`: the process's one Notifier, whose Slack directory (and workspace) the app
    uses too; None builds both here (tests, the demo).

    `redelivery`: the app that does again the work of requests recorded in the inbox whose
    process died (app/slack/intake.py): it checks no signature, asks Slack nothing at start
    and opens no dialogs.

    `standing`, `identities`: the process's standing-privilege and service-account services
    (None: each one on `service`).

    `reviews`: the process's break-glass review service (None: one on `service`)."""
    if notifier is None:
        kept = KeptProfiles(service.db, service.clock)
        notifier = Notifier(client, service, SlackDirectory(client, workspace, kept=kept))
    shell = Shell(
        directory=notifier.directory,
        work=work or ThreadPoolExecutor(max_workers=4, thread_name_prefix="after-ack"),
        dialogs=dialogs or ThreadPoolExecutor(max_workers=2, thread_name_prefix="dialogs"),
        live=not redelivery,
    )
    deps = ListenerDeps(
        shell=shell,
        service=service,
        standing=standing or StandingService(service),
        identities=identities or IdentityService(service),
        reviews=reviews or ReviewService(service),
        notifier=notifier,
        stepup=SignInOffers(stepup) if stepup is not None else None,
    )
    return build_app(client, signing_secret, shell, deps, LISTENERS)
