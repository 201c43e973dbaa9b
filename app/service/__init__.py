"""Use cases of the request lifecycle; the only writer of request state."""

from app.lifecycle.errors import (
    AlreadyDecided,
    InvalidRequest,
    NotAllowed,
    NotEligible,
    NotFound,
    SelfApproval,
    ServiceError,
)
from app.lifecycle.snapshots import DecisionView, RequestView, ReviewView
from app.service.access import AccessService
from app.service.grants import ReconcileReport

__all__ = [
    "AccessService",
    "AlreadyDecided",
    "DecisionView",
    "InvalidRequest",
    "NotAllowed",
    "NotEligible",
    "NotFound",
    "ReconcileReport",
    "RequestView",
    "ReviewView",
    "SelfApproval",
    "ServiceError",
]
