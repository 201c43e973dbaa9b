"""Hash-chained, append-only audit trail."""

from app.audit.chain import (
    GENESIS_HASH,
    Checkpoint,
    CheckpointError,
    VerifyResult,
    append,
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
    "ExportError",
    "TrailReport",
    "VerifyResult",
    "append",
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
