"""Standing privilege, then tell people: when a look's findings are delivered (app/telling.py),
the security channel hears of them in one message."""

from __future__ import annotations

from typing import Protocol

from app.access import AccessService
from app.outbox_records import Notice
from app.standing.messages import found_text
from app.standing.service import report_of_notices
from app.telling import Teller, Telling


class Needs(Protocol):
    """What telling of standing privilege is given (app/notify/notifier.py `NoticeDeps`)."""

    @property
    def teller(self) -> Teller: ...

    @property
    def core(self) -> AccessService:
        """The request core: its policy in force (the security channel)."""
        ...


def found(notice: Notice, given: Needs) -> None:
    """One look's findings (the notices of it coalesced), told to security if any is new."""
    text = found_text(report_of_notices([notice.facts, *notice.more]))
    if text is not None:
        given.teller.post("standing_found", given.core.policy.channels.security_alerts, text)


NOTICES = (Telling("standing.found", found),)
