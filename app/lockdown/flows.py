"""Lockdown flows: do it (the service), then have people told (the outbox, whose notices the
service wrote with each change: the security channel's progress message, each holder's DM)."""

from __future__ import annotations

from collections.abc import Callable

from app.lockdown.service import Lockdowns, LockdownView, Preview, Progress
from app.policy.people import Person
from app.service import AccessService


class LockdownFlows:
    def __init__(self, service: AccessService, kick: Callable[[], None]) -> None:
        self.lockdowns = Lockdowns(service)
        self.kick = kick  # ask the outbox to deliver what was recorded

    def preview(self, person: Person, target: str) -> Preview:
        return self.lockdowns.preview(person, target)

    def start(self, person: Person, target: str, reason: str) -> LockdownView:
        """Lock the target down (or find it already locked down) and say so."""
        view, _new = self.lockdowns.start(person, target, reason)
        self.kick()
        return view

    def run(self, lockdown_id: int) -> Progress:
        """Remove every grant on the target, the security channel's message following."""
        progress = self.lockdowns.run(lockdown_id, on_progress=self.kick)
        self.kick()
        return progress

    def lift(self, person: Person, target: str, note: str) -> LockdownView:
        view = self.lockdowns.lift(person, target, note)
        self.kick()
        return view
