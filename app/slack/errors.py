"""The one place that turns service refusals into what the user sees.

A refusal is a ServiceError (app/lifecycle/errors.py): its `message` is written for the person who
acted, its `field` names the input it concerns. Listeners raise it and never format it:

- before the ack (a form's submission is decided there), Bolt hands it to the one `@app.error`
  handler, `answer_error`, which answers a form with the message on its field, a command with an
  ephemeral reply and a click with an ephemeral (a DM on the App Home or a form);
- after the ack (`Shell.after_ack`, app/slack/deps.py), `answered` gives what the work of a
  command or a click raises to the same answer (`Asker.reply`). The work after a form or an
  event answers nobody: what it raises is left to the inbox, which tries it again. So is an
  outage met before the work has done anything (the database, or Slack's API when asked who is
  acting): the request was acknowledged, so it is done when they are back, not handed to the
  person to retry. Anything met later is told, never tried again: the work may have changed
  something already (an extension, a break-glass) that a second try would do twice.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from slack_bolt import App, BoltContext, BoltResponse
from slack_sdk.errors import SlackApiError
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.lifecycle.errors import ServiceError
from app.slack.gate import ASKER, Asker, WhoUnknown, reply_to_clicker

log = logging.getLogger(__name__)
Job = Callable[[], None]

NOT_NOW = (
    "Slack or WardKey's database is not answering just now, so nothing was done. Try again in a "
    "minute. For a patient-safety emergency, use the trust's fallback procedure now."
)
UNEXPECTED = (
    "WardKey hit an unexpected error and has logged it. Check `/jit status` before trying again."
)
_JSON: dict[str, str | Sequence[str]] = {"content-type": "application/json;charset=utf-8"}
# Slack shows a form's field errors under the field; keep them to a couple of lines.
FIELD_ERROR_LIMIT = 150


def register(app: App, later: Callable[[Job], None]) -> None:
    """Install the one error handler; `later` runs a Slack call after the ack."""

    @app.error
    def answer(error: Exception, body: dict[str, Any], context: BoltContext) -> BoltResponse | None:
        return answer_error(error, body, context, later)


def answer_error(
    error: Exception, body: dict[str, Any], context: BoltContext, later: Callable[[Job], None]
) -> BoltResponse | None:
    """What a listener (or middleware) raised before its answer was sent. A refusal is
    answered as the kind of request needs; anything else is logged and Bolt answers 500 (so a
    database outage mid-way leaves the request to the inbox, which tries it again)."""
    if not isinstance(error, ServiceError):
        log.error("event=listener_failed error=%s", type(error).__name__, exc_info=error)
        return None
    if body.get("type") == "view_submission":
        block = form_block(error, body.get("view") or {})
        errors = {block: error.message[:FIELD_ERROR_LIMIT]}
        return _json({"response_action": "errors", "errors": errors})
    if body.get("command"):
        return _json({"response_type": "ephemeral", "text": error.message})
    if body.get("type") == "block_actions" and context.client is not None:
        tell = reply_to_clicker(context.client, body)
        message = error.message
        later(lambda: tell(message))
    return BoltResponse(status=200, body="")


def form_block(error: ServiceError, view: dict[str, Any]) -> str:
    """The form's input that the refusal concerns: the one its `field` names, else the first."""
    inputs = [
        str(b["block_id"])
        for b in view.get("blocks") or []
        if b.get("type") == "input" and b.get("block_id")
    ] or [str(block) for block in ((view.get("state") or {}).get("values") or {})]
    if error.field and error.field in inputs:
        return error.field
    return inputs[0] if inputs else error.field or "error"


def answered(job: Job, context: BoltContext, *, retried: bool = True) -> Job:
    """`job`, the work after the ack of the request in `context`, with a refusal it raises told
    to the person who asked, and anything unexpected logged and said plainly. An outage of what
    the work depends on, met before it did anything (the database; Slack, asked who is acting),
    is raised on: the inbox tries the request again when it is back (app/slack/intake.py), so
    it is not the person's to retry. `retried=False`: work the inbox does not carry (a dialog
    opened by a click): the person is told to try again instead."""
    found = context.get(ASKER)
    reply = found.reply if isinstance(found, Asker) else None
    if reply is None:
        return job

    @functools.wraps(job)
    def run() -> None:
        try:
            job()
        except ServiceError as exc:
            _tell(reply, exc.message)
        except (OperationalError, PoolTimeout, WhoUnknown):
            if not retried:
                _tell(reply, NOT_NOW)
                return
            raise
        except Exception:
            log.exception("event=listener_failed")
            _tell(reply, UNEXPECTED)

    return run


def _tell(reply: Callable[[str], None], text: str) -> None:
    """Answer the person; if Slack cannot take it now, log it and go on: raising would have the
    inbox do the work again, and the work may have changed something already."""
    try:
        reply(text)
    except (SlackApiError, OSError) as exc:
        log.warning("event=reply_failed error=%s", type(exc).__name__)


def _json(answer: dict[str, Any]) -> BoltResponse:
    return BoltResponse(status=200, body=json.dumps(answer), headers=_JSON)
