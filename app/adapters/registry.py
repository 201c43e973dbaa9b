"""Adapters for the policy's targets, built from their settings and secrets."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping

from pydantic import BaseModel, ValidationError

from app.adapters.base import Adapter
from app.adapters.entra import EntraAdapter, EntraSettings
from app.adapters.ldap import LdapAdapter, LdapSettings
from app.adapters.postgres import PostgresAdapter, PostgresSettings
from app.adapters.webhook import WebhookAdapter, WebhookSettings
from app.policy.model import Policy, Target

log = logging.getLogger(__name__)


class AdapterConfigError(Exception):
    pass


def _secret(
    name: str, target: Target, env: Mapping[str, str], key: str, required: bool = True
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


def _recorded(target: Target) -> set[str]:
    return {role.entitlement for role in target.roles.values() if role.record_sessions}


def _webhook(name: str, target: Target, env: Mapping[str, str]) -> Adapter:
    key = _secret(name, target, env, "signing_key") or ""
    return WebhookAdapter(WebhookSettings.model_validate(target.settings), key.encode())


def _postgres(name: str, target: Target, env: Mapping[str, str]) -> Adapter:
    # No password is right for peer, certificate or trust authentication.
    password = _secret(name, target, env, "password", required=False)
    settings = PostgresSettings.model_validate(target.settings)
    return PostgresAdapter(settings, password, recorded=_recorded(target))


def _ldap(name: str, target: Target, env: Mapping[str, str]) -> Adapter:
    password = _secret(name, target, env, "bind_password") or ""
    return LdapAdapter(LdapSettings.model_validate(target.settings), password)


def _entra(name: str, target: Target, env: Mapping[str, str]) -> Adapter:
    secret = _secret(name, target, env, "client_secret") or ""
    return EntraAdapter(EntraSettings.model_validate(target.settings), secret)


FACTORIES: dict[str, Callable[[str, Target, Mapping[str, str]], Adapter]] = {
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


def settings_problems(target: Target) -> list[tuple[tuple[str | int, ...], str]]:
    """Shape errors in a target's settings, as (location under settings, message)."""
    model = SETTINGS.get(target.kind)
    if model is None:
        return []
    try:
        model.model_validate(target.settings)
    except ValidationError as exc:
        return [(tuple(e["loc"]), str(e["msg"])) for e in exc.errors()]
    return []


def build_adapters(policy: Policy, env: Mapping[str, str] | None = None) -> dict[str, Adapter]:
    """One adapter per target this version can reach; others are left out and logged, so
    requests for them are refused with a clear message instead of failing at grant time."""
    env = os.environ if env is None else env
    adapters: dict[str, Adapter] = {}
    for name, target in policy.targets.items():
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
