"""Grants, then tell people: when a grant's notice is delivered (app/telling.py), who hears of it
and with which message. Before access ends, the holder is warned, with Extend (where the path
allows) and Done, revoke now. Access extended by the holder themselves (within what the path
allows without approval) redraws only the homes: they were answered where they asked; extended
by an approver, it is told as any change of the request (its cards, the holder, the homes). A
grant the target refused and a revoke that failed alert the security channel and the WardKey
admins (`grant_failed`, `revoke_failed`, asked by the request's own telling of the change,
app/requests/flows.py). What a request's telling does is asked through `Needs`: requests are
built on grants, so naming them here would be a cycle."""

from __future__ import annotations

import logging
from typing import Protocol

from app.blockkit import escape, inert
from app.clock import Clock
from app.grants.messages import expiry_warning
from app.lifecycle.snapshots import RequestSnapshot
from app.outbox_records import Notice
from app.policy import rules
from app.policy.model import Policy
from app.telling import Teller, Telling
from app.wording import clock_time, plural

log = logging.getLogger(__name__)


class Core(Protocol):
    """What the grants' tellings read of the request core (app/access.py `AccessService`,
    which is built on this package's service: naming it here would be a cycle)."""

    @property
    def policy(self) -> Policy:
        """The policy in force: the security channel and the WardKey admins."""
        ...

    @property
    def clock(self) -> Clock: ...

    def get(self, request_id: int) -> RequestSnapshot: ...


class Needs(Protocol):
    """What telling of grants is given (app/notify/notifier.py `NoticeDeps`)."""

    @property
    def teller(self) -> Teller: ...

    @property
    def core(self) -> Core: ...

    def refresh_homes(self, view: RequestSnapshot) -> None:
        """The App Homes the request concerns, redrawn (app/requests/flows.py)."""
        ...

    def request_changed(self, view: RequestSnapshot, notice: Notice) -> None:
        """The request's change told: its cards, its requester, the homes
        (app/requests/flows.py)."""
        ...


def expiry_warned(notice: Notice, given: Needs) -> None:
    """DM the holder before the end: Extend (where the path allows) and Done, revoke now."""
    assert notice.request_id is not None
    core, teller = given.core, given.teller
    view = core.get(notice.request_id)
    if not view.requester_slack_id:
        return
    teller.post(
        f"expiry_warning request={view.id}",
        view.requester_slack_id,
        f"Your access to {view.target}:{view.role} ends at "
        f"{clock_time(view.expires_at, teller.zone)}",
        expiry_warning(view, core.clock.now(), teller.zone),
    )


def extended(notice: Notice, given: Needs) -> None:
    """Extended by the holder without approval: they were answered where they asked, so only
    the homes are redrawn. Extended by an approver: told as any change of the request."""
    assert notice.request_id is not None
    view = given.core.get(notice.request_id)
    if notice.actor == view.requester:
        given.refresh_homes(view)
    else:
        given.request_changed(view, notice)


def grant_failed(view: RequestSnapshot, teller: Teller, policy: Policy) -> None:
    """An approved request the target would not grant: the security channel and every
    WardKey admin hear of it, so someone fixes the target and the person is not left
    waiting for access that is not coming."""
    text = (
        f"⚠️ Grant failed: #{view.id} `{view.target}:{view.role}` for "
        f"{teller.names.person(view.requester, view.requester_slack_id)} was approved, but "
        "the target did not grant it: "
        f"{inert(view.grant_detail or 'no detail')[:500]}. The requester has been told. "
        "Check the target; once it is fixed they can ask again."
    )
    about = f"grant_failed request={view.id}"
    teller.post(about, policy.channels.security_alerts, text)
    admins = teller.slack_ids(view, rules.group_members(policy, policy.admins))
    for user_id in admins:
        teller.post(about, user_id, text)
    if not admins:  # the card says admins are told: make it loud that none could be
        log.error("event=no_admin_reachable request=%s", view.id)
        teller.post(
            about,
            policy.channels.security_alerts,
            f"⚠️ No WardKey admin could be reached in Slack about #{view.id}: check the "
            "policy's admins group.",
        )


def revoke_failed(view: RequestSnapshot, attempts: int, teller: Teller, policy: Policy) -> None:
    """Access still on the target after a revoke: the security channel is alerted, at every
    failed try (with the channel gone, the WardKey admins are)."""
    text = (
        f"🚨 Revoke failed: #{view.id} `{view.target}:{view.role}` for "
        f"{escape(view.account)} is still in place on the target after "
        f"{plural(attempts, 'attempt')}: {escape(view.revoke_detail or 'no detail')}. "
        "WardKey keeps retrying; check the target, and once access is gone a WardKey "
        f'admin can run `wardkey revoke resolve {view.id} "what you checked"`.'
    )
    about = f"revoke_failed request={view.id}"
    # The card says security is alerted: with the channel gone, the admins are.
    with teller.aside() as admins:
        for user_id in teller.slack_ids(view, rules.group_members(policy, policy.admins)):
            teller.post(about, user_id, text)
    teller.post(about, policy.channels.security_alerts, text, instead=admins)


NOTICES = (
    Telling("expiry.warned", expiry_warned),
    Telling("access.extended", extended),
)
