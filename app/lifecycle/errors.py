"""Typed domain errors. Each carries a short message written for the person who acted."""

from __future__ import annotations

from app.store.models import RequestState

# How a refusal names the state a request has moved on to ("Request #12 has ended.").
STATE_WORDS = {
    RequestState.APPROVED: "has already been approved",
    RequestState.GRANTING: "has already been approved and access is being set up",
    RequestState.ACTIVE: "has already been approved and access is active",
    RequestState.REVOKING: "is ending",
    RequestState.ENDED: "has ended",
    RequestState.DENIED: "has already been denied",
    RequestState.CANCELLED: "was cancelled",
    RequestState.TIMED_OUT: "timed out without a decision",
    RequestState.GRANT_FAILED: "failed when access was being set up",
    RequestState.REVOKE_FAILED: "is ending (removing access needs another try)",
}


class ServiceError(Exception):
    """Base of every refusal the service gives; `message` is safe to show to the user."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        # Which input was wrong ("access", "duration", "reason", "ticket"), so a form can show
        # the message on that field.
        self.field = field


class NotFound(ServiceError):
    pass


class InvalidRequest(ServiceError):
    """The request itself is malformed: short reason, bad duration, missing ticket."""


class NotEligible(ServiceError):
    """The policy does not allow this person this access."""


class NotAllowed(ServiceError):
    """The person may not take this action on this request (not an approver, not the owner)."""


class SelfApproval(NotAllowed):
    pass


class AlreadyDecided(ServiceError):
    """The request is no longer in a state where this action applies."""


class StepUpNeeded(NotAllowed):
    """The path needs a fresh sign-in with the identity provider before an approval counts."""
