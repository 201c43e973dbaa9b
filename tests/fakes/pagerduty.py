"""A local stand-in for PagerDuty's REST API v2 `GET /oncalls`, and a plain file server for
rostering exports published at a URL.

A real HTTP server on loopback with PagerDuty's shapes: `Authorization: Token token=…` (401 with
PagerDuty's error body otherwise), `schedule_ids[]` and `escalation_policy_ids[]` (each entry
carries its `escalation_level`), `since`/`until` (entries overlapping the window),
`include[]=users` (full user objects with `email`; otherwise `user_reference`s), classic
pagination (`limit`, `offset`, `more`, `total: null`), and scripted failures (a 429 with
Retry-After, or any status with PagerDuty's error body).
"""

from __future__ import annotations

import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlparse

from app.demo.loopback import LoopbackServer

API = "https://api.pagerduty.com"


def _reference(kind: str, ident: str, summary: str) -> dict[str, Any]:
    return {
        "id": ident,
        "type": f"{kind}_reference",
        "summary": summary,
        "self": f"{API}/{kind}s/{ident}",
        "html_url": f"https://trust.pagerduty.com/{kind}s/{ident}",
    }


class _Handler(BaseHTTPRequestHandler):
    fake: Any

    def do_GET(self) -> None:
        status, body, content_type = self.fake.handle(self.path, self.headers)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if status == 429:
            self.send_header("Retry-After", str(self.fake.retry_after))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


class FakePagerDuty(LoopbackServer):
    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token
        self.entries: list[dict[str, Any]] = []
        self.requests: list[dict[str, list[str]]] = []
        self.failures: list[int] = []  # statuses to answer the next calls with
        self.max_limit = 100  # PagerDuty's largest page; a test makes it small
        self.retry_after = 900  # seconds, sent with a scripted 429
        self._lock = threading.Lock()

    def on_call(
        self,
        schedule: str | None,
        user_id: str,
        email: str,
        start: datetime | None,
        end: datetime | None,
        *,
        escalation_policy: str = "PEP0001",
        level: int = 1,
    ) -> None:
        """An on-call entry as PagerDuty computes it from the escalation policy's levels and
        the schedules' layers (`schedule` None: a user named on the level itself, on call
        for ever, as PagerDuty shows them: no schedule, null start and end)."""
        self.entries.append(
            {
                "escalation_policy": _reference(
                    "escalation_policy", escalation_policy, "Ward on-call"
                ),
                "escalation_level": level,
                "schedule": None
                if schedule is None
                else _reference("schedule", schedule, "Ward lead"),
                "user": {
                    **_reference("user", user_id, email.split("@")[0]),
                    "type": "user",
                    "name": email.split("@")[0],
                    "email": email,
                    "time_zone": "Europe/London",
                    "role": "user",
                },
                "start": None if start is None else start.isoformat(),
                "end": None if end is None else end.isoformat(),
            }
        )

    def start(self) -> FakePagerDuty:
        self._serve(type("Handler", (_Handler,), {"fake": self}))
        return self

    def handle(self, raw: str, headers: Any) -> tuple[int, bytes, str]:
        import json

        url = urlparse(raw)
        query = parse_qs(url.query)
        with self._lock:
            self.requests.append(query)
            if self.failures:
                status = self.failures.pop(0)
                if status == 429:  # PagerDuty's rate limit, with how long to wait
                    body = {"error": {"message": "Rate Limit Exceeded", "code": 2020}}
                    return status, json.dumps(body).encode(), "application/json"
                body = {"error": {"message": "Internal Server Error", "code": 2001}}
                return status, json.dumps(body).encode(), "application/json"
        if headers.get("Authorization") != f"Token token={self.token}":
            body = {"error": {"message": "Unauthorized", "code": 2006}}
            return 401, json.dumps(body).encode(), "application/json"
        if url.path != "/oncalls":
            return (
                404,
                json.dumps({"error": {"message": "Not Found", "code": 2100}}).encode(),
                ("application/json"),
            )
        schedules = set(query.get("schedule_ids[]", []))
        policies = set(query.get("escalation_policy_ids[]", []))
        since = datetime.fromisoformat(query["since"][0])
        until = datetime.fromisoformat(query["until"][0])
        full_users = "users" in query.get("include[]", [])
        found = []
        for entry in self.entries:
            start = entry["start"] and datetime.fromisoformat(entry["start"])
            end = entry["end"] and datetime.fromisoformat(entry["end"])
            if schedules and (entry["schedule"] or {}).get("id") not in schedules:
                continue
            if policies and entry["escalation_policy"]["id"] not in policies:
                continue
            if (start and start >= until) or (end and end <= since):
                continue
            user = entry["user"]
            if not full_users:
                user = _reference("user", user["id"], user["summary"])
            found.append({**entry, "user": user})
        limit = min(int(query.get("limit", ["25"])[0]), self.max_limit)
        offset = int(query.get("offset", ["0"])[0])
        page = found[offset : offset + limit]
        body = {
            "oncalls": page,
            "limit": limit,
            "offset": offset,
            "more": offset + limit < len(found),
            "total": None,
        }
        return 200, json.dumps(body).encode(), "application/json"


class FileServer(LoopbackServer):
    """Serves `files` (path -> bytes) over HTTP; `status` answers every request instead."""

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, bytes] = {}
        self.status: int | None = None
        self.hits = 0

    def start(self) -> FileServer:
        self._serve(type("Handler", (_Handler,), {"fake": self}))
        return self

    def handle(self, raw: str, headers: Any) -> tuple[int, bytes, str]:
        self.hits += 1
        if self.status is not None:
            return self.status, b"unavailable", "text/plain"
        data = self.files.get(urlparse(raw).path)
        return (200, data, "text/calendar") if data is not None else (404, b"", "text/plain")
