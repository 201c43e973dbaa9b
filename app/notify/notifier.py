"""Who tells of every notice, and the teller's mechanics that every feature's telling uses.

Nothing here calls Slack to send. A change leaves a notice in the outbox, written in its own
transaction (by app/lifecycle/transitions.py for a request, by a feature's service for its own);
`expand` turns a notice into the Slack calls it causes, rendered from what it is about as it is
now (the same version or later), and the outbox (app/notify/outbox.py) sends each once, in
order, through Slack errors and outages.

- Every notice is told by the flows of the feature it belongs to, which declare who is told
  what (`NOTICES` in app/<feature>/flows.py, app/telling.py): a request's by the requests'
  and the grants' flows (app/requests/flows.py, app/grants/flows.py), the others' (the
  digest, standing access found, an attestation round or orphans, a break-glass use started,
  held or waiting, a break-glass review, a lockdown, a refused step-up sign-in) by theirs.
  They are gathered here in FEATURE_NOTICES, as are the messages they draw late
  (FEATURE_DRAWINGS), and given this notifier as their `Teller`, with the request core and
  the feature services (`NoticeDeps`), through which a feature's telling also asks another
  for its part (a vendor's sponsor told, a held break-glass use closed, a request's cards
  redrawn). Nothing here names what a feature says.
- The teller's mechanics: calls collected while a notice is told, posts and in-place updates,
  calls kept aside to go only if another is refused, calls recorded that no notice caused,
  messages drawn late from what became of the calls before them (`draw_late`), and App Homes
  drawn when sent (`draw_home`, the requests').

Listeners, after a change, only ask the outbox to deliver now (`deliver_now`).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from slack_sdk import WebClient
from slack_sdk.models.blocks import Block

from app.access import AccessService
from app.blockkit import DirectoryNames
from app.breakglass import flows as breakglass_flows
from app.digest import flows as digest_flows
from app.digest.service import DigestService
from app.directory import SlackDirectory
from app.grants import flows as grants_flows
from app.groups import path_groups
from app.identities import flows as identity_flows
from app.identities.service import IdentityService
from app.lifecycle.snapshots import RequestSnapshot
from app.lockdown import flows as lockdown_flows
from app.lockdown.service import Lockdowns
from app.notify.outbox import Outbox
from app.oncall import path_sources, unread_sources
from app.outbox_records import HOME, POST, UPDATE, Delivered, Notice, OutCall
from app.requests import flows as requests_flows
from app.reviews import flows as review_flows
from app.reviews.service import ReviewService
from app.standing import flows as standing_flows
from app.stepup import flows as stepup_flows
from app.telling import ANY_OTHER_CHANGE, Drawing, Teller, Telling

log = logging.getLogger(__name__)
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

    def tell_sponsor(self, view: RequestSnapshot) -> None:
        """A vendor's sponsor told of a use (app/identities/flows.py), for the requests' and
        break-glass's tellings."""
        identity_flows.tell_sponsor(view, self)

    def held_closed(self, view: RequestSnapshot) -> None:
        """A held break-glass use closed unconfirmed (app/breakglass/flows.py), for the
        requests' telling of its end."""
        breakglass_flows.held_closed(view, self)

    # Where a path's approvers came from (app/oncall, app/groups), for the requests' cards and
    # the alert when none could be reached.

    def on_call_from(self, path: str) -> list[str]:
        return path_sources(self.core.policy, path)

    def groups_from(self, path: str) -> list[str]:
        return path_groups(self.core.policy, path)

    def unread_rotas(self, path: str) -> list[str]:
        return unread_sources(self.core.policy, path)

    def refresh_homes(self, view: RequestSnapshot) -> None:
        """The homes a request concerns (app/requests/flows.py), for the grants' tellings."""
        requests_flows.refresh_homes(view, self)

    def request_changed(self, view: RequestSnapshot, notice: Notice) -> None:
        """A request's change told (app/requests/flows.py), for the grants' tellings."""
        requests_flows.request_changed(view, notice, self)


