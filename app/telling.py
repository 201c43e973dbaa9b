"""What telling people of a notice is, so that each feature says next to its code who is told
what when one of its notices is delivered.

A change writes a notice into the outbox in its own transaction (app/lifecycle/transitions.py).
When the notice's turn comes, the notifier (app/notify/notifier.py) finds the `Telling` a
feature's flows declare for its action (`NOTICES` in app/<feature>/flows.py, gathered in
`FEATURE_NOTICES` there as app/scheduler gathers the features' JOBS) and calls it with what
the features' flows are given: a Protocol each feature writes, which the notifier's `NoticeDeps`
must satisfy (mypy checks it where they are gathered). A telling reads the feature's state as it
is now and has the messages sent through a `Teller`, which only collects them: the outbox sends
each once, in order, through Slack errors and outages. A feature's flows never import the
notifier (an import contract in pyproject.toml).

A notice of a request that no telling claims by its action (a request decided, granted,
ended…) is told by the one telling declared for `ANY_OTHER_CHANGE` (the requests',
app/requests/flows.py). A message that must say only what Slack took of the calls before it
("escalated to Hana Novak") is drawn when its turn comes (`Teller.draw_later`), by the
`Drawing` a feature declares for it (`DRAWINGS` in its flows.py, gathered by the notifier too).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar
from zoneinfo import ZoneInfo

from slack_sdk.models.blocks import Block

from app.blockkit import Names
from app.directory import SlackDirectory
from app.lifecycle.snapshots import RequestSnapshot
from app.outbox_records import Delivered, Notice, OutCall


class Delivers(Protocol):
    """What a listener asks once its change is committed (app/notify/notifier.py `Notifier`)."""

    def deliver_now(self) -> None:
        """The notice the change wrote in the outbox, delivered now rather than on the next
        look."""
        ...


class Teller(Protocol):
    """How a feature's flows have people told (app/notify/notifier.py `Notifier`). Calls made
    while a notice is told, or inside `recording`, are collected for the outbox, never sent
    at once."""

    @property
    def zone(self) -> ZoneInfo:
        """The policy's time zone, which times are shown in."""
        ...

    @property
    def names(self) -> Names:
        """People and channels by name, as the Slack directory has them."""
        ...

    @property
    def directory(self) -> SlackDirectory:
        """The Slack directory: people's Slack IDs and profiles."""
        ...

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
        """One message, sent on its own: one Slack refuses for good is logged as `about` and
        never stops the others; `instead` is sent then. `remember`: (request id, purpose)
        under which its channel and ts are kept once Slack takes it (`as_addressed`: the
        channel as addressed, a person's ID, not their DM)."""
        ...

    def update(
        self, channel: str, ts: str, text: str, blocks: Sequence[Block] | None = None
    ) -> None:
        """A posted message, redrawn in place."""
        ...

    def update_in_place(
        self, request_id: int, purpose: str, text: str, blocks: Sequence[Block]
    ) -> None:
        """Every posted copy of a request's message remembered under `purpose`, redrawn."""
        ...

    def aside(self) -> AbstractContextManager[list[OutCall]]:
        """Calls made inside are kept aside, to be sent only if another is refused
        (`post(…, instead=…)`)."""
        ...

    def recording(self, lane: str, key: str | None = None) -> AbstractContextManager[None]:
        """Calls made inside, which no notice caused, are recorded in the outbox in `lane`
        and delivered; `key`: for a single call, a second row with the same key is refused
        (another process recorded the same message)."""
        ...

    def redraw_home(self, user_id: str) -> None:
        """This person's App Home, redrawn: drawn when its turn comes, so it shows the latest
        state (the requests' `draw_home`)."""
        ...

    def draw_later(self, about: str, draw: str, args: Mapping[str, Any]) -> None:
        """A message drawn when its turn comes, by the `Drawing` declared for `draw`, from
        `args` and what became of the calls made before it for the same notice (one Slack
        refuses is logged as `about`)."""
        ...

    def slack_ids(
        self, view: RequestSnapshot, members: list[str], missing: list[str] | None = None
    ) -> list[str]:
        """The Slack user IDs of the policy members who can read and act on a message about
        `view`, never its requester (members Slack does not know, or whose accounts cannot
        act, are logged and left out; `missing` collects why, in words)."""
        ...


# What a telling is given. Contravariant: a telling that needs less may run wherever more is given.
Needs = TypeVar("Needs", contravariant=True)


# The action of the one telling told every notice of a request that no other telling claims.
ANY_OTHER_CHANGE = "*"


@dataclass(frozen=True)
class Telling(Generic[Needs]):
    """Who is told what when a notice of `action` is delivered."""

    action: str
    tell: Callable[[Notice, Needs], None]


@dataclass(frozen=True)
class Drawing(Generic[Needs]):
    """A message drawn when its turn comes (`Teller.draw_later` with this `draw`): `make` is
    given the call's arguments and what became of the calls before it (in order), and has at
    most one message sent, or none when there is nothing to say."""

    draw: str
    make: Callable[[Mapping[str, Any], Sequence[Delivered], Needs], None]
