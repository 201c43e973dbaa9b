"""Approve and Deny buttons on approver cards, the deny-reason dialog, and the requester's
Cancel (on their DM about the request, the reply to /jit request, and the App Home).

A valid signature proves Slack sent the click, not that the clicker may decide: the service
checks the clicker against the approvers of the path at this instant (or, for Cancel, against
the request's requester), loading the request from the database. The button's value is only the
request number.
"""

from __future__ import annotations

import json
from typing import Any

from slack_bolt import Ack, App, BoltContext, Respond
from slack_sdk import WebClient

from app.lifecycle.errors import AlreadyDecided
from app.messages.blocks import APPROVE_ACTION, CANCEL_ACTION, DENY_ACTION, clock_time
from app.messages.views import (
    DENY_BLOCK,
    DENY_INPUT,
    DENY_VIEW,
    HOME_EXTEND,
    HOME_EXTEND_BY,
    HOME_REVOKE,
    deny_modal,
)
from app.slack.deps import APPLIED, NOTIFIED, SlackDeps
from app.slack.gate import asker, caller, person_of, reply_to_clicker
from app.slack.listeners.commands import cancelled_text
from app.stepup.service import StepUpService


def register(app: App, deps: SlackDeps) -> None:
    @app.action(APPROVE_ACTION)
    def approve(ack: Ack, action: dict[str, Any], context: BoltContext) -> None:
        ack()
        progress = deps.progress()  # read here, on the thread that dispatches the request

        def decide() -> None:
            request_id = int(action["value"])
            if progress.outcome == NOTIFIED:
                return  # a redelivery of a click whose work was all done
            if deps.stepup is not None and deps.stepup.needs_step_up(request_id):
                # Approving here needs a fresh sign-in: the click only sends the link.
                offer_sign_in(deps.stepup, request_id, context)
                progress.step(NOTIFIED)
                return
            if progress.outcome != APPLIED:
                try:
                    view = deps.service.approve(request_id, person_of(context))
                except AlreadyDecided:
                    if not progress.redelivered:
                        raise
                    # Its first try may have got this far before its process died: the
                    # card shows the request as it is, and the approver is not told
                    # "already decided" about their own click.
                    deps.notifier.update_cards(deps.service.get(request_id))
                    return
                progress.step(APPLIED)
            else:
                view = deps.service.get(request_id)
            deps.notifier.request_changed(view)
            progress.step(NOTIFIED)

        deps.after_ack(context, decide)

    @app.action(CANCEL_ACTION)
    def cancel(
        ack: Ack,
        body: dict[str, Any],
        action: dict[str, Any],
        context: BoltContext,
        respond: Respond,
    ) -> None:
        ack()
        progress = deps.progress()

        def withdraw() -> None:
            request_id = int(action["value"])
            if progress.outcome == NOTIFIED:
                return  # a redelivery of a click whose work was all done
            container = body.get("container") or {}
            if container.get("type") == "view":
                # Clicked on the App Home: the change redraws it (homes looked at lately
                # are redrawn with each change), once, after the cancel is recorded.
                deps.service.remember_home_opened(caller(context).user_id)
            if progress.outcome != APPLIED:
                try:
                    view = deps.service.cancel(request_id, person_of(context))
                except AlreadyDecided:
                    if not progress.redelivered:
                        raise  # a second click: told plainly what state it is in
                    view = deps.service.get(request_id)  # its first try got this far
                progress.step(APPLIED)
            else:
                view = deps.service.get(request_id)
            deps.notifier.request_changed(view)  # cards, DM and home, from the outbox
            if container.get("is_ephemeral"):  # the reply to /jit request: replace it
                respond(replace_original=True, text=cancelled_text(view))
            progress.step(NOTIFIED)

        deps.after_ack(context, withdraw)

    @app.action(DENY_ACTION)
    def deny(
        ack: Ack,
        body: dict[str, Any],
        action: dict[str, Any],
        client: WebClient,
        context: BoltContext,
    ) -> None:
        ack()
        deps.open_dialog(context, lambda: _ask_why(client, body, action))

    @app.action(HOME_EXTEND)
    def home_extend(
        ack: Ack,
        body: dict[str, Any],
        action: dict[str, Any],
        client: WebClient,
        context: BoltContext,
    ) -> None:
        ack()

        def extend() -> None:
            view = deps.service.extend(int(action["value"]), person_of(context), HOME_EXTEND_BY)
            if view.extension is not None:
                deps.notifier.request_opened(view)
            else:
                ends = clock_time(view.expires_at, deps.service.policy.zone)
                reply_to_clicker(client, body)(f"#{view.id} now ends at {ends}.")
                deps.notifier.publish_home(caller(context).user_id)

        deps.after_ack(context, extend)

    @app.action(HOME_REVOKE)
    def home_revoke(ack: Ack, action: dict[str, Any], context: BoltContext) -> None:
        ack()

        def revoke() -> None:
            by = person_of(context)
            view = deps.service.revoke(int(action["value"]), by, "revoked from App Home")
            deps.notifier.request_changed(view)

        deps.after_ack(context, revoke)

    @app.view(DENY_VIEW)
    def deny_submitted(ack: Ack, view: dict[str, Any], context: BoltContext) -> None:
        # Deciding touches only the database, so it runs before the ack and a refusal is
        # shown on the field itself (by the error handler, app/slack/errors.py).
        meta = json.loads(view.get("private_metadata") or "{}")
        reason = view["state"]["values"][DENY_BLOCK][DENY_INPUT].get("value") or ""
        progress = deps.progress()
        if progress.outcome == APPLIED:  # redelivered: denied before the first ack
            decided = deps.service.get(int(meta["id"]))
        else:
            decided = deps.service.deny(int(meta["id"]), person_of(context), reason)
            progress.step(APPLIED)
        ack()
        deps.after_ack(context, lambda: deps.notifier.request_changed(decided))


def offer_sign_in(stepup: StepUpService, request_id: int, context: BoltContext) -> None:
    """Answer an Approve click on a path with step_up: a one-time sign-in link, for the
    clicker's eyes only. Refused at once (as an approval would be) if they could not approve."""
    who = asker(context)
    offer = stepup.offer(request_id, who.person())
    until = clock_time(offer.expires_at, stepup.access.policy.zone)
    if who.reply is not None:
        who.reply(
            f"Approving request #{request_id} needs you to sign in: <{offer.url}|sign in to "
            f"approve> (the link works once, until {until}, and only for you). Nothing is "
            "approved until you have signed in."
        )


def _ask_why(client: WebClient, body: dict[str, Any], action: dict[str, Any]) -> None:
    """Deny opens a dialog for the reason; the requester sees it."""
    channel = (body.get("channel") or {}).get("id")
    client.views_open(trigger_id=body["trigger_id"], view=deny_modal(int(action["value"]), channel))