# Who is told what of every notice (each feature's flows.py, NOTICES), by action; the one
# declared for ANY_OTHER_CHANGE tells any other notice of a request. A feature's telling runs
# with NoticeDeps, so mypy checks here that NoticeDeps gives each what it needs.
FEATURE_NOTICES: tuple[Telling[NoticeDeps], ...] = (
    *requests_flows.NOTICES,
    *grants_flows.NOTICES,
    *digest_flows.NOTICES,
    *breakglass_flows.NOTICES,
    *standing_flows.NOTICES,
    *identity_flows.NOTICES,
    *review_flows.NOTICES,
    *lockdown_flows.NOTICES,
    *stepup_flows.NOTICES,
)
_TELLINGS = {telling.action: telling for telling in FEATURE_NOTICES}
# The messages the features' tellings draw late (DRAWINGS in their flows.py), by `draw`.
FEATURE_DRAWINGS: tuple[Drawing[NoticeDeps], ...] = (*requests_flows.DRAWINGS,)
_DRAWINGS = {drawing.draw: drawing for drawing in FEATURE_DRAWINGS}


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
    # The teller's side (app/telling.py `Teller`): what the features' flows use to have
    # messages sent. Nothing is sent at once: the calls are collected, for the outbox to send.

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

    def redraw_home(self, user_id: str) -> None:
        """This person's App Home, drawn when its turn comes (`draw_home`)."""
        self._emit(OutCall(HOME, {"user_id": user_id}))

    def draw_later(self, about: str, draw: str, args: Mapping[str, Any]) -> None:
        """A message drawn when its turn comes (`draw_late`), by the Drawing for `draw`."""
        self._emit(OutCall(LATE, {"draw": draw, **args}, about=about, late=True))

    # ------------------------------------------------------------------ notices

    def expand(self, notice: Notice) -> list[OutCall]:
        """The Slack calls a notice causes, rendered from what it is about as it is now, by
        the flows of the feature it belongs to (FEATURE_NOTICES)."""
        with self._collecting() as calls:
            telling = _TELLINGS.get(notice.action)
            if telling is None and notice.request_id is not None:
                telling = _TELLINGS.get(ANY_OTHER_CHANGE)
            if telling is not None:
                telling.tell(notice, self.notice_deps)
            else:
                log.error("event=notice_unknown action=%s id=%s", notice.action, notice.id)
        return calls

    def draw_late(self, call: OutCall, before: Sequence[Delivered]) -> OutCall | None:
        """A message drawn when its turn comes, from what became of the calls before it in
        its group (`before`), by the feature that asked for it (FEATURE_DRAWINGS): it counts
        and names only what Slack took."""
        drawing = _DRAWINGS.get(str(call.args.get("draw")))
        if drawing is None:
            log.error("event=drawing_unknown draw=%s", call.args.get("draw"))
            return None
        with self._collecting() as calls:
            drawing.make(call.args, before, self.notice_deps)
        return calls[0] if calls else None

    def draw_home(self, user_id: str) -> dict[str, Any] | None:
        """This user's App Home as it is now (the requests'), or None if they may not use
        WardKey."""
        return requests_flows.draw_home(user_id, self.notice_deps)

    def publish_home(self, user_id: str) -> None:
        """Redraw this user's App Home (drawn when sent, so it shows the latest state)."""
        self.outbox.enqueue_home(user_id)

    def home_opened(self, user_id: str) -> None:
        self.service.remember_home_opened(user_id)
        self.publish_home(user_id)

    @property
    def zone(self) -> ZoneInfo:
        return self.service.policy.zone

    def slack_ids(
        self, view: RequestSnapshot, members: list[str], missing: list[str] | None = None
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

    # ------------------------------------------------------------------ after a change

    def deliver_now(self) -> None:
        """A change was committed, and its notice is already in the outbox (written with it):
        deliver it now rather than at the outbox's next turn. Listeners call this after a
        change; sweeps kick the outbox themselves. Who is told what is the notice's telling."""
        self.outbox.kick()
