"""Lockdown flows: do it (the service), then have people told (the outbox, whose notices the
service wrote with each change): when a lockdown's notice is delivered (app/telling.py), the
security channel's one progress message is posted, then updated in place, and its lifting said;
each holder's DM follows from their request's own notice."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from app.access import AccessService
from app.lockdown import messages
from app.lockdown.service import Lockdowns, LockdownSnapshot, Preview, Progress
from app.outbox_records import Notice
from app.policy import rules
from app.policy.people import Person
from app.telling import Teller, Telling


class LockdownFlows:
    def __init__(self, service: AccessService, kick: Callable[[], None]) -> None:
        self.lockdowns = Lockdowns(service)
        self.kick = kick  # ask the outbox to deliver what was recorded

    def preview(self, person: Person, target: str) -> Preview:
        return self.lockdowns.preview(person, target)

    def start(self, person: Person, target: str, reason: str) -> LockdownSnapshot:
        """Lock the target down (or find it already locked down) and say so."""
        view, _new = self.lockdowns.start(person, target, reason)
        self.kick()
        return view

    def run(self, lockdown_id: int) -> Progress:
        """Remove every grant on the target, the security channel's message following."""
        progress = self.lockdowns.run(lockdown_id, on_progress=self.kick)
        self.kick()
        return progress

    def lift(self, person: Person, target: str, note: str) -> LockdownSnapshot:
        view = self.lockdowns.lift(person, target, note)
        self.kick()
        return view


class Needs(Protocol):
    """What telling of lockdowns is given (app/notify/notifier.py `NoticeDeps`)."""

    @property
    def teller(self) -> Teller: ...

    @property
    def lockdowns(self) -> Lockdowns:
        """The lockdowns a progress message is drawn from, as they are now."""
        ...

    @property
    def core(self) -> AccessService:
        """The request core: its policy in force (the security channel, the admins)."""
        ...


def told(notice: Notice, given: Needs) -> None:
    """A lockdown started, moved on or was lifted: its one message in the security
    channel, posted first and then updated in place with the counts as they are now."""
    teller, lockdowns = given.teller, given.lockdowns
    lockdown_id = int(notice.facts["lockdown"])
    progress = lockdowns.progress(lockdown_id)
    text, blocks = messages.progress_message(progress, teller.zone, teller.names)
    channel = given.core.policy.channels.security_alerts
    about = f"lockdown={lockdown_id}"
    posted = lockdowns.progress_message(lockdown_id)
    if posted is None:
        # The admins hear instead if the security channel is gone.
        with teller.aside() as admins:
            policy = given.core.policy
            for member in rules.group_members(policy, policy.admins):
                user_id = teller.directory.user_id_for(member)
                if user_id:
                    teller.post(about, user_id, text, blocks)
        teller.post(about, channel, text, blocks, instead=admins)
    else:
        teller.update(posted[0], posted[1], text, blocks)
    if notice.action == "lockdown.lifted":
        view = lockdowns.get(lockdown_id)
        teller.post(about, channel, messages.lifted_text(view, teller.zone, teller.names))


NOTICES = (
    Telling("lockdown.started", told),
    Telling("lockdown.progress", told),
    Telling("lockdown.lifted", told),
)
