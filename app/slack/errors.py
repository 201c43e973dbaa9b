"""The one place that turns service refusals into what the user sees."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from slack_sdk import WebClient
from sqlalchemy.exc import OperationalError

from app.service import ServiceError

log = logging.getLogger(__name__)


@contextmanager
def replying_on_error(reply: Callable[..., object]) -> Iterator[None]:
    """Refusals become a short ephemeral reply; anything unexpected is logged and said plainly."""
    try:
        yield
    except ServiceError as exc:
        reply(response_type="ephemeral", replace_original=False, text=exc.message)
    except OperationalError:
        # The database went away mid-way: the inbox tries the request again when it is back
        # (app/slack/intake.py), so this is not the person's to retry.
        raise
    except Exception:
        log.exception("event=listener_failed")
        reply(
            response_type="ephemeral",
            replace_original=False,
            text="WardKey hit an unexpected error and has logged it. Check `/jit status` "
            "before trying again.",
        )


def reply_to_clicker(client: WebClient, body: dict[str, Any]) -> Callable[..., None]:
    """Ephemeral where the click happened; a DM when it came from the App Home."""
    channel = (body.get("channel") or {}).get("id")
    user_id = body["user"]["id"]

    def reply(text: str, **_: Any) -> None:
        if channel:
            client.chat_postEphemeral(channel=channel, user=user_id, text=text)
        else:
            client.chat_postMessage(channel=user_id, text=text)

    return reply
