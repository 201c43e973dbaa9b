"""Service accounts and vendors, then tell people: when an attestation round's or an orphan
look's notice is delivered (app/telling.py), who hears of it and with which message; the
owner's card redrawn once they answer; why an owner is no longer a current person in Slack,
which the orphan look asks (service.py `flag_orphans`); and a vendor's sponsor told of each
use of the access they sponsor (`tell_sponsor`, with a request's outcome and a break-glass
use)."""

from __future__ import annotations

import logging
from typing import Protocol

from slack_sdk.errors import SlackApiError

from app.access import AccessService
from app.blockkit import inert
from app.directory import SlackDirectory
from app.grants.messages import outcome_line
from app.identities import messages
from app.identities.service import AttestationStep, IdentityService, orphans_of_notices
from app.lifecycle.snapshots import RequestSnapshot
from app.outbox_records import Notice
from app.policy import rules
from app.policy.model import Policy
from app.policy.people import Person
from app.store.models import RequestState
from app.telling import Teller, Telling

log = logging.getLogger(__name__)


class Needs(Protocol):
    """What telling of service accounts and vendors is given (app/notify/notifier.py
    `NoticeDeps`)."""

    @property
    def teller(self) -> Teller: ...

    @property
    def identities(self) -> IdentityService:
        """The service-account service an attestation round is read from."""
        ...

    @property
    def core(self) -> AccessService:
        """The request core: its policy in force (the accounts, the security channel, the
        vendors and their sponsors)."""
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


def tell_sponsor(view: RequestSnapshot, given: Needs) -> None:
    """A vendor's sponsor hears of each use of the access they sponsor: when it starts and
    when it ends (a request's outcome, app/requests/flows.py; a break-glass use,
    app/breakglass/flows.py)."""
    sponsor = _vendor_sponsor(view, given.core.policy)
    if sponsor is None or view.state not in (
        RequestState.ACTIVE,
        RequestState.ENDED,
        RequestState.REVOKE_FAILED,
    ):
        return
    teller = given.teller
    for user_id in teller.slack_ids(view, [sponsor]):
        teller.post(
            f"sponsor request={view.id}",
            user_id,
            f"Vendor access you sponsor: "
            f"{teller.names.person(view.requester, view.requester_slack_id)} on "
            f"`{view.target}:{view.role}` (#{view.id}): "
            f"{outcome_line(view, teller.zone, teller.names)}. "
            f"Reason: {inert(view.reason)[:300]}",
        )


def _vendor_sponsor(view: RequestSnapshot, policy: Policy) -> str | None:
    if view.sponsor is not None:
        return view.sponsor
    if view.requester_email is None and view.requester_slack_id is None:
        return None
    person = Person(slack_user_id=view.requester_slack_id, email=view.requester_email)
    vendor = rules.vendor_of(policy, person)
    return vendor.sponsor if vendor is not None else None  # break-glass has no approval


NOTICES = (
    *(Telling(f"attestation.{step.value}", attestation_follow_up) for step in AttestationStep),
    Telling("orphans.found", orphans_found),
)
