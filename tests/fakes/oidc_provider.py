"""A local stand-in for an OpenID Connect provider (Microsoft Entra ID's shapes where they
matter), for step-up approval tests.

A real HTTP server on loopback: discovery (`/.well-known/openid-configuration`), the signing
keys (`/keys`, a JWKS), `/authorize` (the authorization code flow: checks the client, the
registered redirect URI, `response_type=code`, `scope` with `openid` and a PKCE S256 challenge,
then "signs in" at once as whoever the test chose, with the `amr`, `acr` and `auth_time` it
chose) and `/token` (client authentication by secret, basic or post; the code used once, with
its redirect URI and a PKCE verifier that matches the challenge; answers with a real RS256 ID
token signed by its key, with `iss`, `sub`, `aud`, `exp`, `iat`, `nonce`, `auth_time`, `amr`,
`email`, `upn`, `preferred_username`, `oid`, `tid`). Errors are OAuth's JSON
(`{"error": "invalid_grant", "error_description": …}`).

Times come from the clock the test injects, never the wall clock. Knobs for the tests of what
must be refused: sign with another key (`forge`), another audience or issuer in the token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from app.clock import Clock
from app.demo.loopback import LoopbackServer

TENANT = "9188040d-6c67-4c5b-b112-36a304b66dad"


@dataclass
class SignIn:
    """Who the provider signs in at the next /authorize, and how."""

    email: str
    amr: list[str] = field(default_factory=lambda: ["pwd", "mfa"])
    acr: str | None = None
    auth_time: datetime | None = None  # None: the moment of the sign-in (the clock's now)
    subject: str | None = None  # None: made from the e-mail, stable per person


@dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str | None
    sign_in: SignIn
    at: datetime
    used: bool = False


def _key(kid: str) -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"})


class _Handler(BaseHTTPRequestHandler):
    fake: Any

    def do_GET(self) -> None:
        self._answer(*self.fake.get(self.path))

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        self._answer(*self.fake.post(self.path, body, self.headers.get("Authorization")))

    def _answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if body is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return


class FakeOpenIDProvider(LoopbackServer):
    def __init__(self, clock: Clock, client_id: str, client_secret: str) -> None:
        super().__init__()
        self.clock = clock
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uris: list[str] = []
        self.key = _key("wardkey-test-1")
        self.jwks_reads = 0
        self.next_sign_in: SignIn | None = None
        self.forge = False  # sign ID tokens with a key not in the JWKS (same kid)
        self.audience: str | None = None  # another `aud` in the ID token
        self.issuer_in_token: str | None = None  # another `iss` in the ID token
        self.nonce_as_list = False  # the `nonce` as a one-item array, not a string
        self.authorize_requests: list[dict[str, str]] = []
        self.token_requests: list[dict[str, str]] = []
        self._grants: dict[str, _Grant] = {}
        self._lock = threading.Lock()

    def start(self) -> FakeOpenIDProvider:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._serve(handler)
        return self

    @property
    def issuer(self) -> str:
        return self.base_url + f"/{TENANT}/v2.0"

    @staticmethod
    def new_key(kid: str) -> RSAKey:
        """A fresh signing key (set it as `key` to roll the provider's keys)."""
        return _key(kid)

    def sign_in_as(self, email: str, **how: Any) -> SignIn:
        self.next_sign_in = SignIn(email, **how)
        return self.next_sign_in

    # ------------------------------------------------------------------------ routes

    def get(self, raw: str) -> tuple[int, Any, dict[str, str] | None]:
        url = urlparse(raw)
        if url.path == f"/{TENANT}/v2.0/.well-known/openid-configuration":
            return 200, self.discovery(), None
        if url.path == f"/{TENANT}/discovery/v2.0/keys":
            self.jwks_reads += 1
            return 200, KeySet([self.key]).as_dict(private=False), None
        if url.path == f"/{TENANT}/oauth2/v2.0/authorize":
            return self.authorize({k: v[0] for k, v in parse_qs(url.query).items()})
        return 404, {"error": "not_found"}, None

    def post(
        self, raw: str, body: str, authorization: str | None
    ) -> tuple[int, Any, dict[str, str] | None]:
        if urlparse(raw).path == f"/{TENANT}/oauth2/v2.0/token":
            form = {k: v[0] for k, v in parse_qs(body).items()}
            return self.token(form, authorization)
        return 404, {"error": "not_found"}, None

    def discovery(self) -> dict[str, Any]:
        base = f"{self.base_url}/{TENANT}"
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_types_supported": ["code", "id_token", "code id_token"],
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "code_challenge_methods_supported": ["S256"],
            "claims_supported": [
                "sub", "iss", "aud", "exp", "iat", "auth_time", "acr", "amr", "nonce",
                "email", "upn", "preferred_username", "oid", "tid",
            ],
        }  # fmt: skip

    def authorize(self, query: dict[str, str]) -> tuple[int, Any, dict[str, str] | None]:
        self.authorize_requests.append(query)
        redirect = query.get("redirect_uri", "")
        if query.get("client_id") != self.client_id:
            return 400, {"error": "unauthorized_client"}, None
        if redirect not in self.redirect_uris:  # never redirect to an unregistered address
            return 400, {"error": "invalid_request", "error_description": "redirect_uri"}, None

        def back(params: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
            state = query.get("state")
            sent = {**params, **({"state": state} if state else {})}
            return 302, None, {"Location": f"{redirect}?{urlencode(sent)}"}

        if query.get("response_type") != "code":
            return back({"error": "unsupported_response_type"})
        if "openid" not in query.get("scope", "").split():
            return back({"error": "invalid_scope"})
        if query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
            return back({"error": "invalid_request", "error_description": "PKCE S256 needed"})
        who = self.next_sign_in
        if who is None:
            return back({"error": "access_denied", "error_description": "nobody signed in"})
        code = secrets.token_urlsafe(24)
        with self._lock:
            self._grants[code] = _Grant(
                self.client_id,
                redirect,
                query["code_challenge"],
                query.get("nonce"),
                who,
                self.clock.now(),
            )
        return back({"code": code})

    def token(
        self, form: dict[str, str], authorization: str | None
    ) -> tuple[int, Any, dict[str, str] | None]:
        self.token_requests.append(form)
        client, secret = form.get("client_id"), form.get("client_secret")
        if authorization and authorization.startswith("Basic "):
            decoded = base64.b64decode(authorization[6:]).decode()
            client, _, secret = decoded.partition(":")
        if client != self.client_id or secret != self.client_secret:
            return 401, {"error": "invalid_client"}, None
        if form.get("grant_type") != "authorization_code":
            return 400, {"error": "unsupported_grant_type"}, None
        with self._lock:
            grant = self._grants.get(form.get("code", ""))
            if grant is None or grant.used:
                return 400, {"error": "invalid_grant", "error_description": "code"}, None
            grant.used = True
        if self.clock.now() - grant.at > timedelta(minutes=10):
            return 400, {"error": "invalid_grant", "error_description": "code expired"}, None
        if form.get("redirect_uri") != grant.redirect_uri:
            return 400, {"error": "invalid_grant", "error_description": "redirect_uri"}, None
        verifier = form.get("code_verifier", "")
        digest = hashlib.sha256(verifier.encode()).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != grant.challenge:
            return 400, {"error": "invalid_grant", "error_description": "code_verifier"}, None
        return (
            200,
            {
                "token_type": "Bearer",
                "scope": "openid profile email",
                "expires_in": 3600,
                "access_token": secrets.token_urlsafe(32),
                "id_token": self.id_token(grant),
            },
            None,
        )

    def id_token(self, grant: _Grant) -> str:
        who = grant.sign_in
        now = int(self.clock.now().timestamp())
        auth_time = int((who.auth_time or grant.at).timestamp())
        subject = who.subject or hashlib.sha256(who.email.encode()).hexdigest()[:43]
        claims: dict[str, Any] = {
            "iss": self.issuer_in_token or self.issuer,
            "sub": subject,
            "aud": self.audience or grant.client_id,
            "exp": now + 3600,
            "iat": now,
            "nbf": now,
            "auth_time": auth_time,
            "amr": who.amr,
            "email": who.email,
            "upn": who.email,
            "preferred_username": who.email,
            "oid": subject[:36],
            "tid": TENANT,
            "ver": "2.0",
        }
        if grant.nonce is not None:
            claims["nonce"] = grant.nonce
        if self.nonce_as_list:
            claims["nonce"] = [claims.get("nonce")]
        if who.acr is not None:
            claims["acr"] = who.acr
        key = _key(self.key.kid or "") if self.forge else self.key
        return jwt.encode({"alg": "RS256", "kid": key.kid, "typ": "JWT"}, claims, key)
