"""Adapters for the policy's targets, built from their settings and secrets."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping

from pydantic import BaseModel, ValidationError

from app.adapters.base import Adapter
from app.adapters.webhook import WebhookAdapter, WebhookSettings
from app.policy.model import Policy, Target

log = logging.getLogger(__name__)


class AdapterConfigError(Exception):
    pass


def _webhook(name: str, target: Target, env: Mapping[str, str]) -> Adapter:
    settings = WebhookSettings.model_validate(target.settings)
    variable = target.secrets.get("signing_key")
    if variable is None:
        raise AdapterConfigError(f"targets.{name}.secrets.signing_key: required for a webhook")
    key = env.get(variable, "")
    if not key:
        raise AdapterConfigError(f"targets.{name}: set the environment variable {variable}")
    return WebhookAdapter(settings, key.encode())


FACTORIES: dict[str, Callable[[str, Target, Mapping[str, str]], Adapter]] = {
    "webhook": _webhook,
}
SETTINGS: dict[str, type[BaseModel]] = {"webhook": WebhookSettings}


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
