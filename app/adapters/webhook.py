"""Signed webhooks, for systems that cannot be reached any other way (an EPR admin console).

WardKey POSTs JSON to `{url}/grant`, `/revoke`, `/check`, `/end-sessions` and `/members`. Each
request carries `X-WardKey-Timestamp` (Unix seconds), `X-WardKey-Signature: v1=<hex>` (HMAC-SHA256
with the shared key over `"{timestamp}.{body}"`) and an `Idempotency-Key`. See docs/webhook.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from app.adapters.base import (
    GrantResult,
    PermanentAdapterError,
    RevokeResult,
    TransientAdapterError,
)

SIGNATURE_HEADER = "X-WardKey-Signature"
TIMESTAMP_HEADER = "X-WardKey-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"


class WebhookSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: HttpUrl = Field(description="Base URL; WardKey appends /grant, /revoke, …")
    timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    verify_tls: bool = True


def sign(key: bytes, timestamp: str, body: bytes) -> str:
    digest = hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def verify(key: bytes, timestamp: str, body: bytes, signature: str, max_age: int = 300) -> bool:
    """What a receiver does: a fresh timestamp and a matching signature, compared in constant
    time."""
    try:
        age = abs(time.time() - int(timestamp))
    except ValueError:
        return False
    return age <= max_age and hmac.compare_digest(sign(key, timestamp, body), signature)


class WebhookAdapter:
    def __init__(
        self, settings: WebhookSettings, key: bytes, client: httpx.Client | None = None
    ) -> None:
        if not key:
            raise PermanentAdapterError("the webhook signing key is empty")
        self.base = str(settings.url).rstrip("/")
        self.key = key
        self.client = client or httpx.Client(
            timeout=settings.timeout_seconds, verify=settings.verify_tls
        )

    def _call(self, operation: str, payload: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps({"operation": operation, **payload}, separators=(",", ":")).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self.key, timestamp, body),
            IDEMPOTENCY_HEADER: str(uuid.uuid4()),
        }
        url = f"{self.base}/{operation}"
        try:
            response = self.client.post(url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise TransientAdapterError(f"{operation}: no answer in time ({exc})") from None
        except httpx.TransportError as exc:
            raise TransientAdapterError(f"{operation}: cannot reach {url} ({exc})") from None
        if response.status_code in (408, 425, 429) or response.status_code >= 500:
            raise TransientAdapterError(f"{operation}: HTTP {response.status_code}")
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
        )
        return GrantResult(
            already_present=bool(answer.get("already_present")),
            detail=str(answer.get("detail", ""))[:500],
        )

    def revoke(self, account: str, entitlement: str) -> RevokeResult:
        answer = self._call("revoke", {"account": account, "entitlement": entitlement})
        return RevokeResult(
            already_absent=bool(answer.get("already_absent")),
            detail=str(answer.get("detail", ""))[:500],
            sessions_ended=int(answer.get("sessions_ended", 0)),
        )

    def check(self, account: str, entitlement: str) -> bool:
        answer = self._call("check", {"account": account, "entitlement": entitlement})
        if not isinstance(answer.get("present"), bool):
            raise PermanentAdapterError("check: the answer has no true/false 'present'")
        return bool(answer["present"])

    def end_sessions(self, account: str) -> int:
        return int(self._call("end-sessions", {"account": account}).get("sessions_ended", 0))

    def list_members(self, entitlement: str) -> set[str]:
        accounts = self._call("members", {"entitlement": entitlement}).get("accounts", [])
        return {str(a) for a in accounts}
