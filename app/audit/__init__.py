"""Hash-chained, append-only audit trail."""

from app.audit.chain import (
    GENESIS_HASH,
    Checkpoint,
    VerifyResult,
    append,
    canonical_json,
    event_hash,
    head,
    newest_checkpoint,
    verify,
    verify_rows,
    write_signed_checkpoint,
)
from app.audit.export import FORMATS, export

__all__ = [
    "FORMATS",
    "GENESIS_HASH",
    "Checkpoint",
    "VerifyResult",
    "append",
    "canonical_json",
    "event_hash",
    "export",
    "head",
    "newest_checkpoint",
    "verify",
    "verify_rows",
    "write_signed_checkpoint",
]
