"""Requests, then tell people: when a request's notice is delivered (app/telling.py), who hears
of it and with which message; the requester's receipt; and the App Home.

- Opened (a request, or an extension asked for): the approver card to every approver on duty
  and the path's channel; once Slack has answered for each card, if it took none, no approver
  can be reached and the request is escalated at once.
- Overdue: at half the SLA the approvers on duty are reminded; at the whole SLA the card goes
  to the escalation group, every copy says so, and the requester hears who it reached.
- No approver reachable: the card to the escalation group at once, security and the WardKey
  admins alerted, the requester told what happened and what to do.
- Any other change (decided, granted, ended, failed, cancelled, timed out…): every copy of the
  card and the requester's receipt redrawn in place, the requester told the outcome, a vendor's
  sponsor told (app/identities/flows.py), a held break-glass use's cards and line closed
  (app/breakglass/flows.py), a failed grant or revoke alerted (app/grants/flows.py), the homes
  it concerns redrawn. States a request only passes through tell nobody.
- The App Home: the person's requests, what they hold and what waits for them, drawn when sent.

Messages that must name only whom Slack reached ("escalated to Hana Novak", the alerts about
an unreachable request) are drawn when their turn comes (`DRAWINGS`). What break-glass, the
vendors and the on-call and group caches say is asked through `Needs`: each of them is built
on the request core, so naming them here would be a cycle.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from slack_sdk.errors import SlackApiError

from app.blockkit import escape, inert
from app.clock import Clock
from app.directory import slack_unwell
from app.grants import flows as grants_flows
from app.grants.messages import outcome_line
from app.lifecycle.errors import NotAllowed
from app.lifecycle.snapshots import RequestSnapshot
from app.outbox_records import Delivered, Notice
from app.policy import rules
from app.policy.durations import format_duration
from app.policy.model import BREAK_GLASS_PATH, Policy
from app.policy.people import Person
from app.requests.messages import CardContext, approver_card, home_view, requester_receipt
from app.store.models import RequestState
from app.telling import ANY_OTHER_CHANGE, Drawing, Teller, Telling
from app.wording import clock_time, listed

log = logging.getLogger(__name__)
# Every posted copy of the approver card is remembered under this purpose (updated in place).
CARD = "approver_card"
# The requester's own DM about their request (Cancel on it while it waits).
RECEIPT = "requester_receipt"
# A shift: an App Home opened within it is redrawn live as things change.
HOME_LIVE_FOR = timedelta(hours=12)
# States a request passes through on its way somewhere (the grant or revoke is under way):
# nobody is told of them; they are told where it lands.
PASSING = frozenset(
    {RequestState.APPROVED.value, RequestState.GRANTING.value, RequestState.REVOKING.value}
)


class Core(Protocol):
    """What the requests' tellings read of the request core (app/access.py `AccessService`,
    which is built on this package's service: naming it here would be a cycle)."""

    @property
    def policy(self) -> Policy: ...

    @property
    def clock(self) -> Clock: ...

    def get(self, request_id: int) -> RequestSnapshot: ...

    def requests_of(
        self, person: Person, states: tuple[RequestState, ...] = ()
    ) -> list[RequestSnapshot]: ...

    def requests_of_key(
        self, key: str, states: tuple[RequestState, ...] = ()
    ) -> list[RequestSnapshot]: ...

    def awaiting_decision_by(self, person: Person, limit: int = 25) -> list[RequestSnapshot]: ...

    def elevations_since(self, requester: str, since: datetime) -> int: ...

    def recent_home_viewers(self, slack_user_ids: set[str], within: timedelta) -> set[str]:
        """Those of these people who opened their App Home within `within`."""
        ...

    def approvers_unreachable(self, request_id: int, why: str) -> RequestSnapshot | None:
        """Record that no approver could be reached (escalated at once), or None if it
        was already, or is no longer waiting."""
        ...

    def unreachable_reason(self, request_id: int) -> str: ...


