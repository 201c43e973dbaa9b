"""Every notice to whoever tells of it, and the request core's own messages: approver cards,
in-place card updates, the requester's DMs and App Homes.

Nothing here calls Slack to send. A change leaves a notice in the outbox, written in its own
transaction (by app/lifecycle/transitions.py for a request, by a feature's service for its own);
`expand` turns a notice into the Slack calls it causes, rendered from what it is about as it is
now (the same version or later), and the outbox (app/notify/outbox.py) sends each once, in
order, through Slack errors and outages.

- A feature's notice (the digest, standing access found, an attestation round or orphans, a
  break-glass use started, held or waiting, a break-glass review, a lockdown, a refused step-up
  sign-in) is told by that feature's flows, which declare who is told what (`NOTICES` in
  app/<feature>/flows.py, app/telling.py); they are gathered here in FEATURE_NOTICES and given
  this notifier as their `Teller`, with the feature services (`NoticeDeps`). Nothing here names
  what a feature says.
- A request's notice is told here (the request and grant core's messages); the features'
  flows are asked for their part of it: a vendor's sponsor told of the outcome
  (app/identities/flows.py), a held break-glass use's cards and line closed
  (app/breakglass/flows.py).
- The teller's mechanics: calls collected while a notice is told, posts and in-place updates,
  calls kept aside to go only if another is refused, calls recorded that no notice caused,
  messages drawn late from what became of the calls before them (`draw_late`), and App Homes
  drawn when sent (`draw_home`).

The public methods that listeners and sweeps call after a change only ask the outbox to deliver
now.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.models.blocks import Block

from app.access import AccessService
from app.blockkit import DirectoryNames, escape, inert
from app.breakglass import flows as breakglass_flows
from app.digest import flows as digest_flows
from app.digest.service import DigestService
from app.directory import SlackDirectory, slack_unwell
from app.grants.messages import expiry_warning, outcome_line
from app.groups import path_groups
from app.identities import flows as identity_flows
from app.identities.service import IdentityService
from app.lifecycle.errors import NotAllowed
from app.lifecycle.snapshots import RequestView
from app.lockdown import flows as lockdown_flows
from app.lockdown.service import Lockdowns
from app.notify.outbox import Delivered, Outbox
from app.oncall import path_sources, unread_sources
from app.outbox_records import HOME, POST, UPDATE, Notice, OutCall
from app.policy import rules
from app.policy.durations import format_duration
from app.policy.model import BREAK_GLASS_PATH
from app.requests.messages import (
    CardContext,
    approver_card,
    home_view,
    requester_receipt,
)
from app.reviews import flows as review_flows
from app.reviews.service import ReviewService
from app.standing import flows as standing_flows
from app.stepup import flows as stepup_flows
from app.store.models import RequestState
from app.telling import Teller, Telling
from app.wording import clock_time, listed, plural

log = logging.getLogger(__name__)
CARD = "approver_card"
# A shift: an App Home opened within it is redrawn live as things change.
HOME_LIVE_FOR = timedelta(hours=12)
# States a request passes through on its way somewhere (the grant or revoke is under way):
# nobody is told of them; they are told where it lands.
PASSING = frozenset(
    {RequestState.APPROVED.value, RequestState.GRANTING.value, RequestState.REVOKING.value}
)
# The requester's own DM about their request (Cancel on it while it waits).
RECEIPT = "requester_receipt"
# A call drawn when its turn comes, from what became of the calls before it (`draw_late`).
LATE = "late"
# One outbox per service (so per process): every Notifier built on it shares its delivery.
_OUTBOXES: weakref.WeakKeyDictionary[AccessService, Outbox] = weakref.WeakKeyDictionary()
_OUTBOXES_LOCK = threading.Lock()


def _json_blocks(blocks: Sequence[Block] | None) -> list[dict[str, Any]] | None:
    if blocks is None:
        return None
    return [b.to_dict() if isinstance(b, Block) else dict(b) for b in blocks]


def delivery_client(client: WebClient) -> WebClient:
    """The same Slack, without the SDK's own retries: the outbox retries (a retried post
    whose answer was lost would be posted twice) and honours Retry-After without blocking."""
    return WebClient(
        token=client.token,
        base_url=client.base_url,
        timeout=min(client.timeout, 10),
        retry_handlers=[],
    )


@dataclass(frozen=True)
class NoticeDeps:
    """What the features' tellings are given (each feature's flows.py `Needs`): the teller
    (this notifier: posts, updates, names, the time zone), the request core (`core`) and this
    process's feature services, which each notice is read again from when it is told."""

    teller: Teller
    core: AccessService
    digests: DigestService
    identities: IdentityService
    reviews: ReviewService
    lockdowns: Lockdowns

    def tell_sponsor(self, view: RequestView) -> None:
        """A vendor's sponsor told of a use (app/identities/flows.py), for break-glass's
        telling of one."""
        identity_flows.tell_sponsor(view, self)


