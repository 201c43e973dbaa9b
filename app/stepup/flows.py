"""Step-up approval, then tell people: when a refused sign-in's notice is delivered
(app/telling.py), the security channel hears of it."""

from __future__ import annotations

from typing import Protocol

from app.access import AccessService
from app.outbox_records import Notice
from app.stepup.messages import refusal_alert
from app.stepup.service import ALERT
from app.telling import Teller, Telling


class Needs(Protocol):
    """What telling of step-up sign-ins is given (app/notify/notifier.py `NoticeDeps`)."""

    @property
    def teller(self) -> Teller: ...

    @property
    def core(self) -> AccessService:
        """The request core: the request the sign-in was for, the security channel."""
        ...


def refused(notice: Notice, given: Needs) -> None:
    """A step-up sign-in that looks like an attack, in one line to the security channel."""
    view = given.core.get(int(notice.facts["request"]))
    given.teller.post(
        "step_up_refused",
        given.core.policy.channels.security_alerts,
        refusal_alert(notice.facts, view, given.teller.names),
    )


NOTICES = (Telling(ALERT, refused),)
