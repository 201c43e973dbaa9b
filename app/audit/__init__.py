"""Hash-chained, append-only audit trail."""

from app.audit.chain import (
    GENESIS_HASH,
    Checkpoint,
    CheckpointError,
    Entry,
    VerifyResult,
    append,
    append_many,
    canonical_json,
    event_hash,
    head,
    verify,
)
from app.audit.checkpoints import (
    CheckpointSetupError,
    TrailReport,
    check_trail,
    current_checkpoint,
    read_checkpoints,
    write_signed_checkpoint,
)
from app.audit.export import FORMATS, ExportError, export

__all__ = [
    "FORMATS",
    "GENESIS_HASH",
    "Checkpoint",
    "CheckpointError",
    "CheckpointSetupError",
    "Entry",
    "ExportError",
    "TrailReport",
    "VerifyResult",
    "append",
    "append_many",
    "canonical_json",
    "check_trail",
    "current_checkpoint",
    "event_hash",
    "export",
    "head",
    "read_checkpoints",
    "verify",
    "write_signed_checkpoint",
]
