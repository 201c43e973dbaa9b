"""Adapters for the policy's targets, built from their settings and secrets.

The registry reads a target through `TargetSpec`, the few fields it needs, and never imports
the policy (DESIGN: adapters know nothing of policy); `app.policy.model.Target` has that shape.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ValidationError

from app.adapters.base import Adapter
from app.adapters.entra import EntraAdapter, EntraSettings
from app.adapters.ldap import LdapAdapter, LdapSettings
from app.adapters.postgres import PostgresAdapter, PostgresSettings
from app.adapters.webhook import WebhookAdapter, WebhookSettings

log = logging.getLogger(__name__)


class RoleSpec(Protocol):
    """What the registry reads of a target's role."""

    @property
    def entitlement(self) -> str: ...
    @property
    def record_sessions(self) -> bool: ...


class TargetSpec(Protocol):
    """What the registry reads of a target: its kind, settings, secrets (by environment
    variable name), whether it is a test system (`insecure`) and its roles."""

    @property
    def kind(self) -> str: ...
    @property
    def settings(self) -> Mapping[str, Any]: ...
    @property
    def secrets(self) -> Mapping[str, str]: ...
    @property
    def insecure(self) -> bool: ...
    @property
    def roles(self) -> Mapping[str, RoleSpec]: ...


class TargetsSpec(Protocol):
    """Anything with named targets: a policy."""

    @property
    def targets(self) -> Mapping[str, TargetSpec]: ...


class AdapterConfigError(Exception):
    pass


def _secret(
    name: str, target: TargetSpec, env: Mapping[str, str], key: str, required: bool = True
) -> str | None:
    """The secret the policy names by environment variable; never the secret in the policy."""
    variable = target.secrets.get(key)
    if variable is None:
        if required:
            raise AdapterConfigError(f"targets.{name}.secrets.{key}: required for {target.kind}")
        return None
    value = env.get(variable, "")
    if not value:
        raise AdapterConfigError(f"targets.{name}: set the environment variable {variable}")
    return value


def _recorded(target: TargetSpec) -> set[str]:
    return {role.entitlement for role in target.roles.values() if role.record_sessions}


def _webhook(name: str, target: TargetSpec, env: Mapping[str, str]) -> Adapter:
    key = _secret(name, target, env, "signing_key") or ""
    return WebhookAdapter(WebhookSettings.model_validate(target.settings), key.encode())


def _postgres(name: str, target: TargetSpec, env: Mapping[str, str]) -> Adapter:
    # No password is right for peer, certificate or trust authentication.
    password = _secret(name, target, env, "password", required=False)
    settings = PostgresSettings.model_validate(target.settings)
    return PostgresAdapter(settings, password, recorded=_recorded(target))


def _ldap(name: str, target: TargetSpec, env: Mapping[str, str]) -> Adapter:
    password = _secret(name, target, env, "bind_password") or ""
    return LdapAdapter(LdapSettings.model_validate(target.settings), password)


def _entra(name: str, target: TargetSpec, env: Mapping[str, str]) -> Adapter:
    secret = _secret(name, target, env, "client_secret") or ""
    return EntraAdapter(EntraSettings.model_validate(target.settings), secret)


FACTORIES: dict[str, Callable[[str, TargetSpec, Mapping[str, str]], Adapter]] = {
    "webhook": _webhook,
    "postgres": _postgres,
    "ldap": _ldap,
    "entra": _entra,
}
SETTINGS: dict[str, type[BaseModel]] = {
    "webhook": WebhookSettings,
    "postgres": PostgresSettings,
    "ldap": LdapSettings,
    "entra": EntraSettings,
}


def settings_problems(target: TargetSpec) -> list[tuple[tuple[str | int, ...], str]]:
    """Shape errors in a target's settings, as (location under settings, message)."""
    model = SETTINGS.get(target.kind)
    if model is None:
        return []
    try:
        model.model_validate(target.settings)
    except ValidationError as exc:
        return [(tuple(e["loc"]), str(e["msg"])) for e in exc.errors()]
    return []


# ------------------------------------------------------------------ connection safety

# The secret each kind takes from `secrets:`, named in the advice for a password in a URL.
SECRET_KEYS = {
    "webhook": "signing_key",
    "postgres": "password",
    "ldap": "bind_password",
    "entra": "client_secret",
}
# A query parameter whose name ends in one of these carries a credential (`?design=` does not).
_SECRET_PARAMETER = re.compile(
    r"[\w.-]*(pass|password|passwd|pwd|secret|token|key|sig|signature|auth|credentials?)",
    re.IGNORECASE,
)
_INSECURE_ADVICE = "or set insecure: true for a test system"

Risk = Literal["credential", "plaintext", "unverified"]


@dataclass(frozen=True)
class ConnectionProblem:
    """A target setting that exposes a credential, or sends traffic in clear or unverified.

    `insecure: true` on the target accepts a plaintext or unverified connection (a test
    system); a credential in the settings is refused whatever the target says."""

    loc: tuple[str | int, ...]  # under the target, e.g. ("settings", "url")
    risk: Risk
    danger: str  # what goes wrong
    fix: str  # what to do instead

    @property
    def field(self) -> str:
        return ".".join(str(part) for part in self.loc)

    @property
    def excusable(self) -> bool:
        return self.risk != "credential"

    @property
    def error(self) -> str:
        if not self.excusable:
            return f"{self.danger}; {self.fix}"
        return f"{self.danger}; {self.fix}, {_INSECURE_ADVICE}"

    @property
    def warning(self) -> str:
        return f"{self.danger} (accepted because insecure: true; a test system only)"


