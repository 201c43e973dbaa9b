"""Assemble a running WardKey from the environment: policy, database, adapters, service, Slack."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path

from slack_bolt import App
from slack_sdk import WebClient

from app.access import AccessService
from app.adapters.registry import AdapterConfigError, build_adapters
from app.config import Settings
from app.digest.service import DigestService
from app.directory import SlackDirectory, Workspace
from app.identities.flows import owner_gone
from app.identities.service import IdentityService
from app.kept_profiles import KeptProfiles
from app.lifecycle.deps import CoreDeps
from app.listeners import slack_app
from app.notify.notifier import Notifier
from app.oncall.flows import read_sources
from app.policy import Policy, PolicyError
from app.policy_reload import PolicyReloader
from app.policy_targets import load_policy, policy_warnings
from app.reviews.service import ReviewService
from app.scheduler import JobDeps, job_deps
from app.slack.app import web_client
from app.slack.intake import Intake, Redelivery
from app.standing.service import StandingService
from app.startup import MISSING, StartupError
from app.stepup.service import StepUpService
from app.store.db import configured_database
from app.tickets.service import TicketService
from app.wording import listed, plural

log = logging.getLogger(__name__)


def require(settings: Settings, *names: str) -> None:
    for name in names:
        if not getattr(settings, name):
            raise StartupError(MISSING[name])


@dataclass
class Runtime:
    """One process's WardKey: its one Notifier (and Slack directory) serves the Bolt app, the
    redelivery app and the sweeps, and so do its feature services, each built once here on the
    request core (`service`): the digest's, standing privilege's, service accounts', break-glass
    reviews' and tickets' (the sweeps only)."""

    settings: Settings
    service: AccessService
    client: WebClient
    notifier: Notifier
    digests: DigestService
    standing: StandingService
    identities: IdentityService
    reviews: ReviewService
    tickets: TicketService
    _stepup: StepUpService | None = field(default=None, init=False, repr=False)

    def job_deps(self) -> JobDeps:
        """What this process's sweeps (the declared jobs) are given."""
        n, s = self.notifier, self.settings
        signing = (
            (Path(s.wardkey_checkpoint_dir), s.wardkey_checkpoint_key.encode())
            if s.wardkey_checkpoint_dir and s.wardkey_checkpoint_key
            else None
        )
        return job_deps(
            self.service,
            n.outbox,
            owner_gone=partial(owner_gone, n.directory),
            checkpoint_to=signing,
            inbox=self.redelivery(),
            background=True,
            oncall=partial(read_sources, self.service, n),
            digests=self.digests,
            standing=self.standing,
            reviews=self.reviews,
            identities=self.identities,
            tickets=self.tickets,
        )

    def stepup(self) -> StepUpService | None:
        """Step-up sign-ins, when the policy has an identity provider (load_runtime checked
        WARDKEY_PUBLIC_URL and the client secret); one per process."""
        if self.service.policy.identity_provider is None:
            return None
        if self._stepup is None:
            self._stepup = StepUpService(self.service, self.settings.wardkey_public_url or "")
        return self._stepup

    def redelivery(self) -> Redelivery:
        """Does the work of Slack requests whose process died after acknowledging them."""
        return Redelivery(
            Intake(self.service.db, self.service.clock),
            lambda: slack_app(
                self.service,
                self.client,
                "",
                notifier=self.notifier,
                redelivery=True,
                stepup=self.stepup(),
                standing=self.standing,
                reviews=self.reviews,
                identities=self.identities,
            ),
        )

    def workspace(self) -> Workspace | None:
        """Whose people may use WardKey, when configured; None: the bot token's workspace."""
        return Workspace.configured(self.settings.slack_team_ids, self.settings.slack_enterprise_id)

    def watch_policy(self) -> PolicyReloader:
        """Reload WARDKEY_POLICY on SIGHUP and when the file changes, checked first; a bad
        file is refused, logged and told to the security channel (app/policy_reload.py)."""
        return PolicyReloader(
            self.settings.wardkey_policy,
            self.service,
            self.notifier.outbox,
            every=self.settings.wardkey_policy_check_seconds,
        ).start()

    def bolt(self, socket_mode: bool = False) -> App:
        if not socket_mode:
            require(self.settings, "slack_signing_secret")
        secret = "" if socket_mode else self.settings.slack_signing_secret or ""
        return slack_app(
            self.service,
            self.client,
            secret,
            notifier=self.notifier,
            stepup=self.stepup(),
            standing=self.standing,
            reviews=self.reviews,
            identities=self.identities,
        )


