"""The daily digest, then tell people: when the day's digest notice is delivered
(app/telling.py), the digest is read again for the day it covers and sent to the managers'
channel."""

from __future__ import annotations

from datetime import date, datetime
from typing import Protocol

from app.access import AccessService
from app.digest.messages import digest_blocks, digest_text
from app.digest.service import DigestService
from app.outbox_records import Notice
from app.telling import Teller, Telling


class Needs(Protocol):
    """What telling of the digest is given (app/notify/notifier.py `NoticeDeps`)."""

    @property
    def teller(self) -> Teller: ...

    @property
    def digests(self) -> DigestService:
        """The digest service a digest is read again from when it is sent."""
        ...

    @property
    def core(self) -> AccessService:
        """The request core: its policy in force (the managers' channel)."""
        ...


def sent(notice: Notice, given: Needs) -> None:
    """The daily summary, to the managers' channel."""
    facts, teller = notice.facts, given.teller
    since, until = (datetime.fromisoformat(str(facts[k])) for k in ("since", "until"))
    digest = given.digests.digest(since, until, date.fromisoformat(str(facts["day"])))
    teller.post(
        f"digest day={digest.day}",
        given.core.policy.channels.manager_reviews,
        digest_text(digest),
        digest_blocks(digest, teller.zone, teller.names),
    )


NOTICES = (Telling("digest.sent", sent),)