def connection_problems(target: TargetSpec) -> list[ConnectionProblem]:
    """Every credential in the target's settings and every plaintext or unverified
    connection it would make; transport is judged once the settings have a valid shape."""
    found = list(_credentials(target))
    model = SETTINGS.get(target.kind)
    transport = TRANSPORT.get(target.kind)
    if model is None or transport is None:
        return found
    try:
        settings = model.model_validate(target.settings)
    except ValidationError:
        return found  # settings_problems reports the shape
    return [*found, *transport(settings)]


def _credentials(target: TargetSpec) -> Iterator[ConnectionProblem]:
    secret = SECRET_KEYS.get(target.kind, "password")
    fix = (
        "put the password in secrets:, by environment variable name "
        f"(secrets: {{{secret}: SOME_ENV_VAR}})"
    )
    for key, value in target.settings.items():
        if not isinstance(value, str):
            continue
        if _url_credential(value) or (target.kind == "postgres" and _conninfo(key, value)):
            yield ConnectionProblem(
                ("settings", key), "credential", "carries a user name, password or token", fix
            )


def _url_credential(value: str) -> bool:
    """A URL with user information (user:password@) or a secret-looking query parameter."""
    if "://" not in value:
        return False
    try:
        parts = urlsplit(value.strip())
    except ValueError:
        return "@" in value
    if "@" in parts.netloc:
        return True
    return any(_SECRET_PARAMETER.fullmatch(name) for name, _ in parse_qsl(parts.query))


def _conninfo(key: str, value: str) -> bool:
    """A PostgreSQL host or database name that is really a connection string: libpq would
    read a password from it, and its errors would repeat it."""
    if key not in ("host", "hostaddr", "dbname"):
        return False
    # A leading @ is an abstract Unix socket's name, not user information.
    return any(c.isspace() for c in value) or "=" in value or "@" in value[1:]


def _ldap_transport(settings: BaseModel) -> Iterator[ConnectionProblem]:
    assert isinstance(settings, LdapSettings)
    if settings.url.lower().startswith("ldap://") and not settings.start_tls:
        yield ConnectionProblem(
            ("settings", "url"),
            "plaintext",
            "ldap:// sends the bind password in clear",
            "use ldaps:// or start_tls: true",
        )
    if not settings.verify_tls:
        yield ConnectionProblem(
            ("settings", "verify_tls"),
            "unverified",
            "false accepts any certificate, so anyone on the network can pose as the directory "
            "and take the bind password",
            "give the directory's CA in ca_file and leave verify_tls on",
        )


def _postgres_transport(settings: BaseModel) -> Iterator[ConnectionProblem]:
    assert isinstance(settings, PostgresSettings)
    # libpq never uses TLS on a Unix-domain socket, and nothing there crosses the network.
    local = all(h.strip().startswith(("/", "@")) for h in settings.host.split(","))
    if local:
        return
    if settings.sslmode in ("disable", "allow", "prefer"):
        yield ConnectionProblem(
            ("settings", "sslmode"),
            "plaintext",
            f"{settings.sslmode} lets the password and query results cross the network in clear",
            "use verify-full (with the server's CA)",
        )
    elif settings.sslmode == "require":
        yield ConnectionProblem(
            ("settings", "sslmode"),
            "unverified",
            "require does not check the server's certificate, so anyone on the network can "
            "pose as the server",
            "use verify-full (with the server's CA)",
        )


def _webhook_transport(settings: BaseModel) -> Iterator[ConnectionProblem]:
    assert isinstance(settings, WebhookSettings)
    if settings.url.scheme == "http":
        yield ConnectionProblem(
            ("settings", "url"),
            "plaintext",
            "http:// lets anyone on the network read the requests and forge the answers",
            "use https://",
        )
    if not settings.verify_tls:
        yield ConnectionProblem(
            ("settings", "verify_tls"),
            "unverified",
            "false accepts any certificate, so anyone on the network can pose as the target "
            "and forge its answers",
            "give the target a certificate the system trusts and leave verify_tls on",
        )


def _entra_transport(settings: BaseModel) -> Iterator[ConnectionProblem]:
    assert isinstance(settings, EntraSettings)
    for field, url in (("authority", settings.authority), ("graph_url", settings.graph_url)):
        if url.scheme == "http":
            yield ConnectionProblem(
                ("settings", field),
                "plaintext",
                "http:// sends the client secret and access tokens in clear",
                "use https://",
            )


TRANSPORT: dict[str, Callable[[BaseModel], Iterator[ConnectionProblem]]] = {
    "webhook": _webhook_transport,
    "postgres": _postgres_transport,
    "ldap": _ldap_transport,
    "entra": _entra_transport,
}


def _refuse_or_log(name: str, target: TargetSpec) -> None:
    """At start-up, what `policy check` refuses is refused again (a policy can be built
    without it), and each insecure connection a test system accepts is logged."""
    for problem in connection_problems(target):
        if not (problem.excusable and target.insecure):
            raise AdapterConfigError(f"targets.{name}.{problem.field}: {problem.error}")
        log.warning(
            "event=target_insecure target=%s field=%s risk=%s", name, problem.field, problem.risk
        )


def build_adapters(policy: TargetsSpec, env: Mapping[str, str] | None = None) -> dict[str, Adapter]:
    """One adapter per target this version can reach; others are left out and logged, so
    requests for them are refused with a clear message instead of failing at grant time."""
    env = os.environ if env is None else env
    adapters: dict[str, Adapter] = {}
    for name, target in policy.targets.items():
        _refuse_or_log(name, target)
        factory = FACTORIES.get(target.kind)
        if factory is None:
            log.warning(
                "event=target_not_connected target=%s kind=%s reason=no_adapter_yet",
                name,
                target.kind,
            )
            continue
        adapters[name] = factory(name, target, env)
    return adapters
