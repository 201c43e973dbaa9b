"""What a feature's service stands on: the request core it is given (app/digest, app/standing,
app/identities, app/reviews, app/tickets)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.policy.model import Policy

if TYPE_CHECKING:
    from app.service.access import AccessService


class FeatureService:
    """A feature's use cases over the request core: its database and clock, and the policy in
    force now, read from the core on every call (a policy reload replaces the core's)."""

    def __init__(self, core: AccessService) -> None:
        self.core = core
        self.db = core.db
        self.clock = core.clock

    @property
    def policy(self) -> Policy:
        return self.core.policy