def load_runtime(settings: Settings | None = None) -> Runtime:
    settings = settings or Settings()
    require(settings, "slack_bot_token")
    if bool(settings.wardkey_checkpoint_dir) != bool(settings.wardkey_checkpoint_key):
        raise StartupError(
            "WARDKEY_CHECKPOINT_DIR and WARDKEY_CHECKPOINT_KEY go together: set both to write "
            "signed audit checkpoints, or neither"
        )
    if not os.path.exists(settings.wardkey_policy):
        raise StartupError(
            f"WARDKEY_POLICY: no policy file at {settings.wardkey_policy}; "
            "start from manifests/policy.example.yaml"
        )
    try:
        policy = load_policy(settings.wardkey_policy)
    except PolicyError as exc:
        raise StartupError(
            f"the policy has {plural(len(exc.issues), 'problem')}, the first: {exc.issues[0]}; "
            f"run `wardkey policy check {settings.wardkey_policy}`"
        ) from None
    check_step_up(settings, policy)
    try:
        adapters = build_adapters(policy)  # logs each target's insecure connection itself
    except AdapterConfigError as exc:
        raise StartupError(str(exc)) from None
    for issue in policy_warnings(policy):
        if issue.loc[:1] != ("targets",):
            log.warning("event=policy_warning file=%s %s", settings.wardkey_policy, issue)
    db = configured_database(settings)
    try:
        db.ping()
    except Exception as exc:
        raise StartupError(f"DATABASE_URL: {db.unreachable(exc)}") from None
    service = AccessService(
        CoreDeps(
            db,
            policy,
            adapters,
            lease=timedelta(seconds=settings.wardkey_lease_seconds),
            concurrency=settings.wardkey_target_concurrency,
            heartbeat=True,
        )
    )
    client = web_client(settings.slack_bot_token or "", settings.slack_api_url)
    workspace = Workspace.configured(settings.slack_team_ids, settings.slack_enterprise_id)
    directory = SlackDirectory(client, workspace, kept=KeptProfiles(db, service.clock))
    digests = DigestService(service)
    identities = IdentityService(service)
    reviews = ReviewService(service)
    notifier = Notifier(
        client, service, directory, digests=digests, identities=identities, reviews=reviews
    )
    standing = StandingService(service)
    return Runtime(
        settings,
        service,
        client,
        notifier,
        digests,
        standing,
        identities,
        reviews=reviews,
        tickets=TicketService(service),
    )


def check_step_up(settings: Settings, policy: Policy) -> None:
    """A policy with step-up needs the address sign-in links point at, and the client secret."""
    provider = policy.identity_provider
    needing = [name for name, path in policy.paths.items() if path.step_up]
    if provider is None:
        return
    url = (settings.wardkey_public_url or "").strip()
    if not url:
        raise StartupError(
            "WARDKEY_PUBLIC_URL is not set, and "
            + (f"the {listed(needing)} path" if needing else "the policy's identity_provider")
            + " needs it for step-up sign-in links: set it to the https:// address people "
            "reach WardKey at (the identity provider's redirect URI is <it>/step-up/callback)"
        )
    if not url.startswith("https://") and not provider.insecure:
        raise StartupError(
            f"WARDKEY_PUBLIC_URL is {url}: step-up sign-in links must be https:// (the "
            "identity provider sends the sign-in's code to it)"
        )
    if not os.environ.get(provider.client_secret_env):
        raise StartupError(
            f"{provider.client_secret_env} is not set: the identity_provider's "
            "client_secret_env names it; put WardKey's client secret from the identity "
            "provider there"
        )
