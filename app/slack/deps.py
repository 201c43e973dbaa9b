"""What the listeners need, built once per app."""

from __future__ import annotations

from dataclasses import dataclass

from app.notify.notifier import Notifier
from app.service import AccessService
from app.slack.people import SlackDirectory


@dataclass(frozen=True)
class SlackDeps:
    service: AccessService
    directory: SlackDirectory
    notifier: Notifier
