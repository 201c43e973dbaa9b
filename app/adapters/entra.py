"""Microsoft Entra ID through Microsoft Graph: an entitlement is a group's object ID; access is
membership of it (for example a group that holds a directory role or an app's admin role).

Client-credentials token, cached until shortly before it expires. Graph throttles with 429 (and
sometimes 503) and a Retry-After header, which is honoured up to a limit. Adding a member who is
already there ("already exist") and removing one who is not (404) count as success.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from app.adapters.base import (
    GrantResult,
    PermanentAdapterError,
    RevokeResult,
    TransientAdapterError,
)

_UUID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_THROTTLED = (429, 503, 504)
_TOKEN_MARGIN_SECONDS = 120  # renew this long before the token's stated expiry


class Throttled(TransientAdapterError):
    """Graph kept throttling (429/503/504); `retry_after`: the seconds it last asked for."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EntraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant_id: str = Field(pattern=_UUID)
    client_id: str = Field(pattern=_UUID)
    authority: HttpUrl = Field(
        default=HttpUrl("https://login.microsoftonline.com"),
        description="login.microsoftonline.us for US Government clouds.",
    )
    graph_url: HttpUrl = Field(default=HttpUrl("https://graph.microsoft.com/v1.0"))
    timeout_seconds: float = Field(default=15.0, gt=0, le=60)
    max_attempts: int = Field(default=4, ge=1, le=10, description="Tries when throttled.")
    max_retry_after_seconds: float = Field(default=30.0, gt=0, le=300)
    revoke_sign_in_sessions: bool = Field(
        default=False,
        description="At revoke, sign the user out everywhere (revokeSignInSessions).",
    )