class Needs(Protocol):
    """What telling of requests is given (app/notify/notifier.py `NoticeDeps`)."""

    @property
    def teller(self) -> Teller: ...

    @property
    def core(self) -> Core: ...

    def held_closed(self, view: RequestSnapshot) -> None:
        """A held break-glass use closed unconfirmed: its cards and line say so
        (app/breakglass/flows.py)."""
        ...

    def tell_sponsor(self, view: RequestSnapshot) -> None:
        """A vendor's sponsor told of a use of the access they sponsor
        (app/identities/flows.py)."""
        ...

    def on_call_from(self, path: str) -> list[str]:
        """Where the rotas approving `path` were read from, for the card (app/oncall)."""
        ...

    def groups_from(self, path: str) -> list[str]:
        """Where the directory groups approving `path` were read from, for the card
        (app/groups)."""
        ...

    def unread_rotas(self, path: str) -> list[str]:
        """Why rotas approving `path` name nobody (their source not read in time), in words
        (app/oncall)."""
        ...


# ------------------------------------------------------------------ the notices


def opened(notice: Notice, given: Needs) -> None:
    """Send the card to every approver on duty now (DM) and to the path's channel. Once
    Slack has answered for each, a check: if it took none (nobody on duty has a current
    Slack account, or every card was refused for good), no approver can be reached and
    the service escalates at once (`approval.unreachable`)."""
    assert notice.request_id is not None
    core, teller = given.core, given.teller
    view = core.get(notice.request_id)
    now = core.clock.now()
    blocks = approver_card(view, _context(view, given))
    who = teller.names.person(view.requester, view.requester_slack_id)
    text = f"Access request #{view.id}: {view.target}:{view.role} for {who}"
    approvers = rules.approvers_at(core.policy, view.path, now)
    if view.sponsor is not None and view.extension is None:
        approvers.append(view.sponsor)  # a vendor's sponsor must approve too
    missing: list[str] = []
    channels = list(dict.fromkeys(teller.slack_ids(view, approvers, missing)))
    path = core.policy.paths.get(view.path)
    if path is not None and path.channel:
        channels.append(path.channel)
    for channel in channels:
        teller.post(f"card request={view.id}", channel, text, blocks, remember=(view.id, CARD))
    if not channels:
        log.error("event=no_approver_reachable request=%s path=%s", view.id, view.path)
        if not approvers:
            missing.append(f"nobody is on duty to approve the {view.path} path")
            missing.extend(given.unread_rotas(view.path))
    teller.draw_later(
        f"approvers_reached request={view.id}",
        "approvers_reached",
        {"request_id": view.id, "missing": missing},
    )
    # A quick approver's decision is a later notice of this request: it is delivered after
    # these posts, so it updates every copy.
    refresh_homes(view, given)


def overdue(notice: Notice, given: Needs) -> None:
    """Half the SLA: remind the approvers on duty. The whole SLA: the card goes to the
    escalation group too, every copy says "escalated", and the requester is told."""
    assert notice.request_id is not None
    core, teller = given.core, given.teller
    view = core.get(notice.request_id)
    level = 2 if notice.action == "approval.escalated" else 1
    policy, now = core.policy, core.clock.now()
    waited = format_duration(max(timedelta(0), now - view.created_at))
    on_duty = teller.slack_ids(view, rules.approvers_at(policy, view.path, now))
    if level < 2:
        for user_id in on_duty:
            teller.post(
                f"reminder request={view.id}",
                user_id,
                f"⏰ Reminder: request #{view.id} (`{view.target}:{view.role}` for "
                f"{teller.names.person(view.requester, view.requester_slack_id)}) has waited "
                f"{waited}. Its card, with Approve "
                "and Deny, is in your messages.",
            )
        return
    blocks = approver_card(view, _context(view, given))
    escalated_to = 0
    for user_id in teller.slack_ids(view, rules.escalation_members(policy, view.path)):
        if user_id in on_duty:  # they have the card already
            continue
        teller.post(
            f"escalation request={view.id}",
            user_id,
            f"Escalated: access request #{view.id} has waited {waited} for approval",
            blocks,
            remember=(view.id, CARD),
        )
        escalated_to += 1
    _update_cards(view, given)
    if escalated_to == 0:
        log.error("event=no_escalation_reachable request=%s path=%s", view.id, view.path)
    if view.requester_slack_id:
        # Drawn once Slack has answered for each escalated card: it names only those it took.
        teller.draw_later(
            f"escalation request={view.id}",
            "escalated",
            {
                "request_id": view.id,
                "waited": waited,
                "asked": escalated_to,  # cards sent to more approvers (Slack may refuse some)
            },
        )


