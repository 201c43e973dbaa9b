"""Hash-chained, append-only audit trail."""

from app.audit.chain import (
    GENESIS_HASH,
    Checkpoint,
    VerifyResult,
    append,
    canonical_json,
    event_hash,
    export_jsonl,
    head,
    verify,
    verify_rows,
)

__all__ = [
    "GENESIS_HASH",
    "Checkpoint",
    "VerifyResult",
    "append",
    "canonical_json",
    "event_hash",
    "export_jsonl",
    "head",
    "verify",
    "verify_rows",
]
