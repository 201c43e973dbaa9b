"""A stand-in for Microsoft Entra ID (Microsoft Graph and its token endpoint) for `wardkey demo`:
the trust's Entra ID group of clinical systems staff, read by WardKey as a directory group.

It answers the two calls WardKey makes, in Graph's shapes: a client-credentials token, and
`GET /groups/{id}/transitiveMembers/microsoft.graph.user` with `$select`, two users a page,
`@odata.nextLink` for the next. Anything else is Graph's 404.
"""

from __future__ import annotations

import json
import secrets
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlparse

from app.demo.loopback import LoopbackServer

TENANT = "6f0b5c1e-2d4a-4e8b-9c3f-7a1d2e3f4a5b"
CLIENT = "0c9e8d7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f"
GROUP = "3b8f2c4d-5e6a-4b7c-8d9e-0f1a2b3c4d5e"
PAGE = 2


class DemoEntra(LoopbackServer):
    def __init__(self, client_secret: str, people: list[tuple[str, bool]]) -> None:
        """`people`: (mail, accountEnabled) of each member of the group."""
        super().__init__()
        self.client_secret = client_secret
        self.people = people
        self.tokens: set[str] = set()
        self.reads = 0

    @property
    def url(self) -> str:
        """What the demo's policy names as the authority; Graph is under it at /v1.0."""
        return f"{self.base_url}/entra"

    def start(self) -> DemoEntra:
        entra = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, answer = entra.handle(
                    self.command, self.path, self.headers.get("Authorization", ""), body
                )
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _reply

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._serve(Handler)
        return self

    def handle(self, method: str, raw: str, auth: str, body: bytes) -> tuple[int, Any]:
        url = urlparse(raw)
        if method == "POST" and url.path == f"/entra/{TENANT}/oauth2/v2.0/token":
            form = parse_qs(body.decode())
            if form.get("client_id") != [CLIENT] or form.get("client_secret") != [
                self.client_secret
            ]:
                return 401, {"error": "invalid_client", "error_description": "AADSTS7000215"}
            token = secrets.token_urlsafe(16)
            self.tokens.add(token)
            return 200, {"token_type": "Bearer", "expires_in": 3599, "access_token": token}
        if auth.removeprefix("Bearer ") not in self.tokens:
            return 401, _error("InvalidAuthenticationToken", "Access token is empty.")
        path = f"/entra/v1.0/groups/{GROUP}/transitiveMembers/microsoft.graph.user"
        if method == "GET" and url.path == path:
            self.reads += 1
            query = parse_qs(url.query)
            select = query.get("$select", [""])[0].split(",")
            skip = int(query.get("$skiptoken", ["0"])[0])
            users = [
                {"id": f"user-{i}", "mail": mail, "userPrincipalName": mail, "accountEnabled": on}
                for i, (mail, on) in enumerate(self.people)
            ]
            page = [
                {"@odata.type": "#microsoft.graph.user", **{k: u[k] for k in select if k in u}}
                for u in users[skip : skip + PAGE]
            ]
            answer: dict[str, Any] = {"value": page}
            if skip + PAGE < len(users):
                answer["@odata.nextLink"] = (
                    f"{self.base_url}{path}?$select={','.join(select)}&$skiptoken={skip + PAGE}"
                )
            return 200, answer
        return 404, _error("Request_ResourceNotFound", f"Resource '{url.path}' does not exist")


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
