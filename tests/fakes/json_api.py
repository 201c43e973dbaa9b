"""What the ticket system fakes share: a loopback HTTP server for a JSON API that records each
call, checks credentials, and answers scripted failures (a status, or a 429 with Retry-After)
before the real answer."""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlparse

from app.demo.loopback import LoopbackServer


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    authorization: str


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


class _Handler(BaseHTTPRequestHandler):
    fake: Any

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        call = Call(self.command, url.path, query, body, self.headers.get("Authorization", ""))
        answer = self.fake.dispatch(call)
        data = b"" if answer.body is None else json.dumps(answer.body).encode()
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_PUT = _answer

    def log_message(self, format: str, *args: Any) -> None:
        return


class JsonApiFake(LoopbackServer):
    """Subclasses answer `handle(call)` and say how a scripted failure's body looks."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Call] = []
        self.failures: list[int] = []  # statuses to answer the next calls with, in order
        self.retry_after = 30  # seconds, sent with a scripted 429
        self.credentials: set[str] = set()  # accepted Authorization header values
        self.delay = 0.0  # seconds each answer takes (a slow instance)
        self._lock = threading.Lock()

    def start(self) -> JsonApiFake:
        self._serve(type("Handler", (_Handler,), {"fake": self}))
        return self

    def accept_basic(self, user: str, password: str) -> None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.credentials.add(f"Basic {token}")

    def accept_bearer(self, token: str) -> None:
        self.credentials.add(f"Bearer {token}")

    def calls_to(self, method: str, path_part: str = "") -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method and path_part in c.path]

    def dispatch(self, call: Call) -> Answer:
        if self.delay:
            time.sleep(self.delay)
        with self._lock:
            self.calls.append(call)
            failure = self.failures.pop(0) if self.failures else None
        if failure is not None:
            headers = {"Retry-After": str(self.retry_after)} if failure == 429 else {}
            return Answer(failure, self.error_body(failure), headers)
        if call.authorization not in self.credentials:
            return Answer(401, self.error_body(401), self.unauthorized_headers())
        with self._lock:
            return self.handle(call)

    def handle(self, call: Call) -> Answer:
        raise NotImplementedError

    def error_body(self, status: int) -> Any:
        raise NotImplementedError

    def unauthorized_headers(self) -> dict[str, str]:
        return {}