def unreachable(notice: Notice, given: Needs) -> None:
    """No approver could be reached: the card goes at once to the escalation group (the
    escalation sweep's targets), then security and every WardKey admin are alerted, then
    the requester is told what happened and what they can do. The alerts and the
    requester's message are drawn once Slack has answered for the cards, so each says
    only who really has the request."""
    assert notice.request_id is not None
    core, teller = given.core, given.teller
    view = core.get(notice.request_id)
    policy = core.policy
    if view.state == RequestState.PENDING or view.extension is not None:
        blocks = approver_card(view, _context(view, given))
        text = (
            f"⚠️ Access request #{view.id}: no {view.path} approver could be reached in "
            "Slack, so it comes to you at once"
        )
        for user_id in teller.slack_ids(view, rules.escalation_members(policy, view.path)):
            teller.post(
                f"unreachable request={view.id}",
                user_id,
                text,
                blocks,
                remember=(view.id, CARD),
            )
    _update_cards(view, given)
    about = f"unreachable request={view.id}"
    alert = {"request_id": view.id}
    teller.draw_later(
        about, "unreachable_alert", {**alert, "channel": policy.channels.security_alerts}
    )
    for user_id in teller.slack_ids(view, rules.group_members(policy, policy.admins)):
        teller.draw_later(about, "unreachable_alert", {**alert, "channel": user_id})
    if view.requester_slack_id:
        teller.draw_later(about, "unreachable_requester", alert)
    refresh_homes(view, given)


def changed(notice: Notice, given: Needs) -> None:
    """Any other notice of a request (ANY_OTHER_CHANGE). A state it only passes through (a
    grant or revoke under way), or a takeover, tells nobody and is settled without reading
    the request (a wave of expiries would otherwise read every request twice for nothing):
    it is told where it lands."""
    assert notice.request_id is not None
    if notice.to in PASSING or notice.action.endswith(".taken_over"):
        return
    request_changed(given.core.get(notice.request_id), notice, given)


def request_changed(view: RequestSnapshot, notice: Notice, given: Needs) -> None:
    """Update every copy of the card in place (as it is now), tell the requester what
    happened (as of this notice) and redraw the homes it concerns; a failed revoke also
    alerts the security channel, at every failed try. A break-glass use's grant is told by
    its alert (app/breakglass/flows.py); a held one that timed out or was cancelled has its
    cards and line closed first."""
    if view.path == BREAK_GLASS_PATH:
        if notice.action == "grant.succeeded":
            return  # the break-glass alert says it
        if notice.facts.get("from") == RequestState.PENDING.value:
            given.held_closed(view)  # held, then timed out or cancelled
    teller, policy = given.teller, given.core.policy
    to = RequestState(notice.to or view.state)
    attempts = int(notice.facts.get("revoke_attempts") or view.revoke_attempts)
    if to == RequestState.REVOKE_FAILED:
        grants_flows.revoke_failed(view, attempts, teller, policy)
        if attempts > 1:
            return  # card and requester were told at the first failure
    if to == RequestState.GRANT_FAILED:
        # the card and the requester's DM say admins are told
        grants_flows.grant_failed(view, teller, policy)
    _update_cards(view, given)
    if not (notice.action == "request.cancelled" and view.cancelled_by_requester):
        # (A requester who cancelled was answered where they did it: the reply to
        # /jit cancel or /breakglass, their DM about it updated in place, their home.)
        tell_requester(view if view.state == to else replace(view, state=to), given)
    refresh_homes(view, given)


def _update_cards(view: RequestSnapshot, given: Needs) -> None:
    """Every copy of the approver card, and the requester's own DM about the request,
    updated in place."""
    teller = given.teller
    blocks = approver_card(view, _context(view, given))
    text = f"Access request #{view.id}: {outcome_line(view, teller.zone, teller.names)}"
    teller.update_in_place(view.id, CARD, text, blocks)
    receipt_text, receipt = requester_receipt(view, teller.zone, teller.names)
    teller.update_in_place(view.id, RECEIPT, receipt_text, receipt)


