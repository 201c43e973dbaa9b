"""Signed webhooks, for systems that cannot be reached any other way (an EPR admin console).

WardKey POSTs JSON to `{url}/grant`, `/revoke`, `/check`, `/end-sessions` and `/members`. Each
request carries `X-WardKey-Timestamp` (Unix seconds), `X-WardKey-Nonce` (new for every request),
an `Idempotency-Key` (the same for every attempt at one operation) and `X-WardKey-Signature:
v2=<hex>`, an HMAC-SHA256 with the shared key over the method, the path, the timestamp, the
nonce, the key and the body (`Envelope.message`), so a captured request cannot be sent to another
operation, and a receiver that remembers nonces for the window cannot be made to act twice.
See docs/webhook.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import httpx
from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from app.adapters.base import (
    AdapterError,
    GrantResult,
    PermanentAdapterError,
    RevokeResult,
    TransientAdapterError,
)
from app.clock import Clock, SystemClock

SIGNATURE_HEADER = "X-WardKey-Signature"
TIMESTAMP_HEADER = "X-WardKey-Timestamp"
NONCE_HEADER = "X-WardKey-Nonce"
IDEMPOTENCY_HEADER = "Idempotency-Key"
SIGNATURE_VERSION = "v2"  # v1 signed only the timestamp and body; receivers must refuse it
MAX_AGE_SECONDS = 300
MAX_PENDING_KEYS = 1000  # operations waiting for a retry, remembered per adapter
MAX_BATCH = 200  # revokes in one /revoke-batch call (about 15 kB of JSON)
# Answers to /revoke-batch that say the receiver has no such operation: use single calls.
NO_BATCH = frozenset({400, 404, 405, 501})


class WebhookSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: HttpUrl = Field(description="Base URL; WardKey appends /grant, /revoke, …")
    timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    verify_tls: bool = True


class Envelope(NamedTuple):
    """Everything a signature covers. `path` is the request's path as sent, e.g.
    `/wardkey/grant`; none of the text fields can hold a line break (HTTP forbids it)."""

    method: str
    path: str
    timestamp: str
    nonce: str
    idempotency_key: str
    body: bytes

    def message(self) -> bytes:
        """The bytes to sign: the fields on lines of their own, then the raw body."""
        head = (
            SIGNATURE_VERSION,
            self.timestamp,
            self.nonce,
            self.idempotency_key,
            self.method.upper(),
            self.path,
        )
        return "\n".join(head).encode() + b"\n" + self.body

    def headers(self, signature: str) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: self.timestamp,
            NONCE_HEADER: self.nonce,
            IDEMPOTENCY_HEADER: self.idempotency_key,
            SIGNATURE_HEADER: signature,
        }


def sign(key: bytes, envelope: Envelope) -> str:
    digest = hmac.new(key, envelope.message(), hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def verify(
    key: bytes, envelope: Envelope, signature: str, now: float, max_age: int = MAX_AGE_SECONDS
) -> bool:
    """What a receiver does first: a timestamp within `max_age` seconds of its own clock and a
    signature that matches, compared in constant time. (It must then refuse a nonce it has seen
    and a body whose `operation` is not the path's: see app/demo/webhook_target.py.)"""
    if any("\n" in field or "\r" in field for field in envelope[:5]):
        return False
    if not (envelope.timestamp.isascii() and envelope.timestamp.isdigit()):
        return False
    age = abs(now - int(envelope.timestamp))
    return age <= max_age and hmac.compare_digest(sign(key, envelope), signature)


class _Unsupported(Exception):
    """The receiver has no such operation (an optional one, e.g. /revoke-batch)."""


class _IdempotencyKeys:
    """One key per operation: an attempt that got no answer (a time-out, a 5xx) leaves the key
    for the retry of the same call; an answer retires it, so the next operation on the same
    access (a revoke, a new grant) gets a new key even when its body is the same."""

    def __init__(self) -> None:
        self._pending: OrderedDict[tuple[str, ...], tuple[bytes, str]] = OrderedDict()
        self._lock = threading.Lock()

    def begin(self, slot: tuple[str, ...], body: bytes) -> str:
        with self._lock:
            held = self._pending.get(slot)
            if held is not None and held[0] == body:
                return held[1]
            key = str(uuid.uuid4())
            self._pending[slot] = (body, key)
            self._pending.move_to_end(slot)
            while len(self._pending) > MAX_PENDING_KEYS:
                self._pending.popitem(last=False)
            return key

    def answered(self, slot: tuple[str, ...], key: str) -> None:
        with self._lock:
            held = self._pending.get(slot)
            if held is not None and held[1] == key:
                del self._pending[slot]


class WebhookAdapter:
    def __init__(
        self,
        settings: WebhookSettings,
        key: bytes,
        client: httpx.Client | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not key:
            raise PermanentAdapterError("the webhook signing key is empty")
        self.base = str(settings.url).rstrip("/")
        self.key = key
        self.clock = clock or SystemClock()
        self.client = client or httpx.Client(
            timeout=settings.timeout_seconds, verify=settings.verify_tls
        )
        self._keys = _IdempotencyKeys()
        self.batches = True  # until the receiver says it has no /revoke-batch

    def _call(
        self,
        operation: str,
        payload: dict[str, Any],
        slot: tuple[str, ...] | None,
        unsupported: frozenset[int] = frozenset(),
    ) -> dict[str, Any]:
        """POST one signed attempt. `slot` names what a change acts on: grant and revoke of
        the same access share one, so each takes over the other's pending key. A read has
        none: every read gets a key of its own, so a receiver's answer cached for an earlier
        read (one that timed out) is never served as the answer to a later one."""
        body = json.dumps({"operation": operation, **payload}, separators=(",", ":")).encode()
        url = f"{self.base}/{operation}"
        envelope = Envelope(
            method="POST",
            path=httpx.URL(url).raw_path.decode("ascii"),
            timestamp=str(int(self.clock.now().timestamp())),
            nonce=secrets.token_hex(16),
            idempotency_key=str(uuid.uuid4()) if slot is None else self._keys.begin(slot, body),
            body=body,
        )
        headers = envelope.headers(sign(self.key, envelope))
        try:
            response = self.client.post(url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise TransientAdapterError(f"{operation}: no answer in time ({exc})") from None
        except httpx.TransportError as exc:
            raise TransientAdapterError(f"{operation}: cannot reach {url} ({exc})") from None
        if response.status_code in unsupported:
            if slot is not None:
                self._keys.answered(slot, envelope.idempotency_key)
            raise _Unsupported(operation)
        if response.status_code in (408, 425, 429) or response.status_code >= 500:
            raise TransientAdapterError(f"{operation}: HTTP {response.status_code}")
        if slot is not None:
            self._keys.answered(slot, envelope.idempotency_key)
        if response.status_code >= 400:
            raise PermanentAdapterError(
                f"{operation}: HTTP {response.status_code} {response.text[:200]}"
            )
        try:
            answer = response.json()
        except ValueError:
            raise PermanentAdapterError(f"{operation}: the answer is not JSON") from None
        if not isinstance(answer, dict):
            raise PermanentAdapterError(f"{operation}: the answer is not a JSON object")
        return answer

    def grant(self, account: str, entitlement: str, until: datetime) -> GrantResult:
        answer = self._call(
            "grant",
            {
                "account": account,
                "entitlement": entitlement,
                "until": until.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            },
            ("access", account, entitlement),
        )
        return GrantResult(
            already_present=bool(answer.get("already_present")),
            detail=str(answer.get("detail", ""))[:500],
        )

    def revoke(self, account: str, entitlement: str) -> RevokeResult:
        answer = self._call(
            "revoke",
            {"account": account, "entitlement": entitlement},
            ("access", account, entitlement),
        )
        return RevokeResult(
            already_absent=bool(answer.get("already_absent")),
            detail=str(answer.get("detail", ""))[:500],
            sessions_ended=int(answer.get("sessions_ended", 0)),
        )

    def revoke_many(
        self, items: Sequence[tuple[str, str]]
    ) -> list[RevokeResult | AdapterError] | None:
        """Up to MAX_BATCH revokes in one call to `/revoke-batch` (docs/webhook.md); None when
        the receiver has no such operation (then never asked again by this adapter)."""
        if not self.batches:
            return None
        if len(items) > MAX_BATCH:
            raise ValueError(f"at most {MAX_BATCH} revokes in one batch")
        payload = {"items": [{"account": a, "entitlement": e} for a, e in items]}
        body = json.dumps(payload, sort_keys=True).encode()
        slot = ("revoke-batch", hashlib.sha256(body).hexdigest())
        try:
            answer = self._call("revoke-batch", payload, slot, unsupported=NO_BATCH)
        except _Unsupported:
            self.batches = False
            return None
        results = answer.get("results")
        if not isinstance(results, list) or len(results) != len(items):
            raise PermanentAdapterError("revoke-batch: the answer has no result for every item")
        out: list[RevokeResult | AdapterError] = []
        for result in results:
            if not isinstance(result, dict):
                out.append(PermanentAdapterError("revoke-batch: an item's result is not an object"))
            elif result.get("error"):
                error = str(result["error"])[:500]
                kind = TransientAdapterError if result.get("transient") else PermanentAdapterError
                out.append(kind(f"revoke: {error}"))
            else:
                out.append(
                    RevokeResult(
                        already_absent=bool(result.get("already_absent")),
                        detail=str(result.get("detail", ""))[:500],
                        sessions_ended=int(result.get("sessions_ended", 0)),
                    )
                )
        return out

    def check(self, account: str, entitlement: str) -> bool:
        answer = self._call(
            "check",
            {"account": account, "entitlement": entitlement},
            None,
        )
        if not isinstance(answer.get("present"), bool):
            raise PermanentAdapterError("check: the answer has no true/false 'present'")
        return bool(answer["present"])

    def end_sessions(self, account: str) -> int:
        answer = self._call("end-sessions", {"account": account}, ("sessions", account))
        return int(answer.get("sessions_ended", 0))

    def list_members(self, entitlement: str) -> set[str]:
        answer = self._call("members", {"entitlement": entitlement}, None)
        return {str(a) for a in answer.get("accounts", [])}
