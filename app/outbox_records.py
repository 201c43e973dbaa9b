"""What the outbox holds, as the code that fills it sees it: a notice of what happened, a Slack
call to make (a post, a card update, a home redraw, a message drawn late), what became of the
calls sent before a late one (`Delivered`), the row that records a call in the transaction of
the change that causes it, the last once-per-outage alert told, and `Defer`, which a telling
raises for a notice it cannot render yet.

The outbox that delivers them (app/notify/outbox.py) and the features that record them both
import this module, so a feature never reaches up to the notifier for its record types.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select

from app.store.db import Database
from app.store.models import OutboxItem, OutboxState

POST = "chat.postMessage"
UPDATE = "chat.update"
HOME = "home"  # views.publish, drawn when sent so it always shows the latest state


@dataclass(frozen=True)
class Notice:
    """What happened, as the change recorded it: to a request (`request_id`, at `version`), or
    with no request (a digest, a standing-access finding, an attestation round). Notices of a
    coalesced kind waiting right behind this one in its lane come with it (`more`), so one
    look's findings make one message."""

    id: int
    request_id: int | None
    version: int
    action: str
    facts: Mapping[str, Any]
    more: tuple[Mapping[str, Any], ...] = ()

    @property
    def actor(self) -> str:
        return str(self.facts.get("actor", ""))

    @property
    def to(self) -> str | None:
        to = self.facts.get("to")
        return str(to) if to is not None else None


@dataclass
class OutCall:
    """One Slack call to make: a post, a card update or a home redraw."""

    method: str
    args: dict[str, Any]
    # (request id, purpose): where a post's channel and ts are remembered once Slack took it.
    remember: tuple[int, str] | None = None
    about: str = ""  # what it is, for the log if Slack refuses it
    # Remember the channel as addressed (a person's ID), not the DM Slack answers with.
    as_addressed: bool = False
    # Sent instead if Slack refuses this one for good (a gone security channel: the admins).
    instead: list[OutCall] = field(default_factory=list)
    # Drawn when its turn comes (`Renderer.draw_late`), from what became of the calls before it
    # in its group: says only what was delivered ("escalated to Hana Novak"), or is nothing.
    late: bool = False

    def to_json(self) -> str:
        return json.dumps(self._data())

    def _data(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "args": self.args,
            "remember": list(self.remember) if self.remember else None,
            "about": self.about,
            "as_addressed": self.as_addressed,
            "instead": [c._data() for c in self.instead],
            "late": self.late,
        }

    @classmethod
    def from_json(cls, body: str) -> OutCall:
        return cls._from(json.loads(body))

    @classmethod
    def _from(cls, data: dict[str, Any]) -> OutCall:
        remember = data.get("remember")
        return cls(
            data["method"],
            data["args"],
            (int(remember[0]), str(remember[1])) if remember else None,
            str(data.get("about") or ""),
            bool(data.get("as_addressed")),
            [cls._from(c) for c in data.get("instead") or []],
            bool(data.get("late")),
        )


@dataclass(frozen=True)
class Delivered:
    """What became of a call sent before a late one in its group (for `Renderer.draw_late`,
    app/notify/outbox.py, and the feature drawing it, app/telling.py `Drawing`)."""

    call: OutCall
    sent: bool  # Slack took it (else refused for good)
    error: str | None


def call_row(lane: str, call: OutCall, now: datetime, key: str | None = None) -> OutboxItem:
    """An outbox row for one Slack call, for a caller to add in the transaction of the change
    that causes it (`key`: a second row with the same key is refused)."""
    return OutboxItem(
        lane=lane,
        kind="call",
        key=key,
        body=call.to_json(),
        state=OutboxState.NEW.value,
        created_at=now,
        due_at=now,
        attempts=0,
        uncertain=False,
        step=0,
    )


def last_alert(db: Database, subject: str) -> tuple[str | None, int]:
    """Alerts told once per outage and once per recovery are keyed `<subject>:down:<n>` and
    `<subject>:back:<n>`, numbered, so processes that find the same change at once write the
    same key and the outbox keeps one. Returns the word of the last one ('down' or 'back';
    None: never told) and how many there have been."""
    escaped = subject.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    ours = or_(
        *(OutboxItem.key.like(f"{escaped}:{word}:%", escape="\\") for word in ("down", "back"))
    )
    with db.read() as session:
        count = session.scalar(select(func.count()).select_from(OutboxItem).where(ours)) or 0
        key = session.scalar(
            select(OutboxItem.key).where(ours).order_by(OutboxItem.id.desc()).limit(1)
        )
    return (None if key is None else key[len(subject) + 1 :].split(":")[0]), count


class Defer(Exception):
    """Raised by whoever tells of a notice that cannot be rendered yet (its request is
    mid-grant): the outbox tries it again shortly."""
