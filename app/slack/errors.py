"""The one place that turns service refusals into what the user sees."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from app.service import ServiceError

log = logging.getLogger(__name__)


@contextmanager
def replying_on_error(reply: Callable[..., object]) -> Iterator[None]:
    """Refusals become a short ephemeral reply; anything unexpected is logged and said plainly."""
    try:
        yield
    except ServiceError as exc:
        reply(response_type="ephemeral", replace_original=False, text=exc.message)
    except Exception:
        log.exception("event=listener_failed")
        reply(
            response_type="ephemeral",
            replace_original=False,
            text="WardKey hit an unexpected error and has logged it. Check `/jit status` "
            "before trying again.",
        )
