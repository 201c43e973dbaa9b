"""Service accounts, then tell people: when an attestation round's or an orphan look's notice is
delivered (app/telling.py), who hears of it and with which message; the owner's card redrawn
once they answer; and why an owner is no longer a current person in Slack, which the orphan
look asks (service.py `flag_orphans`)."""

from __future__ import annotations

import logging
from typing import Protocol

from slack_sdk.errors import SlackApiError

from app.access import AccessService
from app.directory import SlackDirectory
from app.identities import messages
from app.identities.service import AttestationStep, IdentityService, orphans_of_notices
from app.outbox_records import Notice
from app.telling import Teller, Telling

log = logging.getLogger(__name__)


class Needs(Protocol):
    """What telling of service accounts is given (app/notify/notifier.py `NoticeDeps`)."""

    @property
    def teller(self) -> Teller: ...

    @property
    def identities(self) -> IdentityService:
        """The service-account service an attestation round is read from."""
        ...

    @property
    def core(self) -> AccessService:
        """The request core: its policy in force (the accounts, the security channel)."""
        ...


def attestation_follow_up(notice: Notice, given: Needs) -> None:
    """Ask the owner to confirm a service account (a card with Still needed / Retire);
    past the deadline, tell security and remind the owner."""
    name = str(notice.facts["name"])
    step = AttestationStep(notice.action.removeprefix("attestation."))
    teller = given.teller
    view = given.identities.attestation(name)
    if view is None:
        return
    owner_id = teller.directory.user_id_for(view.owner)
    policy = given.core.policy
    if step == AttestationStep.ASKED:
        if owner_id is None:
            log.warning("event=owner_not_in_slack identity=%s owner=%s", name, view.owner)
            return  # the hourly orphan check reports it
        teller.post(
            f"attestation_asked identity={name}",
            owner_id,
            messages.asked_text(name),
            messages.attestation_card(view, teller.zone, teller.names),
        )
        return
    blocked = policy.identities[name].block_unattested
    text = messages.overdue_text(view, blocked, teller.zone, teller.names)
    teller.post(f"attestation_overdue identity={name}", policy.channels.security_alerts, text)
    if owner_id is not None:
        teller.post(f"attestation_overdue identity={name}", owner_id, text)


def orphans_found(notice: Notice, given: Needs) -> None:
    """One look's new orphan flags, in one message to the security channel."""
    given.teller.post(
        "orphans_found",
        given.core.policy.channels.security_alerts,
        messages.orphans_text(orphans_of_notices([notice.facts, *notice.more])),
    )


def attestation_answered(
    teller: Teller, identities: IdentityService, channel: str, ts: str, name: str
) -> None:
    """The owner answered: their card (`channel`, `ts`) is redrawn to show it."""
    view = identities.attestation(name)
    if view is not None:
        with teller.recording(f"identity:{name}"):
            teller.update(
                channel,
                ts,
                f"{name}: answered",
                messages.attestation_card(view, teller.zone, teller.names),
            )


def owner_gone(directory: SlackDirectory, member: str) -> str | None:
    """Why a policy member is no longer a current person in Slack, or None."""
    user_id = directory.user_id_for(member)
    if user_id is None:
        return f"owner {member} is not found in Slack"
    try:
        profile = directory.profile(user_id)
    except SlackApiError as exc:
        return f"owner {member} is not found in Slack ({exc.response.get('error')})"
    return f"owner {member} is deactivated in Slack" if profile.deleted else None


NOTICES = (
    *(Telling(f"attestation.{step.value}", attestation_follow_up) for step in AttestationStep),
    Telling("orphans.found", orphans_found),
)
