"""The OpenID Connect relying party: discovery, the authorization request (code flow with PKCE
S256), the code exchange and full validation of the ID token (signature against the provider's
JWKS, issuer, audience, nonce, expiry, issued-at, auth_time within max_age, amr and acr as the
policy asks). JOSE work is joserfc's; the clock is injected, never the wall clock."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
from joserfc import jws, jwt
from joserfc.errors import ExpiredTokenError, JoseError
from joserfc.jwk import KeySet

from app.clock import Clock
from app.policy.model import IdentityProvider
from app.wording import plural

DISCOVERY = "/.well-known/openid-configuration"
ALGORITHMS = ["RS256"]  # what Entra ID signs with; never "none" or an HMAC with a public key
SKEW = timedelta(seconds=60)  # clock difference allowed between the provider and WardKey


class SignInRefused(Exception):
    """The provider's answer does not prove what the approval needs; `message` says why, in
    words for the approver's page."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason  # one word for the log and the sign-in's outcome


@dataclass(frozen=True)
class SignInProof:
    """What a validated ID token says about the sign-in."""

    issuer: str
    subject: str
    name: str  # the mapped claim's value (email, upn or preferred_username), lower case
    amr: tuple[str, ...]
    acr: str | None
    auth_time: datetime

    def audit(self) -> dict[str, object]:
        return {
            "issuer": self.issuer,
            "subject": self.subject,
            "signed_in_as": self.name,
            "amr": list(self.amr),
            "acr": self.acr,
            "auth_time": self.auth_time.isoformat(),
        }


def new_secret() -> str:
    """A random value for a link, state, nonce or PKCE verifier (43 URL-safe characters)."""
    return secrets.token_urlsafe(32)


