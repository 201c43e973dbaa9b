"""Break-glass, then tell people: when a use's notice is delivered (app/telling.py), who hears
of it and with which message. Started: the security channel and the reviewers on duty are
alerted at once (each recipient Slack took is remembered, for the review card to list), the
vendor's sponsor hears of it, and a use a second person confirmed has its Confirm cards and
wait line redrawn and the person told. Held for a second person: a Confirm card to each
eligible confirmer and a line in the security channel showing the wait; waiting (the sweep's
notice, jobs.py): that line with the wait so far; closed unconfirmed (timed out or
cancelled, told with the request's own notice): the cards and the line say so. The managers'
review of a use is app/reviews/flows.py."""

from __future__ import annotations

from datetime import timedelta
from typing import Protocol

from app.blockkit import inert, mention
from app.breakglass.messages import (
    CONFIRM_CARD,
    WAIT_LINE,
    confirm_card,
    flag_lines,
    wait_line,
    waited_words,
)
from app.breakglass.service import ALERT_MESSAGE, HELD, STARTED, WAITING
from app.clock import Clock
from app.grants.messages import outcome_line
from app.lifecycle.snapshots import BreakGlassStart, RequestSnapshot
from app.outbox_records import Defer, Notice
from app.policy import rules
from app.policy.model import Policy
from app.store.models import RequestState
from app.telling import Teller, Telling
from app.wording import clock_time


class Core(Protocol):
    """What break-glass's tellings read of the request core (app/access.py `AccessService`,
    which this package's service is a part of: naming it here would be a cycle)."""

    @property
    def policy(self) -> Policy:
        """The policy in force: the security and managers' channels, the reviewers."""
        ...

    @property
    def clock(self) -> Clock: ...

    def get(self, request_id: int) -> RequestSnapshot: ...

    def break_glass_start(self, request_id: int) -> BreakGlassStart:
        """How a use began: held, confirmed, flagged."""
        ...

    def messages_of(self, request_id: int, purpose: str) -> list[tuple[str, str]]:
        """Where each message remembered under `purpose` was posted (channel, ts)."""
        ...


class Needs(Protocol):
    """What telling of break-glass is given (app/notify/notifier.py `NoticeDeps`)."""

    @property
    def teller(self) -> Teller: ...

    @property
    def core(self) -> Core: ...

    def tell_sponsor(self, view: RequestSnapshot) -> None:
        """A vendor's sponsor told of a use of the access they sponsor
        (app/identities/flows.py)."""
        ...


def started(notice: Notice, given: Needs) -> None:
    """Security and the reviewers on duty hear at once. Each recipient Slack accepted is
    remembered, and the review card lists those and only those as alerted."""
    assert notice.request_id is not None
    core, teller = given.core, given.teller
    view = core.get(notice.request_id)
    if view.state == RequestState.GRANTING:
        raise Defer  # its end time is known once the grant is done
    policy, zone = core.policy, teller.zone
    until = clock_time(view.expires_at, zone)
    who = mention(view.requester_slack_id, view.requester)
    access = f"`{view.target}:{view.role}`"
    reason = f"Reason, in their words: “{inert(view.reason)[:1000]}”"
    to_security = f"🔴 Break-glass #{view.id}: {who} took {access} until {until}. {reason}"
    to_reviewer = (
        f"🔴 Break-glass #{view.id}: {who} took {access} until {until}. Its review comes "
        f"to {teller.names.channel(policy.channels.manager_reviews)} when it ends. {reason}"
    )
    start = core.break_glass_start(view.id)
    if start.confirmed_by is not None:
        confirmed = (
            f" Confirmed by {teller.names.person(start.confirmed_by, start.confirmed_by)} "
            f"after {waited_words(start.waited or timedelta(0))} (it needed a second "
            f"person: {inert('; '.join(start.held_for))[:600]})."
        )
        to_security += confirmed
        to_reviewer += confirmed
    if start.flags:
        flagged = f"\n*Flags*\n{flag_lines(start.flags)}"
        to_security += flagged
        to_reviewer += flagged
    reviewers = teller.slack_ids(view, rules.reviewers(policy, core.clock.now()))
    for channel, text in [(policy.channels.security_alerts, to_security)] + [
        (user_id, to_reviewer) for user_id in reviewers
    ]:
        # Remembered once Slack takes it; one refused for good is logged and not listed.
        teller.post(
            f"break_glass_alert request={view.id}",
            channel,
            text,
            remember=(view.id, ALERT_MESSAGE),
            as_addressed=True,
        )
    given.tell_sponsor(view)
    if start.confirmed_by is not None:
        _held_update(view, start, given)
        if view.requester_slack_id:
            teller.post(
                f"breakglass_confirmed request={view.id}",
                view.requester_slack_id,
                f"Break-glass #{view.id}: "
                f"{teller.names.person(start.confirmed_by, start.confirmed_by)} confirmed it. "
                f"{outcome_line(view, zone, teller.names)}. This use will be reviewed.",
            )


# A use over its limits, or by someone with an overdue review, waits for a second person
# (service.py): a Confirm card to each confirmer, a line in the security channel showing the
# wait (updated by the sweep), both updated in place when it ends.


def held(notice: Notice, given: Needs) -> None:
    """A Confirm card to each eligible confirmer; the security channel's line about the wait."""
    assert notice.request_id is not None
    core, teller = given.core, given.teller
    view = core.get(notice.request_id)
    start = core.break_glass_start(view.id)
    text, blocks = confirm_card(view, start, teller.zone, teller.names)
    about = f"breakglass_confirm request={view.id}"
    for user_id in teller.slack_ids(view, list(start.confirmers)):
        teller.post(about, user_id, text, blocks, remember=(view.id, CONFIRM_CARD))
    waited = core.clock.now() - view.created_at
    teller.post(
        f"breakglass_wait request={view.id}",
        core.policy.channels.security_alerts,
        wait_line(view, start, waited, teller.zone, teller.names),
        remember=(view.id, WAIT_LINE),
    )


def waiting(notice: Notice, given: Needs) -> None:
    """The security channel's line about a held use, with the wait so far."""
    core, teller = given.core, given.teller
    view = core.get(int(notice.facts["request"]))
    if view.state != RequestState.PENDING:
        return  # its end updated the line
    start = core.break_glass_start(view.id)
    waited = core.clock.now() - view.created_at
    line = wait_line(view, start, waited, teller.zone, teller.names)
    for channel, ts in core.messages_of(view.id, WAIT_LINE):
        teller.update(channel, ts, line)


def held_closed(view: RequestSnapshot, given: Needs) -> None:
    """A held use closed without a second person (timed out or cancelled; told with the
    request's own notice, app/requests/flows.py): its cards and line say so."""
    start = given.core.break_glass_start(view.id)
    if start.held_at is not None:
        _held_update(view, start, given)


def _held_update(view: RequestSnapshot, start: BreakGlassStart, given: Needs) -> None:
    """The confirm cards and the security channel's wait line, as the use now stands."""
    teller = given.teller
    text, blocks = confirm_card(view, start, teller.zone, teller.names)
    teller.update_in_place(view.id, CONFIRM_CARD, text, blocks)
    waited = (start.waited or timedelta(0)) if start.confirmed_by else timedelta(0)
    line = wait_line(view, start, waited, teller.zone, teller.names)
    for channel, ts in given.core.messages_of(view.id, WAIT_LINE):
        teller.update(channel, ts, line)


NOTICES = (
    Telling(STARTED, started),
    Telling(HELD, held),
    Telling(WAITING, waiting),
)
