"""Slack retries events it thinks were lost (`X-Slack-Retry-Num`), so a listener of events
handles each event_id once."""

from __future__ import annotations

import threading
from collections import OrderedDict


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