def tell_requester(view: RequestSnapshot, given: Needs) -> None:
    """The requester hears where their request stands; a vendor's sponsor hears of it too."""
    teller = given.teller
    if view.requester_slack_id:
        teller.post(
            f"outcome request={view.id}",
            view.requester_slack_id,
            f"Your request #{view.id} for `{view.target}:{view.role}`: "
            f"{outcome_line(view, teller.zone, teller.names)}",
        )
    given.tell_sponsor(view)


def request_received(view: RequestSnapshot, teller: Teller) -> None:
    """DM the requester what they asked for, with Cancel while it waits; every later
    change updates it in place. Recorded once per request, however often this is asked
    (a redelivered form), behind the request's own notices."""
    if not view.requester_slack_id:
        return
    text, blocks = requester_receipt(view, teller.zone)
    with teller.recording(f"request:{view.id}", key=f"receipt:{view.id}"):
        teller.post(
            f"receipt request={view.id}",
            view.requester_slack_id,
            text,
            blocks,
            remember=(view.id, RECEIPT),
        )


# ------------------------------------------------------------------ the App Home


def refresh_homes(view: RequestSnapshot, given: Needs) -> None:
    """Redraw the homes of everyone a change concerns (requester and approvers on duty) who
    looked at theirs recently. The others' are drawn fresh when they next open them, which
    spares Slack's views.publish limit and the work in a wave of requests."""
    core, teller = given.core, given.teller
    users = {view.requester_slack_id} if view.requester_slack_id else set()
    for member in rules.approvers_at(core.policy, view.path, core.clock.now()):
        user_id = teller.directory.user_id_for(member)
        if user_id:
            users.add(user_id)
    for user_id in sorted(core.recent_home_viewers(users, HOME_LIVE_FOR)):
        teller.redraw_home(user_id)


def draw_home(user_id: str, given: Needs) -> dict[str, Any] | None:
    """This user's App Home as it is now, or None if they may not use WardKey."""
    core, teller = given.core, given.teller
    try:
        person = teller.directory.person(user_id)
    except NotAllowed:
        return None
    mine = core.requests_of(
        person,
        (
            RequestState.PENDING,
            RequestState.APPROVED,
            RequestState.GRANTING,
            RequestState.ACTIVE,
        ),
    )
    high_risk = frozenset(
        name for name, p in core.policy.paths.items() if p.risk in ("high", "critical")
    )
    return home_view(
        active=[v for v in mine if v.state == RequestState.ACTIVE],
        pending=[v for v in mine if v.state != RequestState.ACTIVE or v.extension is not None],
        to_decide=core.awaiting_decision_by(person, limit=10),
        now=core.clock.now(),
        zone=teller.zone,
        high_risk_paths=high_risk,
        names=teller.names,
    )


# ------------------------------------------------------------------ drawn late


def _reached(before: Sequence[Delivered]) -> tuple[list[Delivered], list[str]]:
    """The approver cards among the calls before, and where Slack took them."""
    cards = [d for d in before if d.call.remember and d.call.remember[1] == CARD]
    return cards, [str(d.call.args["channel"]) for d in cards if d.sent]


def approvers_reached(args: Mapping[str, Any], before: Sequence[Delivered], given: Needs) -> None:
    """After the cards of a request opened: if Slack took none, no approver can be reached,
    and the service records it (escalated at once, `approval.unreachable`), saying why."""
    cards, reached = _reached(before)
    if reached:  # the usual case: nothing to say, and no need to read the request
        return
    teller = given.teller
    request_id = int(args["request_id"])
    why = list(args.get("missing") or [])
    why += [
        f"Slack refused the card to {_plain_name(teller, str(d.call.args['channel']))} "
        f"({_refusal_words(d.error)})"
        for d in cards
    ]
    reason = "; ".join(why) or "nobody could be reached"
    if given.core.approvers_unreachable(request_id, reason) is not None:
        log.error("event=approval_unreachable request=%s why=%s", request_id, reason)


