"""Justified / Not justified on break-glass review cards, and the note they ask for.

The click is answered at once when the clicker may not decide (not a reviewer, or the person who
used the access); otherwise a note is asked for, and the service checks again on submission.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from slack_bolt import Ack, App, BoltContext
from slack_sdk import WebClient

from app.reviews.messages import (
    NOTE_BLOCK,
    NOTE_INPUT,
    REVIEW_JUSTIFIED,
    REVIEW_NOT_JUSTIFIED,
    REVIEW_VIEW,
    note_modal,
)
from app.reviews.service import ReviewService
from app.slack.deps import Shell
from app.slack.gate import person_of, reply_to_clicker
from app.telling import Delivers


class Needs(Protocol):
    """What the reviews' listeners are given (app/listeners.py's ListenerDeps is one)."""

    @property
    def shell(self) -> Shell: ...

    @property
    def reviews(self) -> ReviewService: ...

    @property
    def notifier(self) -> Delivers: ...


def register(app: App, deps: Needs) -> None:
    def clicked(justified: bool) -> Any:
        def on_click(
            ack: Ack,
            body: dict[str, Any],
            action: dict[str, Any],
            client: WebClient,
            context: BoltContext,
        ) -> None:
            ack()

            def ask_for_note() -> None:
                request_id = int(action["value"])
                refusal = deps.reviews.review_refusal(request_id, person_of(context))
                if refusal is not None:
                    reply_to_clicker(client, body)(refusal)
                    return
                client.views_open(
                    trigger_id=body["trigger_id"], view=note_modal(request_id, justified)
                )

            deps.shell.open_dialog(context, ask_for_note)

        return on_click

    app.action(REVIEW_JUSTIFIED)(clicked(justified=True))
    app.action(REVIEW_NOT_JUSTIFIED)(clicked(justified=False))

    @app.view(REVIEW_VIEW)
    def note_submitted(ack: Ack, view: dict[str, Any], context: BoltContext) -> None:
        # Deciding touches only the database, so it runs before the ack and a refusal is shown
        # on the note field itself (by the error handler, app/slack/errors.py).
        meta = json.loads(view.get("private_metadata") or "{}")
        note = view["state"]["values"][NOTE_BLOCK][NOTE_INPUT].get("value") or ""
        deps.reviews.decide_review(
            int(meta["id"]), person_of(context), justified=bool(meta["justified"]), note=note
        )
        ack()
        deps.shell.after_ack(context, deps.notifier.deliver_now)