# Who is told what of every feature's notices (each feature's flows.py, NOTICES), by action. A
# feature's telling runs with NoticeDeps, so mypy checks here that NoticeDeps gives each what it
# needs.
FEATURE_NOTICES: tuple[Telling[NoticeDeps], ...] = (
    *digest_flows.NOTICES,
    *breakglass_flows.NOTICES,
    *standing_flows.NOTICES,
    *identity_flows.NOTICES,
    *review_flows.NOTICES,
    *lockdown_flows.NOTICES,
    *stepup_flows.NOTICES,
)
_TELLINGS = {telling.action: telling for telling in FEATURE_NOTICES}


class Notifier:
    def __init__(
        self,
        client: WebClient,
        service: AccessService,
        directory: SlackDirectory,
        outbox: Outbox | None = None,
        *,
        digests: DigestService | None = None,
        identities: IdentityService | None = None,
        reviews: ReviewService | None = None,
    ) -> None:
        """`digests`: the process's digest service, which a digest is read again from when
        it is sent; `identities`: its service-account service, which an attestation round is
        read from (None: each one on `service`, as in tests and the demo).
        `reviews`: its break-glass review service, which review cards are drawn from
        (None: one on `service`)."""
        self.client = client
        self.service = service
        self.directory = directory
        self.names = DirectoryNames(directory)  # people by name, channels by name
        self.notice_deps = NoticeDeps(
            self,
            service,
            digests or DigestService(service),
            identities or IdentityService(service),
            reviews or ReviewService(service),
            Lockdowns(service),
        )
        self._out = threading.local()
        self.outbox = outbox or self._shared_outbox()

    def _shared_outbox(self) -> Outbox:
        """This service's outbox: in a process (its claims renewed by a heartbeat) a thread
        delivers; in tests and the demo a kick delivers at once on the caller's thread."""
        with _OUTBOXES_LOCK:
            found = _OUTBOXES.get(self.service)
            if found is None:
                service = self.service
                found = Outbox(
                    self.service.db,
                    self.service.clock,
                    delivery_client(self.client),
                    self,
                    background=self.service.heartbeat is not None,
                    # The policy in force when the message is sent (it may be reloaded).
                    security_channel=lambda: service.policy.channels.security_alerts,
                )
                _OUTBOXES[self.service] = found
            return found

    # ------------------------------------------------------------------ recording calls
    # The teller's side (app/telling.py `Teller`): what the request core here and the
    # features' flows use to have messages sent. Nothing is sent at once: the calls are
    # collected, for the outbox to send.

    @contextmanager
    def _collecting(self) -> Iterator[list[OutCall]]:
        """Calls made inside are collected here; those collected around it, if any, are
        collected again after."""
        outer = getattr(self._out, "calls", None)
        calls: list[OutCall] = []
        self._out.calls = calls
        try:
            yield calls
        finally:
            self._out.calls = outer

    def _emit(self, call: OutCall) -> None:
        calls: list[OutCall] | None = getattr(self._out, "calls", None)
        if calls is None:
            raise RuntimeError("a Slack message rendered outside the outbox")
        calls.append(call)

    def post(
        self,
        about: str,
        channel: str,
        text: str,
        blocks: Sequence[Block] | None = None,
        *,
        remember: tuple[int, str] | None = None,
        thread_ts: str | None = None,
        instead: list[OutCall] | None = None,
        as_addressed: bool = False,
    ) -> None:
        """One message, sent on its own: one Slack refuses for good (an archived channel, a
        removed user) is logged as `about` and never stops the others; `instead` is sent
        then (a gone security channel: the admins)."""
        args: dict[str, Any] = {"channel": channel, "text": text}
        if blocks is not None:
            args["blocks"] = _json_blocks(blocks)
        if thread_ts is not None:
            args["thread_ts"] = thread_ts
        self._emit(
            OutCall(
                POST, args, remember, about=about, as_addressed=as_addressed, instead=instead or []
            )
        )

    def update(
        self, channel: str, ts: str, text: str, blocks: Sequence[Block] | None = None
    ) -> None:
        """A posted message, redrawn in place (one Slack refuses is logged, not fatal)."""
        args: dict[str, Any] = {"channel": channel, "ts": ts, "text": text}
        if blocks is not None:
            args["blocks"] = _json_blocks(blocks)
        self._emit(OutCall(UPDATE, args))

    def update_in_place(
        self, request_id: int, purpose: str, text: str, blocks: Sequence[Block]
    ) -> None:
        """Every posted copy of a card, updated (a copy Slack refuses is logged, not fatal)."""
        for channel, ts in self.service.messages_of(request_id, purpose):
            self.update(channel, ts, text, blocks)

    def aside(self) -> AbstractContextManager[list[OutCall]]:
        """Calls rendered to be sent only if another is refused."""
        return self._collecting()

    @contextmanager
    def recording(self, lane: str, key: str | None = None) -> Iterator[None]:
        """Calls made inside, which no notice caused, recorded in the outbox in `lane` (and
        delivered); `key`: see Outbox.enqueue."""
        with self._collecting() as calls:
            yield
        self.outbox.enqueue(lane, calls, key=key)

    # ------------------------------------------------------------------ notices

    def expand(self, notice: Notice) -> list[OutCall]:
        """The Slack calls a notice causes, rendered from what it is about as it is now: a
        feature's notice by that feature's flows (FEATURE_NOTICES), the request core's here."""
        with self._collecting() as calls:
            telling = _TELLINGS.get(notice.action)
            if telling is not None:
                telling.tell(notice, self.notice_deps)
            elif notice.request_id is not None:
                self._request_notice(notice)
            else:
                log.error("event=notice_unknown action=%s id=%s", notice.action, notice.id)
        return calls

    # Notices that say something whatever state they lead to; any other notice of a passing
    # state (or of a takeover) tells nobody, and is settled without reading the request.
    _TOLD_ANYWAY = frozenset(
        {
            "request.created",
            "extension.requested",
            "approval.reminded",
            "approval.escalated",
            "approval.unreachable",
            "expiry.warned",
            "access.extended",
        }
    )

    def _request_notice(self, notice: Notice) -> None:
        assert notice.request_id is not None
        action = notice.action
        if action not in self._TOLD_ANYWAY and (
            notice.to in PASSING or action.endswith(".taken_over")
        ):
            return  # a revoke or grant under way: told where it lands (a wave of expiries
            # would otherwise read every request twice for nothing)
        view = self.service.get(notice.request_id)
        if action in ("request.created", "extension.requested"):
            self._request_opened(view)
        elif action in ("approval.reminded", "approval.escalated"):
            self._approval_overdue(view, 2 if action == "approval.escalated" else 1)
        elif action == "approval.unreachable":
            self._approvers_unreachable(view)
        elif action == "expiry.warned":
            self._expiry_warning(view)
        elif action == "access.extended" and notice.actor == view.requester:
            self.refresh_homes(view)  # extended without approval: the holder was answered
        elif notice.to in PASSING or action.endswith(".taken_over"):
            return
        elif view.path == BREAK_GLASS_PATH and action == "grant.succeeded":
            return  # the break-glass alert says it
        else:
            if (
                view.path == BREAK_GLASS_PATH
                and notice.facts.get("from") == RequestState.PENDING.value
            ):
                # held, then timed out or cancelled
                breakglass_flows.held_closed(view, self.notice_deps)
            self._request_changed(view, notice)

    def draw_home(self, user_id: str) -> dict[str, Any] | None:
        """This user's App Home as it is now, or None if they may not use WardKey."""
        try:
            person = self.directory.person(user_id)
        except NotAllowed:
            return None
        service = self.service
        mine = service.requests_of(
            person,
            (
                RequestState.PENDING,
                RequestState.APPROVED,
                RequestState.GRANTING,
                RequestState.ACTIVE,
            ),
        )
        high_risk = frozenset(
            name for name, p in service.policy.paths.items() if p.risk in ("high", "critical")
        )
        return home_view(
            active=[v for v in mine if v.state == RequestState.ACTIVE],
            pending=[v for v in mine if v.state != RequestState.ACTIVE or v.extension is not None],
            to_decide=service.awaiting_decision_by(person, limit=10),
            now=service.clock.now(),
            zone=self.zone,
            high_risk_paths=high_risk,
            names=self.names,
        )

    # ------------------------------------------------------------------ after a change
    # Listeners call these once the change is committed; its notice is already in the outbox,
    # so they only ask for delivery now (sweeps kick the outbox themselves).

    def request_opened(self, view: RequestView) -> None:
        self.outbox.kick()

    def request_changed(self, view: RequestView) -> None:
        self.outbox.kick()

    def request_received(self, view: RequestView) -> None:
        """DM the requester what they asked for, with Cancel while it waits; every later
        change updates it in place. Recorded once per request, however often this is asked
        (a redelivered form), behind the request's own notices."""
        if not view.requester_slack_id:
            return
        text, blocks = requester_receipt(view, self.zone)
        args = {
            "channel": view.requester_slack_id,
            "text": text,
            "blocks": _json_blocks(blocks),
        }
        call = OutCall(POST, args, (view.id, RECEIPT), about=f"receipt request={view.id}")
        self.outbox.enqueue(f"request:{view.id}", [call], key=f"receipt:{view.id}")

    def update_cards(self, view: RequestView) -> None:
        self.outbox.kick()

    def break_glass_started(self, view: RequestView) -> None:
        self.outbox.kick()

    def review_decided(self, view: RequestView) -> None:
        self.outbox.kick()

    @property
    def zone(self) -> ZoneInfo:
        return self.service.policy.zone

    def _context(self, view: RequestView) -> CardContext:
        name, title = view.requester, ""
        if view.requester_slack_id:
            try:
                profile = self.directory.profile(view.requester_slack_id)
                name, title = profile.name, profile.title
            except SlackApiError as exc:
                if slack_unwell(exc):
                    raise  # the card is rendered again when Slack answers
                log.warning(
                    "event=profile_lookup_failed user=%s error=%s",
                    view.requester_slack_id,
                    exc.response.get("error"),
                )
        now = self.service.clock.now()
        others = tuple(
            f"{v.target}:{v.role} until {clock_time(v.expires_at, self.zone)}"
            for v in self.service.requests_of_key(view.requester, (RequestState.ACTIVE,))
            if v.id != view.id
        )
        path = self.service.policy.paths.get(view.path)
        return CardContext(
            requester_name=name,
            requester_title=title,
            risk=path.risk if path else "unknown",
            elevations_30_days=self.service.elevations_since(
                view.requester, now - timedelta(days=30)
            ),
            other_active=others,
            zone=self.zone,
            names=self.names,
            on_call_from=tuple(path_sources(self.service.policy, view.path)),
            groups_from=tuple(path_groups(self.service.policy, view.path)),
            step_up=path.step_up if path else False,
        )

    def slack_ids(
        self, view: RequestView, members: list[str], missing: list[str] | None = None
    ) -> list[str]:
        """Slack user IDs of policy members who can read and act on a message, never the
        requester. Members Slack does not know, and deactivated, guest and bot accounts (Slack
        takes a message to a deactivated account, and nobody reads it), are logged and left
        out; `missing` collects why, in words."""
        found: list[str] = []
        for member in members:
            if member in (view.requester, view.requester_slack_id, view.requester_email):
                continue
            user_id = self.directory.user_id_for(member)
            if user_id == view.requester_slack_id and user_id is not None:
                continue
            profile = self.directory.profile_of(member) if user_id is not None else None
            if profile is None:
                log.warning("event=approver_not_in_slack member=%s request=%s", member, view.id)
                if missing is not None:
                    missing.append(f"{member} has no account in this Slack workspace")
            elif not profile.can_act:
                log.warning("event=member_cannot_act member=%s request=%s", member, view.id)
                if missing is not None:
                    what = "deactivated" if profile.deleted else "a guest or bot account"
                    missing.append(f"{profile.name}'s Slack account is {what}")
            else:
                found.append(profile.user_id)
        return found

    def _who_to_call(self, view: RequestView) -> str:
        """The people a requester can phone when Slack reaches no approver: the path's
        escalation group, else the WardKey admins, by name and title as Slack has them."""
        policy = self.service.policy
        members = rules.escalation_members(policy, view.path) or rules.group_members(
            policy, policy.admins
        )
        people: list[str] = []
        for member in members:
            if member in (view.requester, view.requester_email, view.requester_slack_id):
                continue
            profile = self.directory.profile_of(member)
            if profile is None:
                people.append(escape(member))
            elif not profile.deleted:
                people.append(inert(profile.labelled))
        return listed(people) or "the WardKey admins"

    def _request_opened(self, view: RequestView) -> None:
        """Send the card to every approver on duty now (DM) and to the path's channel. Once
        Slack has answered for each, a check: if it took none (nobody on duty has a current
        Slack account, or every card was refused for good), no approver can be reached and
        the service escalates at once (`approval.unreachable`)."""
        now = self.service.clock.now()
        blocks = approver_card(view, self._context(view))
        who = self.names.person(view.requester, view.requester_slack_id)
        text = f"Access request #{view.id}: {view.target}:{view.role} for {who}"
        approvers = rules.approvers_at(self.service.policy, view.path, now)
        if view.sponsor is not None and view.extension is None:
            approvers.append(view.sponsor)  # a vendor's sponsor must approve too
        missing: list[str] = []
        channels = list(dict.fromkeys(self.slack_ids(view, approvers, missing)))
        path = self.service.policy.paths.get(view.path)
        if path is not None and path.channel:
            channels.append(path.channel)
        for channel in channels:
            self.post(f"card request={view.id}", channel, text, blocks, remember=(view.id, CARD))
        if not channels:
            log.error("event=no_approver_reachable request=%s path=%s", view.id, view.path)
            if not approvers:
                missing.append(f"nobody is on duty to approve the {view.path} path")
                missing.extend(unread_sources(self.service.policy, view.path))
        late = {"draw": "approvers_reached", "request_id": view.id, "missing": missing}
        self._emit(OutCall(LATE, late, about=f"approvers_reached request={view.id}", late=True))
        # A quick approver's decision is a later notice of this request: it is delivered after
        # these posts, so it updates every copy.
        self.refresh_homes(view)

    def _approval_overdue(self, view: RequestView, level: int) -> None:
        """Half the SLA: remind the approvers on duty. The whole SLA: the card goes to the
        escalation group too, every copy says "escalated", and the requester is told."""
        policy, now = self.service.policy, self.service.clock.now()
        waited = format_duration(max(timedelta(0), now - view.created_at))
        on_duty = self.slack_ids(view, rules.approvers_at(policy, view.path, now))
        if level < 2:
            for user_id in on_duty:
                self.post(
                    f"reminder request={view.id}",
                    user_id,
                    f"⏰ Reminder: request #{view.id} (`{view.target}:{view.role}` for "
                    f"{self.names.person(view.requester, view.requester_slack_id)}) has waited "
                    f"{waited}. Its card, with Approve "
                    "and Deny, is in your messages.",
                )
            return
        blocks = approver_card(view, self._context(view))
        escalated_to = 0
        for user_id in self.slack_ids(view, rules.escalation_members(policy, view.path)):
            if user_id in on_duty:  # they have the card already
                continue
            self.post(
                f"escalation request={view.id}",
                user_id,
                f"Escalated: access request #{view.id} has waited {waited} for approval",
                blocks,
                remember=(view.id, CARD),
            )
            escalated_to += 1
        self._update_cards(view)
        if escalated_to == 0:
            log.error("event=no_escalation_reachable request=%s path=%s", view.id, view.path)
        if view.requester_slack_id:
            # Drawn once Slack has answered for each escalated card: it names only those it took.
            late = {
                "draw": "escalated",
                "request_id": view.id,
                "waited": waited,
                "asked": escalated_to,  # cards sent to more approvers (Slack may refuse some)
            }
            self._emit(OutCall(LATE, late, about=f"escalation request={view.id}", late=True))

    def _break_glass_hint(self, view: RequestView) -> str:
        """The exact break-glass command for this access, where the role allows it."""
        target = self.service.policy.targets.get(view.target)
        role = target.roles.get(view.role) if target else None
        if role is None or not role.break_glass:
            return "Break-glass is not allowed for this access."
        return (
            "If patients are at risk now, use break-glass: "
            f"`/breakglass {view.target}:{view.role} what is happening, in a few words`. It "
            "gives you the access at once, alerts security and is reviewed afterwards."
        )

    def _approvers_unreachable(self, view: RequestView) -> None:
        """No approver could be reached: the card goes at once to the escalation group (the
        escalation sweep's targets), then security and every WardKey admin are alerted, then
        the requester is told what happened and what they can do. The alerts and the
        requester's message are drawn once Slack has answered for the cards, so each says
        only who really has the request."""
        policy = self.service.policy
        if view.state == RequestState.PENDING or view.extension is not None:
            blocks = approver_card(view, self._context(view))
            text = (
                f"⚠️ Access request #{view.id}: no {view.path} approver could be reached in "
                "Slack, so it comes to you at once"
            )
            for user_id in self.slack_ids(view, rules.escalation_members(policy, view.path)):
                self.post(
                    f"unreachable request={view.id}",
                    user_id,
                    text,
                    blocks,
                    remember=(view.id, CARD),
                )
        self._update_cards(view)
        about = f"unreachable request={view.id}"
        alert = {"draw": "unreachable_alert", "request_id": view.id}
        self._emit(
            OutCall(
                LATE, {**alert, "channel": policy.channels.security_alerts}, about=about, late=True
            )
        )
        for user_id in self.slack_ids(view, rules.group_members(policy, policy.admins)):
            self._emit(OutCall(LATE, {**alert, "channel": user_id}, about=about, late=True))
        if view.requester_slack_id:
            told = {"draw": "unreachable_requester", "request_id": view.id}
            self._emit(OutCall(LATE, told, about=about, late=True))
        self.refresh_homes(view)

    # ------------------------------------------------------------------ drawn late

    def draw_late(self, call: OutCall, before: Sequence[Delivered]) -> OutCall | None:
        """A message drawn when its turn comes, from what became of the calls before it in
        its group (`before`): it counts and names only what Slack took."""
        args = call.args
        request_id = int(args["request_id"])
        cards = [d for d in before if d.call.remember and d.call.remember[1] == CARD]
        reached = [str(d.call.args["channel"]) for d in cards if d.sent]
        draw = args["draw"]
        if draw == "approvers_reached":
            if reached:  # the usual case: nothing to say, and no need to read the request
                return None
            why = list(args.get("missing") or [])
            why += [
                f"Slack refused the card to {self._plain_name(str(d.call.args['channel']))} "
                f"({_refusal_words(d.error)})"
                for d in cards
            ]
            reason = "; ".join(why) or "nobody could be reached"
            if self.service.approvers_unreachable(request_id, reason) is not None:
                log.error("event=approval_unreachable request=%s why=%s", request_id, reason)
            return None
        view = self.service.get(request_id)
        with self._collecting() as calls:
            if draw == "escalated":
                asked = int(args.get("asked") or 0)
                self._tell_escalated(view, reached, str(args.get("waited") or ""), asked)
            elif draw == "unreachable_alert":
                self._unreachable_alert(view, reached, str(args["channel"]))
            elif draw == "unreachable_requester":
                self._unreachable_requester(view, reached, before)
        return calls[0] if calls else None

    def _plain_name(self, channel: str) -> str:
        """Who a message was addressed to, in plain words for the audit trail and alerts."""
        name = self.directory.name_of("", channel) if channel[:1] in "UW" else None
        if name:
            return name
        channel_name = self.directory.channel_name(channel) if channel[:1] in "CG" else None
        return f"#{channel_name}" if channel_name else channel

    def _no_escalation(self, view: RequestView) -> str:
        if rules.escalation_members(self.service.policy, view.path):
            return "Nobody in the escalation group could be reached in Slack either."
        return f"The {view.path} path has no escalation group to send it to."

    def _reached_names(self, reached: list[str]) -> str:
        return listed([self.names.channel(c) for c in reached])

    def _tell_escalated(
        self, view: RequestView, reached: list[str], waited: str, asked: int
    ) -> None:
        """The requester hears who the card reached, by name; if nobody further, what to do."""
        if view.requester_slack_id is None or view.state != RequestState.PENDING:
            return  # decided meanwhile: that outcome is its own message
        if reached:
            text = (
                f"Your request #{view.id} has waited {waited}, so it has been escalated to "
                f"{self._reached_names(reached)} too."
            )
        else:
            nobody = (
                "nobody further could be reached in Slack"
                if asked
                else "there is nobody further to escalate it to"
            )
            text = (
                f"Your request #{view.id} has waited {waited} and {nobody}. Phone "
                f"{self._who_to_call(view)}. {self._break_glass_hint(view)}"
            )
        self.post(f"escalation request={view.id}", view.requester_slack_id, text)

    def _unreachable_alert(self, view: RequestView, reached: list[str], channel: str) -> None:
        why = self.service.unreachable_reason(view.id)
        who = self.names.person(view.requester, view.requester_slack_id)
        if reached:
            escalated = f"It was escalated at once to {self._reached_names(reached)}."
        elif view.state == RequestState.PENDING:
            escalated = self._no_escalation(view)
        else:
            escalated = f"It is no longer waiting: {outcome_line(view, self.zone, self.names)}."
        self.post(
            f"unreachable request={view.id}",
            channel,
            f"🚨 No approver could be reached for request #{view.id}: {who} asked for "
            f"`{view.target}:{view.role}` ({format_duration(view.extension or view.requested)}, "
            f"{view.path} path): “{inert(view.reason)[:300]}”. Why: {inert(why)[:800]}. "
            f"{escalated} Check the approvers the policy names for the {view.path} path "
            "against Slack (`wardkey policy check --slack`).",
        )

    def _unreachable_requester(
        self, view: RequestView, reached: list[str], before: Sequence[Delivered]
    ) -> None:
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
            lines.append(f"It has gone straight to {self._reached_names(reached)} instead.")
        else:
            lines.append(self._no_escalation(view))
        alerted = [
            self.names.channel(str(d.call.args["channel"]))
            for d in before
            if d.sent and d.call.args.get("draw") == "unreachable_alert"
        ]
        if alerted:
            lines.append(f"WardKey has alerted {listed(alerted)}.")
        lines.append("*What you can do now*")
        if view.state == RequestState.ACTIVE:
            until = clock_time(view.expires_at, self.zone)
            lines.append(f"• Your access carries on until {until}.")
        else:
            lines.append(f"• {self._break_glass_hint(view)}")
        lines.append(f"• Phone {self._who_to_call(view)}.")
        self.post(f"unreachable request={view.id}", view.requester_slack_id, "\n".join(lines))

    def _request_changed(self, view: RequestView, notice: Notice) -> None:
        """Update every copy of the card in place (as it is now), tell the requester what
        happened (as of this notice) and redraw the homes it concerns; a failed revoke also
        alerts the security channel, at every failed try."""
        to = RequestState(notice.to or view.state)
        attempts = int(notice.facts.get("revoke_attempts") or view.revoke_attempts)
        if to == RequestState.REVOKE_FAILED:
            self.revoke_failed(view, attempts)
            if attempts > 1:
                return  # card and requester were told at the first failure
        if to == RequestState.GRANT_FAILED:
            self.grant_failed(view)  # the card and the requester's DM say admins are told
        self._update_cards(view)
        if not (notice.action == "request.cancelled" and view.cancelled_by_requester):
            # (A requester who cancelled was answered where they did it: the reply to
            # /jit cancel or /breakglass, their DM about it updated in place, their home.)
            self.tell_requester(view if view.state == to else replace(view, state=to))
        self.refresh_homes(view)

    def _update_cards(self, view: RequestView) -> None:
        """Every copy of the approver card, and the requester's own DM about the request,
        updated in place."""
        blocks = approver_card(view, self._context(view))
        text = f"Access request #{view.id}: {outcome_line(view, self.zone, self.names)}"
        self.update_in_place(view.id, CARD, text, blocks)
        receipt_text, receipt = requester_receipt(view, self.zone, self.names)
        self.update_in_place(view.id, RECEIPT, receipt_text, receipt)

    def _expiry_warning(self, view: RequestView) -> None:
        """DM the holder before the end: Extend (where the path allows) and Done, revoke now."""
        if not view.requester_slack_id:
            return
        self.post(
            f"expiry_warning request={view.id}",
            view.requester_slack_id,
            f"Your access to {view.target}:{view.role} ends at "
            f"{clock_time(view.expires_at, self.zone)}",
            expiry_warning(view, self.service.clock.now(), self.zone),
        )

    def grant_failed(self, view: RequestView) -> None:
        """An approved request the target would not grant: the security channel and every
        WardKey admin hear of it, so someone fixes the target and the person is not left
        waiting for access that is not coming."""
        policy = self.service.policy
        text = (
            f"⚠️ Grant failed: #{view.id} `{view.target}:{view.role}` for "
            f"{self.names.person(view.requester, view.requester_slack_id)} was approved, but "
            "the target did not grant it: "
            f"{inert(view.grant_detail or 'no detail')[:500]}. The requester has been told. "
            "Check the target; once it is fixed they can ask again."
        )
        about = f"grant_failed request={view.id}"
        self.post(about, policy.channels.security_alerts, text)
        admins = self.slack_ids(view, rules.group_members(policy, policy.admins))
        for user_id in admins:
            self.post(about, user_id, text)
        if not admins:  # the card says admins are told: make it loud that none could be
            log.error("event=no_admin_reachable request=%s", view.id)
            self.post(
                about,
                policy.channels.security_alerts,
                f"⚠️ No WardKey admin could be reached in Slack about #{view.id}: check the "
                "policy's admins group.",
            )

    def revoke_failed(self, view: RequestView, attempts: int) -> None:
        policy = self.service.policy
        text = (
            f"🚨 Revoke failed: #{view.id} `{view.target}:{view.role}` for "
            f"{escape(view.account)} is still in place on the target after "
            f"{plural(attempts, 'attempt')}: {escape(view.revoke_detail or 'no detail')}. "
            "WardKey keeps retrying; check the target, and once access is gone a WardKey "
            f'admin can run `wardkey revoke resolve {view.id} "what you checked"`.'
        )
        about = f"revoke_failed request={view.id}"
        # The card says security is alerted: with the channel gone, the admins are.
        with self.aside() as admins:
            for user_id in self.slack_ids(view, rules.group_members(policy, policy.admins)):
                self.post(about, user_id, text)
        self.post(about, policy.channels.security_alerts, text, instead=admins)

    def publish_home(self, user_id: str) -> None:
        """Redraw this user's App Home (drawn when sent, so it shows the latest state)."""
        self.outbox.enqueue_home(user_id)

    def home_opened(self, user_id: str) -> None:
        self.service.remember_home_opened(user_id)
        self.publish_home(user_id)

    def refresh_homes(self, view: RequestView) -> None:
        """Redraw the homes of everyone a change concerns (requester and approvers on duty) who
        looked at theirs recently. The others' are drawn fresh when they next open them, which
        spares Slack's views.publish limit and the work in a wave of requests."""
        users = {view.requester_slack_id} if view.requester_slack_id else set()
        for member in rules.approvers_at(self.service.policy, view.path, self.service.clock.now()):
            user_id = self.directory.user_id_for(member)
            if user_id:
                users.add(user_id)
        for user_id in sorted(self.service.recent_home_viewers(users, HOME_LIVE_FOR)):
            self._emit(OutCall(HOME, {"user_id": user_id}))

    def tell_requester(self, view: RequestView) -> None:
        if view.requester_slack_id:
            self.post(
                f"outcome request={view.id}",
                view.requester_slack_id,
                f"Your request #{view.id} for `{view.target}:{view.role}`: "
                f"{outcome_line(view, self.zone, self.names)}",
            )
        identity_flows.tell_sponsor(view, self.notice_deps)


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
