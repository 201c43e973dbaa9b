"""A webhook receiver that keeps access in memory: the demo's "EPR admin console", the webhook
adapter's test peer, and the reference a vendor's receiver should behave like (docs/webhook.md).

It acts only on a request that is signed over its method, path, time, nonce, idempotency key and
body; whose timestamp is within five minutes of its own clock; whose nonce it has not seen in that
window; and whose body names the operation its path does. A retry carrying an Idempotency-Key it
has already answered gets the same answer again, and nothing is done twice."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from app.adapters.webhook import (
    IDEMPOTENCY_HEADER,
    MAX_AGE_SECONDS,
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Envelope,
    verify,
)
from app.clock import Clock, SystemClock
from app.demo.loopback import LoopbackServer

BASE_PATH = "/wardkey"
OPERATIONS = frozenset({"grant", "revoke", "check", "end-sessions", "members", "revoke-batch"})
MAX_BODY_BYTES = 64 * 1024  # WardKey's calls are a few hundred bytes; a batch of 200, 15 kB
MAX_BATCH_ITEMS = 200
ANSWERS_KEPT_SECONDS = 24 * 3600
MAX_TOKEN_CHARS = 200  # a nonce or idempotency key longer than this is not WardKey's


@dataclass(frozen=True)
class _Answer:
    request: str  # digest of what was asked, so a reused key with another request is refused
    status: int
    body: dict[str, Any]
    forget_at: float


class WebhookTarget(LoopbackServer):
    def __init__(self, key: bytes, name: str = "target", clock: Clock | None = None) -> None:
        self.key = key
        self.name = name
        self.clock = clock or SystemClock()
        self.members: dict[str, set[str]] = defaultdict(set)
        self.sessions: dict[str, int] = defaultdict(int)
        self.log: list[str] = []
        # Per (entitlement, account): revoke calls acted on, and those that removed access.
        self.revoke_calls: Counter[tuple[str, str]] = Counter()
        self.removals: Counter[tuple[str, str]] = Counter()
        self.refused = 0  # bad signature, stale timestamp or a replayed nonce
        self.fail_with: int | None = None  # answer every call with this HTTP status
        self.delay_seconds = 0.0  # answer this late (to test time-outs)
        self.batch = True  # answer /revoke-batch (False: 404, as a receiver without it does)
        self.batch_calls = 0  # /revoke-batch calls acted on
        self.refuse_revoke: set[str] = set()  # accounts whose revoke is refused (kept access)
        self._nonces: dict[str, float] = {}  # nonce -> when it is stale anyway
        self._answers: dict[str, _Answer] = {}  # idempotency key -> the answer given
        self._next_sweep = 0.0
        self._lock = threading.Lock()
        super().__init__()

    @property
    def url(self) -> str:
        return f"{self.base_url}{BASE_PATH}"

    def start(self) -> WebhookTarget:
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                # Only a plain count of bytes: "-1" would read to the end of the connection,
                # however much a stranger sends, and a word would be a traceback.
                declared = self.headers.get("Content-Length") or ""
                if not (declared.isascii() and declared.isdigit()):
                    self.close_connection = True  # what follows is not a body we can skip
                    self._answer(411 if not declared else 400, {"error": "bad Content-Length"})
                    return
                length = int(declared)
                if length > MAX_BODY_BYTES:  # refused before reading: no memory for strangers
                    self.close_connection = True
                    self._answer(413, {"error": "body too large"})
                    return
                body = self.rfile.read(length)
                headers = {name.lower(): value for name, value in self.headers.items()}
                self._answer(*target.handle(self.command, self.path, headers, body))

            def _answer(self, status: int, answer: dict[str, Any]) -> None:
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
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        """Answer one request; `headers` has lower-case names."""
        now = self.clock.now().timestamp()
        envelope = Envelope(
            method,
            path,
            headers.get(TIMESTAMP_HEADER.lower(), ""),
            headers.get(NONCE_HEADER.lower(), ""),
            headers.get(IDEMPOTENCY_HEADER.lower(), ""),
            body,
        )
        if not self._authentic(envelope, headers.get(SIGNATURE_HEADER.lower(), ""), now):
            return 401, {"error": "bad signature, stale timestamp or missing nonce"}
        if not self._first_sight(envelope, now):
            return 401, {"error": "replayed request: this nonce was already used"}
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        if self.fail_with is not None:
            return self.fail_with, {"error": "target is failing on purpose"}
        operation, call = _operation(path, body)
        if operation == "revoke-batch" and not self.batch:
            return 404, {"error": "no such operation"}
        if operation is None:
            return 400, {"error": "the body's operation is not the one the path names"}
        asked = hashlib.sha256(method.encode() + b"\n" + path.encode() + b"\n" + body).hexdigest()
        with self._lock:
            earlier = self._answers.get(envelope.idempotency_key)
            if earlier is not None:
                if earlier.request != asked:
                    return 422, {"error": "this Idempotency-Key was used for another request"}
                return earlier.status, earlier.body  # a retry: the same answer, done once
            status, answer = self._apply(operation, call)
            self._answers[envelope.idempotency_key] = _Answer(
                asked, status, answer, now + ANSWERS_KEPT_SECONDS
            )
            return status, answer

    def _authentic(self, envelope: Envelope, signature: str, now: float) -> bool:
        tokens_ok = all(
            0 < len(token) <= MAX_TOKEN_CHARS
            for token in (envelope.nonce, envelope.idempotency_key)
        )
        if tokens_ok and verify(self.key, envelope, signature, now):
            return True
        with self._lock:
            self.refused += 1
        return False

    def _first_sight(self, envelope: Envelope, now: float) -> bool:
        """Remember the nonce until its timestamp leaves the window (after that the timestamp
        check refuses it anyway), so memory stays bounded by the traffic of ten minutes."""
        with self._lock:
            if now >= self._next_sweep:  # a sweep a minute, not a scan per request
                self._next_sweep = now + 60
                self._nonces = {n: at for n, at in self._nonces.items() if at >= now}
                self._answers = {k: a for k, a in self._answers.items() if a.forget_at >= now}
            if envelope.nonce in self._nonces:
                self.refused += 1
                return False
            self._nonces[envelope.nonce] = int(envelope.timestamp) + MAX_AGE_SECONDS
            return True

    def _apply(self, operation: str, call: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if operation == "revoke-batch":
            items = call.get("items")
            if not isinstance(items, list) or not 0 < len(items) <= MAX_BATCH_ITEMS:
                return 400, {"error": f"items: a list of 1 to {MAX_BATCH_ITEMS} revokes"}
            if not all(isinstance(item, dict) for item in items):
                return 400, {"error": "items: each one an object"}
            self.batch_calls += 1
            return 200, {"results": [self._apply("revoke", item)[1] for item in items]}
        account, entitlement = str(call.get("account", "")), str(call.get("entitlement", ""))
        holders = self.members[entitlement]
        match operation:
            case "grant":
                present = account in holders
                holders.add(account)
                self.log.append(f"{self.name}: gave {account} {entitlement}")
                return 200, {"already_present": present}
            case "revoke":
                if account in self.refuse_revoke:
                    self.log.append(f"{self.name}: refused to take {entitlement} from {account}")
                    return 422, {"error": f"{account} is locked by the console", "transient": False}
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
            case _:  # members
                return 200, {"accounts": sorted(holders)}


def _operation(path: str, body: bytes) -> tuple[str | None, dict[str, Any]]:
    """The operation, when the path is one of ours and the body names the same one."""
    prefix = BASE_PATH + "/"
    operation = path[len(prefix) :] if path.startswith(prefix) else ""
    try:
        call = json.loads(body)
    except ValueError:
        return None, {}
    if operation not in OPERATIONS or not isinstance(call, dict):
        return None, {}
    if call.get("operation") != operation:
        return None, {}
    return operation, call
