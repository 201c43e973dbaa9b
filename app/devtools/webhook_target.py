"""A webhook receiver that keeps access in memory: the demo's "EPR admin console" and the
webhook adapter's test peer. It verifies every signature and refuses stale or forged calls."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler
from typing import Any

from app.adapters.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from app.devtools.loopback import LoopbackServer


class WebhookTarget(LoopbackServer):
    def __init__(self, key: bytes, name: str = "target") -> None:
        self.key = key
        self.name = name
        self.members: dict[str, set[str]] = defaultdict(set)
        self.sessions: dict[str, int] = defaultdict(int)
        self.log: list[str] = []
        # Per (entitlement, account): revoke calls received, and those that removed access.
        self.revoke_calls: Counter[tuple[str, str]] = Counter()
        self.removals: Counter[tuple[str, str]] = Counter()
        self.refused = 0
        self.fail_with: int | None = None  # answer every call with this HTTP status
        self.delay_seconds = 0.0  # answer this late (to test time-outs)
        self._lock = threading.Lock()
        super().__init__()

    @property
    def url(self) -> str:
        return f"{self.base_url}/wardkey"

    def start(self) -> WebhookTarget:
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, answer = target.handle(
                    self.path,
                    body,
                    self.headers.get(TIMESTAMP_HEADER, ""),
                    self.headers.get(SIGNATURE_HEADER, ""),
                )
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._serve(Handler)
        return self

    def handle(
        self, path: str, body: bytes, timestamp: str, signature: str
    ) -> tuple[int, dict[str, Any]]:
        if not verify(self.key, timestamp, body, signature):
            with self._lock:
                self.refused += 1
            return 401, {"error": "bad signature"}
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        if self.fail_with is not None:
            return self.fail_with, {"error": "target is failing on purpose"}
        call = json.loads(body)
        account, entitlement = call.get("account", ""), call.get("entitlement", "")
        with self._lock:
            holders = self.members[entitlement]
            match path.rsplit("/", 1)[-1]:
                case "grant":
                    present = account in holders
                    holders.add(account)
                    self.log.append(f"{self.name}: gave {account} {entitlement}")
                    return 200, {"already_present": present}
                case "revoke":
                    absent = account not in holders
                    holders.discard(account)
                    self.revoke_calls[(entitlement, account)] += 1
                    self.removals[(entitlement, account)] += 0 if absent else 1
                    ended, self.sessions[account] = self.sessions[account], 0
                    self.log.append(f"{self.name}: took {entitlement} from {account}")
                    return 200, {"already_absent": absent, "sessions_ended": ended}
                case "check":
                    return 200, {"present": account in holders}
                case "end-sessions":
                    ended, self.sessions[account] = self.sessions[account], 0
                    return 200, {"sessions_ended": ended}
                case "members":
                    return 200, {"accounts": sorted(holders)}
        return 404, {"error": "unknown operation"}
