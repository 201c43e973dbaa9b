"""Events: App Home opened. Slack retries events it thinks were lost, so each is handled once."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from slack_bolt import App, BoltContext

from app.slack.deps import SlackDeps
from app.slack.gate import caller


class SeenEvents:
    """The last few thousand event IDs, to drop Slack's retries of an event already handled."""

    def __init__(self, size: int = 5000) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def first_time(self, event_id: str) -> bool:
        with self._lock:
            if event_id in self._seen:
                return False
            self._seen[event_id] = None
            if len(self._seen) > self._size:
                self._seen.popitem(last=False)
            return True


def register(app: App, deps: SlackDeps) -> None:
    seen = SeenEvents()

    @app.event("app_home_opened")
    def home_opened(body: dict[str, Any], event: dict[str, Any], context: BoltContext) -> None:
        if event.get("tab", "home") != "home":
            return
        if not seen.first_time(str(body.get("event_id", ""))):
            return
        user_id = caller(context).user_id
        deps.after_ack(context, lambda: deps.notifier.home_opened(user_id))
