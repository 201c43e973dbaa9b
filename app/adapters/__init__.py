"""Target-system adapters: grant, revoke, check. They know nothing of Slack or policy."""

from app.adapters.base import (
    Adapter,
    AdapterError,
    GrantResult,
    PermanentAdapterError,
    RevokeResult,
    TransientAdapterError,
)

__all__ = [
    "Adapter",
    "AdapterError",
    "GrantResult",
    "PermanentAdapterError",
    "RevokeResult",
    "TransientAdapterError",
]
