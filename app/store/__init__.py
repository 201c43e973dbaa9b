"""Storage: SQLAlchemy models, engine and sessions, Alembic migrations."""

from app.store.db import Database, normalise_url
from app.store.migrate import upgrade
from app.store.models import (
    AccessRequest,
    AuditEvent,
    Decision,
    RequestMessage,
    RequestState,
    Review,
    ReviewState,
)

__all__ = [
    "AccessRequest",
    "AuditEvent",
    "Database",
    "Decision",
    "RequestMessage",
    "RequestState",
    "Review",
    "ReviewState",
    "normalise_url",
    "upgrade",
]
