"""A local stand-in for Opsgenie's Who is On Call API, `GET /v2/schedules/{identifier}/on-calls`.

A real HTTP server on loopback with the shapes of Opsgenie's published reference: the key in
`Authorization: GenieKey …` (401 with Opsgenie's error body, `{"message", "took", "requestId"}`,
otherwise); the schedule by ID, or by name with `scheduleIdentifierType=name` (404 for one it
does not have); `date` (the instant asked about, `yyyy-MM-dd'T'HH:mm:ssZ`; now by default);
`flat=true` for `onCallRecipients` (the usernames, which are e-mail addresses), otherwise
`onCallParticipants` objects; `{"data": {"_parent": {...}, ...}, "took", "requestId"}`. A
scripted 429 carries Opsgenie's rate-limit answer, `X-RateLimit-State: THROTTLED` and a
Retry-After.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from app.demo.loopback import LoopbackServer


@dataclass
class _Period:
    username: str
    start: datetime
    end: datetime


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOpsgenie

    def do_GET(self) -> None:
        status, body, headers = self.fake.handle(self.path, self.headers)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return


class FakeOpsgenie(LoopbackServer):
    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key
        self.schedules: dict[str, tuple[str, list[_Period]]] = {}  # id -> (name, periods)
        self.requests: list[tuple[str, dict[str, list[str]]]] = []  # (path, query)
        self.failures: list[int] = []  # statuses to answer the next calls with
        self.retry_after = 60  # seconds, sent with a scripted 429
        self._lock = threading.Lock()

    def schedule(self, name: str) -> str:
        """A schedule; returns its ID."""
        ident = str(uuid.uuid5(uuid.NAMESPACE_URL, f"opsgenie:{name}"))
        self.schedules.setdefault(ident, (name, []))
        return ident

    def on_call(self, name: str, username: str, start: datetime, end: datetime) -> None:
        """`username` on call in schedule `name` from `start` until `end`."""
        self.schedules[self.schedule(name)][1].append(_Period(username, start, end))

    def start(self) -> FakeOpsgenie:
        self._serve(type("Handler", (_Handler,), {"fake": self}))
        return self

    def _answer(self, status: int, message: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        body = {"message": message, "took": 0.002, "requestId": str(uuid.uuid4())}
        headers = {"X-RateLimit-State": "THROTTLED"} if status == 429 else {}
        if status == 429:
            headers["Retry-After"] = str(self.retry_after)
        return status, body, headers

    def handle(self, raw: str, headers: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
        url = urlparse(raw)
        query = parse_qs(url.query)
        with self._lock:
            self.requests.append((url.path, query))
            if self.failures:
                status = self.failures.pop(0)
                return self._answer(
                    status, "Too many requests" if status == 429 else "Internal Server Error"
                )
        if headers.get("Authorization") != f"GenieKey {self.key}":
            return self._answer(401, "Could not authenticate")
        parts = url.path.split("/")
        if len(parts) != 5 or parts[:3] != ["", "v2", "schedules"] or parts[4] != "on-calls":
            return self._answer(404, "Not found")
        identifier = unquote(parts[3])
        by_name = query.get("scheduleIdentifierType", ["id"])[0] == "name"
        found = [
            (ident, name, periods)
            for ident, (name, periods) in self.schedules.items()
            if (name if by_name else ident) == identifier
        ]
        if not found:
            return self._answer(
                404, f"No schedule exists with {'name' if by_name else 'id'} [{identifier}]"
            )
        ident, name, periods = found[0]
        at = datetime.fromisoformat(query["date"][0]) if "date" in query else datetime.now(UTC)
        on_call = list(dict.fromkeys(p.username for p in periods if p.start <= at < p.end))
        data: dict[str, Any] = {"_parent": {"id": ident, "name": name, "enabled": True}}
        if query.get("flat", ["false"])[0] == "true":
            data["onCallRecipients"] = on_call
        else:
            data["onCallParticipants"] = [
                {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, u)), "name": u, "type": "user"}
                for u in on_call
            ]
        return 200, {"data": data, "took": 0.011, "requestId": str(uuid.uuid4())}, {}
