"""A local stand-in for Microsoft Graph and its token endpoint, for the Entra adapter's tests.

A real HTTP server on loopback with Graph's response shapes: client-credentials tokens that
expire, users looked up by UPN, group members added by `$ref` (400 "already exist" for a
duplicate), removed by `$ref` (404 when absent), `checkMemberGroups`, paged member lists, and
scripted throttling (429 or 503 with Retry-After).

For groups read from the directory (app/groups): users carry `mail`, `userPrincipalName` and
`accountEnabled`; groups have a displayName (`GET /groups?$filter=displayName eq '…'`, a quote
doubled as OData writes it); a group may hold groups; `GET /groups/{id}/transitiveMembers` (and its
`/microsoft.graph.user` cast) lists every nested member once, with `$select` honoured (`id` and
`@odata.type` always come, as Graph sends them) and `@odata.nextLink` paging; `unavailable`
answers every call 503 as an outage would.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from app.demo.loopback import LoopbackServer

PAGE_SIZE = 2  # small, so paging through @odata.nextLink is exercised


class FakeGraph(LoopbackServer):
    def __init__(self, tenant_id: str, client_id: str, client_secret: str) -> None:
        super().__init__()
        self.tenant_id, self.client_id, self.client_secret = tenant_id, client_id, client_secret
        self.users: dict[str, str] = {}  # UPN -> object ID
        self.profiles: dict[str, dict[str, Any]] = {}  # object ID -> user properties
        self.group_names: dict[str, str] = {}  # group ID -> displayName
        self.unavailable = False
        # Set `hold` to an Event to keep reads of group members waiting until it is set;
        # `held` is set once one is waiting (a read in progress, for a test to act during).
        self.hold: threading.Event | None = None
        self.held = threading.Event()
        self.groups: dict[str, set[str]] = {}  # group ID -> member object IDs
        self.tokens: dict[str, float] = {}  # token -> monotonic expiry
        self.token_lifetime = 3599
        self.token_requests = 0
        self.requests: list[tuple[str, str]] = []
        self.queries: list[dict[str, list[str]]] = []  # each request's query, parsed
        self._throttle: list[tuple[int, int]] = []  # (status, retry_after) for the next calls
        self._lock = threading.Lock()

    # --------------------------------------------------------------------- scripting

    def add_user(self, upn: str, mail: str | None = None, enabled: bool = True) -> str:
        user = str(uuid.uuid4())
        self.users[upn.lower()] = user
        self.profiles[user] = {
            "displayName": upn.split("@")[0].title(),
            "userPrincipalName": upn,
            "mail": mail,
            "accountEnabled": enabled,
        }
        return user

    def set_enabled(self, user: str, enabled: bool) -> None:
        self.profiles[user]["accountEnabled"] = enabled

    def nest(self, parent: str, child: str) -> None:
        """Make group `child` a member of group `parent`."""
        self.groups[parent].add(child)

    def _transitive(self, group: str) -> list[str]:
        """Every user and group under `group`, each once (a loop of groups ends)."""
        found: dict[str, None] = {}
        waiting = sorted(self.groups[group])
        while waiting:
            member = waiting.pop(0)
            if member in found:
                continue
            found[member] = None
            if member in self.groups:
                waiting += sorted(self.groups[member])
        return list(found)

    def _directory_object(self, object_id: str, select: list[str]) -> dict[str, Any]:
        if object_id in self.groups:
            return {"@odata.type": "#microsoft.graph.group", "id": object_id}
        profile = self.profiles.get(object_id, {"userPrincipalName": self.upn_of(object_id)})
        shown = {k: profile.get(k) for k in select if k != "id"} if select else dict(profile)
        return {"@odata.type": "#microsoft.graph.user", "id": object_id, **shown}

    def add_group(self, name: str | None = None) -> str:
        group = str(uuid.uuid4())
        self.groups[group] = set()
        self.group_names[group] = name or f"group {group[:8]}"
        return group

    def throttle(self, times: int, status: int = 429, retry_after: int = 1) -> None:
        self._throttle += [(status, retry_after)] * times

    def upn_of(self, object_id: str) -> str:
        return next(u for u, i in self.users.items() if i == object_id)

    @property
    def authority(self) -> str:
        return self.base_url

    @property
    def graph_url(self) -> str:
        return f"{self.base_url}/v1.0"

    def start(self) -> FakeGraph:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, answer, headers = fake.handle(
                    self.command, self.path, self.headers.get("Authorization", ""), body
                )
                data = json.dumps(answer).encode() if answer is not None else b""
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if data:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _reply

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._serve(Handler)
        return self

    # ---------------------------------------------------------------------- handling

    def handle(
        self, method: str, raw_path: str, auth: str, body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        url = urlparse(raw_path)
        path = unquote(url.path)
        if self.hold is not None and "transitiveMembers" in path:
            self.held.set()
            self.hold.wait(30)
        with self._lock:
            self.requests.append((method, path))
            self.queries.append(parse_qs(url.query))
            if self.unavailable:
                return 503, _error("ServiceUnavailable", "Service unavailable"), {}
            if self._throttle:
                status, retry_after = self._throttle.pop(0)
                return (
                    status,
                    _error("TooManyRequests", "throttled"),
                    {"Retry-After": str(retry_after)},
                )
            if path == f"/{self.tenant_id}/oauth2/v2.0/token":
                return self._token(parse_qs(body.decode()))
            token = auth.removeprefix("Bearer ")
            if self.tokens.get(token, 0) < time.monotonic():
                return 401, _error("InvalidAuthenticationToken", "Access token has expired"), {}
            return self._graph(method, path.removeprefix("/v1.0"), url.query, body)

    def _token(self, form: dict[str, list[str]]) -> tuple[int, Any, dict[str, str]]:
        self.token_requests += 1
        if form.get("client_id") != [self.client_id] or form.get("client_secret") != [
            self.client_secret
        ]:
            return 401, {"error": "invalid_client", "error_description": "AADSTS7000215"}, {}
        if form.get("grant_type") != ["client_credentials"]:
            return 400, {"error": "unsupported_grant_type"}, {}
        token = secrets.token_urlsafe(24)
        self.tokens[token] = time.monotonic() + self.token_lifetime
        answer = {"token_type": "Bearer", "expires_in": self.token_lifetime, "access_token": token}
        return 200, answer, {}

    def _graph(
        self, method: str, path: str, query: str, body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        if m := re.fullmatch(r"/users/([^/]+)", path):
            user = self.users.get(m[1].lower())
            if user is None:
                return 404, _error("Request_ResourceNotFound", f"'{m[1]}' does not exist"), {}
            return 200, {"id": user}, {}
        if m := re.fullmatch(r"/users/([^/]+)/checkMemberGroups", path):
            wanted = json.loads(body)["groupIds"]
            return 200, {"value": [g for g in wanted if m[1] in self.groups.get(g, set())]}, {}
        if m := re.fullmatch(r"/groups/([^/]+)/members/\$ref", path):
            members = self.groups.get(m[1])
            if members is None:
                return 404, _error("Request_ResourceNotFound", "group does not exist"), {}
            user = json.loads(body)["@odata.id"].rsplit("/", 1)[-1]
            if user in members:
                return (
                    400,
                    _error(
                        "Request_BadRequest",
                        "One or more added object references already exist for the following "
                        "modified properties: 'members'.",
                    ),
                    {},
                )
            members.add(user)
            return 204, None, {}
        if m := re.fullmatch(r"/groups/([^/]+)/members/([^/]+)/\$ref", path):
            members = self.groups.get(m[1], set())
            if m[2] not in members:
                return 404, _error("Request_ResourceNotFound", "not a member"), {}
            members.discard(m[2])
            return 204, None, {}
        if m := re.fullmatch(r"/groups/([^/]+)/members", path):
            if m[1] not in self.groups:
                return 404, _error("Request_ResourceNotFound", "group does not exist"), {}
            ids = sorted(self.groups[m[1]])
            skip = int(parse_qs(query).get("$skiptoken", ["0"])[0])
            page = [{"id": i, "userPrincipalName": self.upn_of(i)} for i in ids[skip:][:PAGE_SIZE]]
            answer: dict[str, Any] = {"value": page}
            if skip + PAGE_SIZE < len(ids):
                answer["@odata.nextLink"] = (
                    f"{self.graph_url}/groups/{m[1]}/members?$skiptoken={skip + PAGE_SIZE}"
                )
            return 200, answer, {}
        if path == "/groups":  # only the displayName filter WardKey sends
            wanted = re.fullmatch(r"displayName eq '((?:[^']|'')*)'", parse_qs(query)["$filter"][0])
            if wanted is None:
                return 400, _error("Request_UnsupportedQuery", "Unsupported query."), {}
            name = wanted[1].replace("''", "'")
            found = [{"id": g, "displayName": n} for g, n in self.group_names.items() if n == name]
            return 200, {"value": found}, {}
        if m := re.fullmatch(r"/groups/([^/]+)/transitiveMembers(/microsoft\.graph\.user)?", path):
            if m[1] not in self.groups:
                return (
                    404,
                    _error(
                        "Request_ResourceNotFound",
                        f"Resource '{m[1]}' does not exist or one of its queried reference-"
                        "property objects are not present.",
                    ),
                    {},
                )
            query_args = parse_qs(query)
            select = [f for f in query_args.get("$select", [""])[0].split(",") if f]
            top = min(int(query_args.get("$top", ["100"])[0]), PAGE_SIZE)
            members = self._transitive(m[1])
            if m[2]:  # the cast: users only
                members = [i for i in members if i not in self.groups]
            skip = int(query_args.get("$skiptoken", ["0"])[0])
            page = [self._directory_object(i, select) for i in members[skip:][:top]]
            answer = {
                "@odata.context": f"{self.graph_url}/$metadata#directoryObjects",
                "value": page,
            }
            if skip + top < len(members):
                rest = f"$select={','.join(select)}&" if select else ""
                answer["@odata.nextLink"] = (
                    f"{self.graph_url}{path}?{rest}$top={top}&$skiptoken={skip + top}"
                )
            return 200, answer, {}
        if re.fullmatch(r"/users/([^/]+)/revokeSignInSessions", path):
            return 200, {"value": True}, {}
        return 404, _error("Request_ResourceNotFound", f"no route {method} {path}"), {}


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