def escalated(args: Mapping[str, Any], before: Sequence[Delivered], given: Needs) -> None:
    """The requester hears who the card reached, by name; if nobody further, what to do."""
    _, reached = _reached(before)
    view = given.core.get(int(args["request_id"]))
    waited, asked = str(args.get("waited") or ""), int(args.get("asked") or 0)
    if view.requester_slack_id is None or view.state != RequestState.PENDING:
        return  # decided meanwhile: that outcome is its own message
    if reached:
        text = (
            f"Your request #{view.id} has waited {waited}, so it has been escalated to "
            f"{_reached_names(given.teller, reached)} too."
        )
    else:
        nobody = (
            "nobody further could be reached in Slack"
            if asked
            else "there is nobody further to escalate it to"
        )
        text = (
            f"Your request #{view.id} has waited {waited} and {nobody}. Phone "
            f"{_who_to_call(view, given)}. {_break_glass_hint(view, given.core.policy)}"
        )
    given.teller.post(f"escalation request={view.id}", view.requester_slack_id, text)


def unreachable_alert(args: Mapping[str, Any], before: Sequence[Delivered], given: Needs) -> None:
    """Security or an admin hears that no approver could be reached, why, and whom the
    request went to instead."""
    _, reached = _reached(before)
    core, teller = given.core, given.teller
    view = core.get(int(args["request_id"]))
    why = core.unreachable_reason(view.id)
    who = teller.names.person(view.requester, view.requester_slack_id)
    if reached:
        escalated = f"It was escalated at once to {_reached_names(teller, reached)}."
    elif view.state == RequestState.PENDING:
        escalated = _no_escalation(view, core.policy)
    else:
        escalated = f"It is no longer waiting: {outcome_line(view, teller.zone, teller.names)}."
    teller.post(
        f"unreachable request={view.id}",
        str(args["channel"]),
        f"🚨 No approver could be reached for request #{view.id}: {who} asked for "
        f"`{view.target}:{view.role}` ({format_duration(view.extension or view.requested)}, "
        f"{view.path} path): “{inert(view.reason)[:300]}”. Why: {inert(why)[:800]}. "
        f"{escalated} Check the approvers the policy names for the {view.path} path "
        "against Slack (`wardkey policy check --slack`).",
    )


def unreachable_requester(
    args: Mapping[str, Any], before: Sequence[Delivered], given: Needs
) -> None:
    """The requester hears that no approver could be reached, whom it went to instead, who
    was alerted, and what they can do now."""
    _, reached = _reached(before)
    core, teller = given.core, given.teller
    view = core.get(int(args["request_id"]))
    if view.requester_slack_id is None:
        return
    waiting = view.state == RequestState.PENDING or (
        view.state == RequestState.ACTIVE and view.extension is not None
    )
    if not waiting:
        return  # decided meanwhile: that outcome is its own message
    what = "extension of your access" if view.state == RequestState.ACTIVE else "request"
    lines = [
        f"⚠️ No {view.path} approver could be reached in Slack for your {what} "
        f"#{view.id} (`{view.target}:{view.role}`)."
    ]
    if reached:
        lines.append(f"It has gone straight to {_reached_names(teller, reached)} instead.")
    else:
        lines.append(_no_escalation(view, core.policy))
    alerted = [
        teller.names.channel(str(d.call.args["channel"]))
        for d in before
        if d.sent and d.call.args.get("draw") == "unreachable_alert"
    ]
    if alerted:
        lines.append(f"WardKey has alerted {listed(alerted)}.")
    lines.append("*What you can do now*")
    if view.state == RequestState.ACTIVE:
        until = clock_time(view.expires_at, teller.zone)
        lines.append(f"• Your access carries on until {until}.")
    else:
        lines.append(f"• {_break_glass_hint(view, core.policy)}")
    lines.append(f"• Phone {_who_to_call(view, given)}.")
    teller.post(f"unreachable request={view.id}", view.requester_slack_id, "\n".join(lines))


# ------------------------------------------------------------------ in words