def s256(verifier: str) -> str:
    """The PKCE S256 code challenge of a verifier (RFC 7636 section 4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class OpenIDProvider:
    """One identity provider as the policy describes it, with its discovery document and keys
    read once and kept (the keys read again when a token names a key not yet seen)."""

    def __init__(
        self, settings: IdentityProvider, client_secret: str, http: httpx.Client, clock: Clock
    ) -> None:
        self.settings = settings
        self.client_secret = client_secret
        self.http = http
        self.clock = clock
        self._lock = threading.Lock()
        self._metadata: dict[str, Any] | None = None
        self._keys: KeySet | None = None

    # ------------------------------------------------------------------------ discovery

    def metadata(self) -> dict[str, Any]:
        with self._lock:
            if self._metadata is None:
                url = self.settings.issuer.rstrip("/") + DISCOVERY
                found = self._get_json(url, "its discovery document")
                if found.get("issuer") != self.settings.issuer:
                    raise SignInRefused(
                        "The identity provider's discovery document names another issuer "
                        f"({found.get('issuer')!s}), so WardKey cannot trust its sign-ins. "
                        "Tell the WardKey admins.",
                        "issuer_mismatch",
                    )
                for needed in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                    if not isinstance(found.get(needed), str):
                        raise SignInRefused(
                            f"The identity provider's discovery document has no {needed}. "
                            "Tell the WardKey admins.",
                            "bad_discovery",
                        )
                self._metadata = found
            return self._metadata

    def _key_set(self, refresh: bool = False) -> KeySet:
        uri = str(self.metadata()["jwks_uri"])
        with self._lock:
            if self._keys is None or refresh:
                self._keys = KeySet.import_key_set(self._get_json(uri, "its signing keys"))  # type: ignore[arg-type]
            return self._keys

    def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            answer = self.http.get(url)
            answer.raise_for_status()
            body = answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise SignInRefused(
                f"WardKey could not read {what} from the identity provider "
                f"({type(exc).__name__}); try again in a minute, or tell the WardKey admins.",
                "provider_unreachable",
            ) from None
        if not isinstance(body, dict):
            raise SignInRefused(
                f"The identity provider sent {what} in a form WardKey does not know.",
                "bad_discovery",
            )
        return body

    # -------------------------------------------------------------------- authorization

    def authorization_url(
        self, redirect_uri: str, state: str, nonce: str, verifier: str, login_hint: str | None
    ) -> str:
        """Where the approver's browser goes to sign in: a fresh sign-in (prompt=login,
        max_age), PKCE S256, our state and nonce."""
        settings = self.settings
        params = {
            "response_type": "code",
            "client_id": settings.client_id,
            "redirect_uri": redirect_uri,
            "scope": "openid email profile",
            "state": state,
            "nonce": nonce,
            "code_challenge": s256(verifier),
            "code_challenge_method": "S256",
            "prompt": "login",
            "max_age": str(int(settings.max_age.total_seconds())),
        }
        if settings.acr_values:
            params["acr_values"] = " ".join(settings.acr_values)
        if login_hint:
            params["login_hint"] = login_hint
        endpoint = str(self.metadata()["authorization_endpoint"])
        return endpoint + ("&" if "?" in endpoint else "?") + urlencode(params)

    def exchange(self, code: str, verifier: str, redirect_uri: str) -> str:
        """The ID token for an authorization code (with its PKCE verifier)."""
        metadata = self.metadata()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        methods = metadata.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        auth: tuple[str, str] | None = None
        if "client_secret_basic" in methods:
            auth = (self.settings.client_id, self.client_secret)
        else:
            form.update(client_id=self.settings.client_id, client_secret=self.client_secret)
        try:
            answer = self.http.post(
                str(metadata["token_endpoint"]),
                data=form,
                auth=auth or httpx.USE_CLIENT_DEFAULT,
                headers={"Accept": "application/json"},
            )
            body = answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise SignInRefused(
                "WardKey could not finish the sign-in with the identity provider "
                f"({type(exc).__name__}); click Approve again for a new link.",
                "token_unreachable",
            ) from None
        if answer.status_code != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else None
            raise SignInRefused(
                f"The identity provider did not accept the sign-in ({error or answer.status_code})"
                "; click Approve again for a new link.",
                "code_refused",
            )
        token = body.get("id_token")
        if not isinstance(token, str):
            raise SignInRefused(
                "The identity provider sent no ID token; tell the WardKey admins.", "no_id_token"
            )
        return token

    # --------------------------------------------------------------------- validation

    def verify(self, id_token: str, nonce: str) -> SignInProof:
        """The ID token's claims, once every check has passed; SignInRefused otherwise."""
        try:
            token = jwt.decode(id_token, self._key_for(id_token), algorithms=ALGORITHMS)
        except JoseError as exc:
            raise SignInRefused(
                "The sign-in's ID token is not signed by the identity provider's keys, so it "
                "proves nothing; nothing was approved.",
                f"bad_signature:{exc.error}",
            ) from None
        claims = token.claims
        settings = self.settings
        now = self.clock.now()
        registry = jwt.JWTClaimsRegistry(
            now=int(now.timestamp()),
            leeway=int(SKEW.total_seconds()),
            iss={"essential": True, "value": settings.issuer},
            aud={"essential": True, "value": settings.client_id},
            sub={"essential": True},
            exp={"essential": True},
            iat={"essential": True},
            nonce={"essential": True, "value": nonce},
        )
        try:
            registry.validate(claims)
        except JoseError as exc:
            claim = "exp" if isinstance(exc, ExpiredTokenError) else getattr(exc, "claim", "")
            raise SignInRefused(
                _claim_refusal(claim, exc), f"bad_claim:{claim or exc.error}"
            ) from None
        if not isinstance(claims.get("nonce"), str) or not hmac.compare_digest(
            str(claims["nonce"]).encode(), nonce.encode()
        ):
            # A string, and exactly this sign-in's: joserfc's value check passes an array
            # that merely holds it (OpenID Connect Core 1.0 section 2: nonce is a string).
            raise SignInRefused(_claim_refusal("nonce", None), "bad_claim:nonce")
        audience = claims["aud"]
        if (
            isinstance(audience, list)
            and len(audience) > 1
            and claims.get("azp") != settings.client_id
        ):
            raise SignInRefused(_claim_refusal("azp", None), "bad_claim:azp")
        auth_time = claims.get("auth_time")
        if not isinstance(auth_time, int | float) or isinstance(auth_time, bool):
            raise SignInRefused(
                "The ID token does not say when you signed in (auth_time), so WardKey cannot "
                "tell that the sign-in was fresh; nothing was approved. (WardKey admins: add "
                "auth_time to the ID token's optional claims.)",
                "no_auth_time",
            )
        signed_in = datetime.fromtimestamp(auth_time, UTC)
        if signed_in > now + SKEW or now - signed_in > settings.max_age:
            raise SignInRefused(
                "Your sign-in was not fresh: approving on this path needs a sign-in within "
                f"{_minutes(settings.max_age)}. Click Approve again and sign in afresh; "
                "nothing was approved.",
                "stale_sign_in",
            )
        amr = claims.get("amr") or []
        amr = tuple(str(m) for m in amr) if isinstance(amr, list) else ()
        missing = [m for m in settings.amr if m not in amr]
        if missing:
            raise SignInRefused(
                "Your sign-in did not use what approving on this path needs ("
                + ", ".join(missing)
                + ", e.g. multi-factor authentication); sign in with it and click Approve "
                "again. Nothing was approved.",
                "amr_missing",
            )
        acr = claims.get("acr")
        acr = str(acr) if acr is not None else None
        if settings.acr_values and acr not in settings.acr_values:
            raise SignInRefused(
                "Your sign-in was not at the level approving on this path needs "
                f"({' or '.join(settings.acr_values)}); nothing was approved.",
                "acr_missing",
            )
        name = claims.get(settings.claim)
        if not isinstance(name, str) or not name:
            raise SignInRefused(
                f"The ID token has no {settings.claim} claim to tell who signed in; nothing "
                "was approved. (WardKey admins: add it to the ID token's claims.)",
                "no_name_claim",
            )
        return SignInProof(
            issuer=str(claims["iss"]),
            subject=str(claims["sub"]),
            name=name.strip().lower(),
            amr=amr,
            acr=acr,
            auth_time=signed_in,
        )

    def _key_for(self, id_token: str) -> KeySet:
        """The provider's keys, read again once if the token names a key not among them (the
        provider rolled its keys)."""
        keys = self._key_set()
        try:
            kid = jws.extract_compact(id_token.encode("ascii")).headers().get("kid")
        except (JoseError, ValueError, UnicodeError):
            kid = None
        if kid is not None and all(k.kid != kid for k in keys.keys):
            keys = self._key_set(refresh=True)
        return keys


def _claim_refusal(claim: str, exc: JoseError | None) -> str:
    words = {
        "iss": "was issued by another identity provider than the one this trust uses",
        "aud": "was issued for another application, not WardKey",
        "azp": "was issued for another application, not WardKey",
        "nonce": "does not belong to this sign-in (its nonce differs)",
        "exp": "has expired",
        "iat": "was issued at a time WardKey cannot accept",
        "sub": "names nobody",
    }
    what = words.get(claim, f"failed a check ({exc.error if exc else claim})")
    return f"The sign-in's ID token {what}, so it proves nothing; nothing was approved."


def _minutes(span: timedelta) -> str:
    minutes = int(span.total_seconds() // 60)
    return plural(minutes, "minute") if minutes else plural(int(span.total_seconds()), "second")