class EntraAdapter:
    def __init__(
        self,
        settings: EntraSettings,
        client_secret: str,
        client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.secret = client_secret
        self.graph = str(settings.graph_url).rstrip("/")
        self.token_url = (
            f"{str(settings.authority).rstrip('/')}/{settings.tenant_id}/oauth2/v2.0/token"
        )
        self.client = client or httpx.Client(timeout=settings.timeout_seconds)
        self._sleep = sleep
        self._token: tuple[str, float] | None = None
        self._token_lock = threading.Lock()

    # ------------------------------------------------------------------------ token

    def _access_token(self, renew: bool = False) -> str:
        with self._token_lock:
            if self._token and not renew and time.monotonic() < self._token[1]:
                return self._token[0]
            scope = f"{urlroot(self.graph)}/.default"
            answer = self._send(
                "token",
                lambda: self.client.post(
                    self.token_url,
                    data={
                        "client_id": self.settings.client_id,
                        "client_secret": self.secret,
                        "scope": scope,
                        "grant_type": "client_credentials",
                    },
                ),
            )
            if answer.status_code != 200:
                raise PermanentAdapterError(f"token: {_graph_error(answer)}")
            body = answer.json()
            lifetime = float(body.get("expires_in", 3599))
            expires = time.monotonic() + max(0.0, lifetime - _TOKEN_MARGIN_SECONDS)
            self._token = (str(body["access_token"]), expires)
            return self._token[0]

    # ---------------------------------------------------------------------- calling

    def _send(self, operation: str, call: Callable[[], httpx.Response]) -> httpx.Response:
        """One request with Graph's throttling honoured; transport failures are transient."""
        for attempt in range(1, self.settings.max_attempts + 1):
            try:
                answer = call()
            except httpx.TimeoutException:
                raise TransientAdapterError(f"{operation}: Graph did not answer in time") from None
            except httpx.TransportError as exc:
                raise TransientAdapterError(f"{operation}: cannot reach Graph ({exc})") from None
            if answer.status_code not in _THROTTLED:
                return answer
            wait = _retry_after(answer, default=2.0**attempt)
            if (
                attempt == self.settings.max_attempts
                or wait > self.settings.max_retry_after_seconds
            ):
                break
            self._sleep(wait)
        raise Throttled(
            f"{operation}: Graph is throttling or unavailable (HTTP {answer.status_code})",
            wait,
        )

    def _api(self, operation: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        def call(token: str) -> Callable[[], httpx.Response]:
            headers = {"Authorization": f"Bearer {token}"}
            return lambda: self.client.request(
                method, f"{self.graph}{path}", headers=headers, **kwargs
            )

        answer = self._send(operation, call(self._access_token()))
        if answer.status_code == 401:  # revoked or expired early: one fresh token, then give up
            answer = self._send(operation, call(self._access_token(renew=True)))
        if answer.status_code in (401, 403):
            raise PermanentAdapterError(f"{operation}: {_graph_error(answer)}")
        if answer.status_code >= 500:
            raise TransientAdapterError(f"{operation}: {_graph_error(answer)}")
        return answer

    def _user_id(self, account: str) -> str:
        if not account or any(c in account for c in "/?#\\\x00"):
            raise PermanentAdapterError(f"'{account[:80]}' is not a user principal name or ID")
        answer = self._api("find user", "GET", f"/users/{quote(account, safe='@')}?$select=id")
        if answer.status_code == 404:
            raise PermanentAdapterError(f"there is no user '{account}' in the tenant")
        if answer.status_code != 200:
            raise PermanentAdapterError(f"find user: {_graph_error(answer)}")
        return str(answer.json()["id"])

    @staticmethod
    def _group(entitlement: str) -> str:
        if not re.fullmatch(_UUID, entitlement):
            raise PermanentAdapterError(f"'{entitlement[:80]}' is not a group object ID")
        return entitlement

    # --------------------------------------------------------------------- protocol

    def grant(self, account: str, entitlement: str, until: datetime) -> GrantResult:
        group, user = self._group(entitlement), self._user_id(account)
        answer = self._api(
            "grant",
            "POST",
            f"/groups/{group}/members/$ref",
            json={"@odata.id": f"{self.graph}/directoryObjects/{user}"},
        )
        if answer.status_code == 204:
            return GrantResult(detail=f"member {user}")
        if answer.status_code == 400 and "already exist" in answer.text:
            return GrantResult(already_present=True)
        if answer.status_code == 404:
            raise PermanentAdapterError(f"grant: there is no group {group}")
        raise PermanentAdapterError(f"grant: {_graph_error(answer)}")

    def revoke(self, account: str, entitlement: str) -> RevokeResult:
        group, user = self._group(entitlement), self._user_id(account)
        answer = self._api("revoke", "DELETE", f"/groups/{group}/members/{user}/$ref")
        if answer.status_code == 404:
            return RevokeResult(already_absent=True)
        if answer.status_code != 204:
            raise PermanentAdapterError(f"revoke: {_graph_error(answer)}")
        return RevokeResult(detail=f"removed {user}")

    def check(self, account: str, entitlement: str) -> bool:
        # checkMemberGroups is transitive: access through a nested group counts as present,
        # so a revoke that leaves it in place is reported as failed, not as done.
        group, user = self._group(entitlement), self._user_id(account)
        answer = self._api(
            "check", "POST", f"/users/{user}/checkMemberGroups", json={"groupIds": [group]}
        )
        if answer.status_code != 200:
            raise PermanentAdapterError(f"check: {_graph_error(answer)}")
        return group in answer.json().get("value", [])

    def end_sessions(self, account: str) -> int:
        if not self.settings.revoke_sign_in_sessions:
            return 0
        user = self._user_id(account)
        answer = self._api("end sessions", "POST", f"/users/{user}/revokeSignInSessions")
        if answer.status_code != 200:
            raise PermanentAdapterError(f"end sessions: {_graph_error(answer)}")
        return 1

    def list_members(self, entitlement: str) -> set[str]:
        group = self._group(entitlement)
        members: set[str] = set()
        path: str | None = f"/groups/{group}/members?$select=id,userPrincipalName&$top=999"
        while path is not None:
            answer = self._api("list members", "GET", path)
            if answer.status_code == 404:
                raise PermanentAdapterError(f"list members: there is no group {group}")
            if answer.status_code != 200:
                raise PermanentAdapterError(f"list members: {_graph_error(answer)}")
            page = answer.json()
            members |= {str(m.get("userPrincipalName") or m["id"]) for m in page["value"]}
            link = page.get("@odata.nextLink")
            path = link.removeprefix(self.graph) if link else None
        return members

    def group_named(self, name: str) -> str:
        """The object ID of the one group whose displayName is `name` exactly."""
        if not name or any(c in name for c in "\x00\r\n"):
            raise PermanentAdapterError("a group name must be one line of text")
        literal = name.replace("'", "''")  # OData: a quote in a string literal is doubled
        query = quote(f"displayName eq '{literal}'", safe="")
        answer = self._api("find group", "GET", f"/groups?$filter={query}&$select=id,displayName")
        if answer.status_code != 200:
            raise PermanentAdapterError(f"find group: {_graph_error(answer)}")
        found = [g for g in answer.json().get("value", []) if g.get("displayName") == name]
        if not found:
            raise PermanentAdapterError(f"there is no group named '{name[:80]}' in the tenant")
        if len(found) > 1:
            raise PermanentAdapterError(
                f"{len(found)} groups are named '{name[:80]}'; name it by its object ID"
            )
        return str(found[0]["id"])

    def group_people(self, group: str, select: list[str]) -> list[dict[str, Any]]:
        """The users in the group, nested groups included (transitiveMembers cast to users),
        with the properties in `select`, following every @odata.nextLink page. Throttling is
        waited out for its Retry-After up to `max_retry_after_seconds`, then an error."""
        group = self._group(group)
        fields = ",".join(["id", *select])
        path: str | None = (
            f"/groups/{group}/transitiveMembers/microsoft.graph.user?$select={fields}&$top=999"
        )
        people: list[dict[str, Any]] = []
        while path is not None:
            answer = self._api("read group", "GET", path)
            if answer.status_code == 404:
                raise PermanentAdapterError(f"read group: there is no group {group}")
            if answer.status_code != 200:
                raise PermanentAdapterError(f"read group: {_graph_error(answer)}")
            try:
                page = answer.json()
                people += [dict(p) for p in page["value"]]
            except (ValueError, KeyError, TypeError) as exc:
                raise PermanentAdapterError(
                    f"read group: unexpected answer ({type(exc).__name__})"
                ) from None
            link = page.get("@odata.nextLink")
            path = _next_path(str(link), self.graph) if link else None
        return people


def _next_path(link: str, graph: str) -> str:
    if not link.startswith(graph + "/"):
        raise PermanentAdapterError("Graph's @odata.nextLink points outside the Graph URL")
    return link.removeprefix(graph)


def urlroot(url: str) -> str:
    """https://graph.microsoft.com/v1.0 -> https://graph.microsoft.com (the token scope)."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


def _retry_after(answer: httpx.Response, default: float) -> float:
    try:
        return max(0.0, float(answer.headers.get("Retry-After", default)))
    except ValueError:
        return default


def _graph_error(answer: httpx.Response) -> str:
    try:
        error = answer.json().get("error", {})
        if isinstance(error, dict):
            return f"HTTP {answer.status_code} {error.get('code', '')}: {error.get('message', '')}"
        return f"HTTP {answer.status_code} {error}: {answer.json().get('error_description', '')}"
    except ValueError:
        return f"HTTP {answer.status_code}"