def _context(view: RequestSnapshot, given: Needs) -> CardContext:
    """What the approver card says around the request: who asks (name and title as Slack
    has them), the path's risk, their elevations and other access, where the approvers
    came from."""
    core, teller = given.core, given.teller
    name, title = view.requester, ""
    if view.requester_slack_id:
        try:
            profile = teller.directory.profile(view.requester_slack_id)
            name, title = profile.name, profile.title
        except SlackApiError as exc:
            if slack_unwell(exc):
                raise  # the card is rendered again when Slack answers
            log.warning(
                "event=profile_lookup_failed user=%s error=%s",
                view.requester_slack_id,
                exc.response.get("error"),
            )
    now = core.clock.now()
    others = tuple(
        f"{v.target}:{v.role} until {clock_time(v.expires_at, teller.zone)}"
        for v in core.requests_of_key(view.requester, (RequestState.ACTIVE,))
        if v.id != view.id
    )
    path = core.policy.paths.get(view.path)
    return CardContext(
        requester_name=name,
        requester_title=title,
        risk=path.risk if path else "unknown",
        elevations_30_days=core.elevations_since(view.requester, now - timedelta(days=30)),
        other_active=others,
        zone=teller.zone,
        names=teller.names,
        on_call_from=tuple(given.on_call_from(view.path)),
        groups_from=tuple(given.groups_from(view.path)),
        step_up=path.step_up if path else False,
    )


def _who_to_call(view: RequestSnapshot, given: Needs) -> str:
    """The people a requester can phone when Slack reaches no approver: the path's
    escalation group, else the WardKey admins, by name and title as Slack has them."""
    policy = given.core.policy
    members = rules.escalation_members(policy, view.path) or rules.group_members(
        policy, policy.admins
    )
    people: list[str] = []
    for member in members:
        if member in (view.requester, view.requester_email, view.requester_slack_id):
            continue
        profile = given.teller.directory.profile_of(member)
        if profile is None:
            people.append(escape(member))
        elif not profile.deleted:
            people.append(inert(profile.labelled))
    return listed(people) or "the WardKey admins"


def _break_glass_hint(view: RequestSnapshot, policy: Policy) -> str:
    """The exact break-glass command for this access, where the role allows it."""
    target = policy.targets.get(view.target)
    role = target.roles.get(view.role) if target else None
    if role is None or not role.break_glass:
        return "Break-glass is not allowed for this access."
    return (
        "If patients are at risk now, use break-glass: "
        f"`/breakglass {view.target}:{view.role} what is happening, in a few words`. It "
        "gives you the access at once, alerts security and is reviewed afterwards."
    )


def _no_escalation(view: RequestSnapshot, policy: Policy) -> str:
    if rules.escalation_members(policy, view.path):
        return "Nobody in the escalation group could be reached in Slack either."
    return f"The {view.path} path has no escalation group to send it to."


def _reached_names(teller: Teller, reached: list[str]) -> str:
    return listed([teller.names.channel(c) for c in reached])


def _plain_name(teller: Teller, channel: str) -> str:
    """Who a message was addressed to, in plain words for the audit trail and alerts."""
    directory = teller.directory
    name = directory.name_of("", channel) if channel[:1] in "UW" else None
    if name:
        return name
    channel_name = directory.channel_name(channel) if channel[:1] in "CG" else None
    return f"#{channel_name}" if channel_name else channel


# Slack's permanent refusals, in words for the people who must fix them.
_REFUSALS = {
    "user_not_found": "no such user",
    "users_not_found": "no such user",
    "account_inactive": "account deactivated",
    "user_disabled": "account deactivated",
    "channel_not_found": "no such channel, or WardKey cannot see it",
    "is_archived": "the channel is archived",
    "not_in_channel": "WardKey is not in the channel",
    "cannot_dm_bot": "a bot account",
}


def _refusal_words(error: str | None) -> str:
    return _REFUSALS.get(error or "", (error or "refused").replace("_", " "))


NOTICES = (
    Telling("request.created", opened),
    Telling("extension.requested", opened),
    Telling("approval.reminded", overdue),
    Telling("approval.escalated", overdue),
    Telling("approval.unreachable", unreachable),
    Telling(ANY_OTHER_CHANGE, changed),
)

DRAWINGS = (
    Drawing("approvers_reached", approvers_reached),
    Drawing("escalated", escalated),
    Drawing("unreachable_alert", unreachable_alert),
    Drawing("unreachable_requester", unreachable_requester),
)
