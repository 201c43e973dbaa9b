"""The tamper-evident audit trail: append, verify, checkpoint, export.

Each event's hash covers its sequence number, its predecessor's hash, its indexed columns and its
canonical JSON body, so editing, deleting or reordering any stored event breaks the chain at that
event. A checkpoint (sequence number and hash kept off the box) also exposes a cut-off tail.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from app.store.db import Database
from app.store.models import AuditEvent

GENESIS_HASH = "0" * 64
# pg_advisory_xact_lock key that serialises appends, so concurrent writers cannot fork the chain.
_APPEND_LOCK_KEY = 0x5741524B4B4559  # "WARKKEY"
_FORBIDDEN_KEYS = ("password", "secret", "token", "private_key", "passphrase")
_BATCH = 20_000


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("audit times must be timezone-aware")
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cannot put {type(value).__name__} in an audit event")


def canonical_json(value: Mapping[str, Any]) -> str:
    """Sorted keys, no spaces, UTF-8 text, UTC ISO-8601 times: one encoding per event."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default
    )


def _check_no_secrets(data: Mapping[str, Any], where: str = "") -> None:
    for key, value in data.items():
        if any(word in key.lower() for word in _FORBIDDEN_KEYS):
            raise ValueError(
                f"refusing to write '{where}{key}' to the audit trail: secrets never go in"
            )
        if isinstance(value, Mapping):
            _check_no_secrets(value, f"{where}{key}.")


def append(
    session: Session,
    *,
    at: datetime,
    action: str,
    actor: str,
    request_id: int | None = None,
    data: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """Add one event to the chain inside the caller's transaction (commit makes it durable)."""
    details = dict(data or {})
    _check_no_secrets(details)
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _APPEND_LOCK_KEY})
    # SQLite transactions here begin IMMEDIATE, so writers are already serialised.
    head = session.execute(
        select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)
    ).first()
    seq, prev_hash = (head[0] + 1, head[1]) if head else (1, GENESIS_HASH)
    body = canonical_json(
        {"action": action, "actor": actor, "at": at, "request_id": request_id, "data": details}
    )
    event = AuditEvent(
        seq=seq,
        at=at,
        action=action,
        request_id=request_id,
        prev_hash=prev_hash,
        hash=event_hash(seq, prev_hash, action, request_id, body),
        body=body,
    )
    session.add(event)
    session.flush()
    return event


@dataclass(frozen=True)
class Checkpoint:
    """The chain's head at a moment, kept off this machine: a later chain must still contain
    it, so a cut-off tail is found. Signed (HMAC-SHA256), it cannot be forged by whoever can
    write the database and the place it is kept, without the key."""

    seq: int
    hash: str
    at: datetime | None = None
    signature: str | None = None

    def _signed_text(self) -> bytes:
        return canonical_json({"seq": self.seq, "hash": self.hash, "at": self.at}).encode()

    def signed(self, key: bytes) -> Checkpoint:
        mac = hmac.new(key, self._signed_text(), hashlib.sha256).hexdigest()
        return Checkpoint(self.seq, self.hash, self.at, mac)

    def signature_ok(self, key: bytes) -> bool:
        expected = hmac.new(key, self._signed_text(), hashlib.sha256).hexdigest()
        return self.signature is not None and hmac.compare_digest(expected, self.signature)

    def to_json(self) -> str:
        data: dict[str, Any] = {"seq": self.seq, "hash": self.hash, "at": self.at}
        if self.signature is not None:
            data.update(signature=self.signature, signature_alg="HMAC-SHA256")
        return canonical_json(data)

    @classmethod
    def from_json(cls, raw: str) -> Checkpoint:
        data = json.loads(raw)
        at = data.get("at")
        return cls(
            seq=int(data["seq"]),
            hash=str(data["hash"]),
            at=datetime.fromisoformat(at.replace("Z", "+00:00")) if at else None,
            signature=data.get("signature"),
        )


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    head: Checkpoint | None
    broken_seq: int | None = None
    problem: str = ""

    def summary(self) -> str:
        if self.ok:
            where = f" up to event {self.head.seq} ({self.head.hash[:16]}…)" if self.head else ""
            return f"OK: {self.checked} events verified{where}"
        return f"BROKEN at event {self.broken_seq}: {self.problem}"


Row = tuple[int, str, str, int | None, str, str]
# What verification needs of one event: seq, prev_hash and stored hash as raw 32-byte digests,
# and the bytes its hash covers.
Link = tuple[int, bytes, bytes, bytes]
_ROWS = "SELECT seq, prev_hash, action, request_id, hash, body FROM audit_events ORDER BY seq"
# PostgreSQL assembles each preimage itself and sends binary columns: building Python strings
# per event would cost more than hashing it. A server that lies could fake any row anyway, so
# letting it concatenate trusts it with nothing new.
_PG_LINKS = (
    "SELECT seq, decode(prev_hash, 'hex'), decode(hash, 'hex'), convert_to(seq::text || '|' || "
    "prev_hash || '|' || action || '|' || coalesce(request_id::text, '') || '|' || body, 'UTF8') "
    "FROM audit_events ORDER BY seq"
)


def preimage(seq: int, prev_hash: str, action: str, request_id: int | None, body: str) -> bytes:
    rid = "" if request_id is None else request_id
    return f"{seq}|{prev_hash}|{action}|{rid}|{body}".encode()


def event_hash(seq: int, prev_hash: str, action: str, request_id: int | None, body: str) -> str:
    return hashlib.sha256(preimage(seq, prev_hash, action, request_id, body)).hexdigest()


def verify_links(links: Iterable[Link], checkpoint: Checkpoint | None = None) -> VerifyResult:
    """Walk the chain in sequence order and stop at the first event that does not hold."""
    expected_seq, expected_prev = 1, bytes.fromhex(GENESIS_HASH)
    checked = 0
    sha256 = hashlib.sha256
    for seq, prev_hash, stored_hash, image in links:
        if seq != expected_seq:
            gap = "missing (deleted)" if seq > expected_seq else "out of order"
            return _broken(checked, expected_seq, expected_prev, f"event {expected_seq} is {gap}")
        if prev_hash != expected_prev:
            return _broken(
                checked,
                seq,
                expected_prev,
                "does not follow the event before it (an event was deleted or reordered)",
            )
        if sha256(image).digest() != stored_hash:
            return _broken(checked, seq, expected_prev, "contents do not match its hash (edited)")
        if (
            checkpoint is not None
            and seq == checkpoint.seq
            and stored_hash.hex() != checkpoint.hash
        ):
            return _broken(
                checked,
                seq,
                expected_prev,
                "differs from the exported checkpoint (history was rewritten after it)",
            )
        expected_seq, expected_prev = seq + 1, stored_hash
        checked += 1
    head = Checkpoint(checked, expected_prev.hex()) if checked else None
    if checkpoint is not None and checked < checkpoint.seq:
        return VerifyResult(
            False,
            checked,
            head,
            checked + 1,
            f"the trail ends at event {checked} but the checkpoint records event "
            f"{checkpoint.seq}: {checkpoint.seq - checked} event(s) were cut from the end",
        )
    return VerifyResult(True, checked, head)


def _broken(checked: int, seq: int, last_good: bytes, problem: str) -> VerifyResult:
    head = Checkpoint(checked, last_good.hex()) if checked else None
    return VerifyResult(False, checked, head, seq, problem)


def _digest(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:  # a hash edited into something that is not hex cannot match anything
        return b"not hex: " + text.encode()


def verify_rows(rows: Iterable[Row], checkpoint: Checkpoint | None = None) -> VerifyResult:
    """Verify rows of (seq, prev_hash, action, request_id, hash, body) in sequence order."""
    return verify_links(
        (
            (seq, _digest(prev), _digest(stored), preimage(seq, prev, action, rid, body))
            for seq, prev, action, rid, stored, body in rows
        ),
        checkpoint,
    )


def _stream(db: Database, query: str, binary: bool = False) -> Iterator[Any]:
    """Rows straight from the driver, in batches (a server-side cursor on PostgreSQL)."""
    raw = db.engine.raw_connection()
    try:
        if db.is_sqlite:
            cursor = raw.cursor()
        else:
            cursor = raw.driver_connection.cursor(  # type: ignore[union-attr]
                name="wardkey_audit", binary=binary
            )
        cursor.execute(query)
        while batch := cursor.fetchmany(_BATCH):
            yield from batch
        cursor.close()
        raw.rollback()
    finally:
        raw.close()


def iter_rows(db: Database) -> Iterator[Row]:
    """The chain in sequence order as (seq, prev_hash, action, request_id, hash, body)."""
    return _stream(db, _ROWS)


def verify(db: Database, checkpoint: Checkpoint | None = None) -> VerifyResult:
    if db.is_sqlite:
        return verify_rows(iter_rows(db), checkpoint)
    return verify_links(_stream(db, _PG_LINKS, binary=True), checkpoint)


def head(db: Database) -> Checkpoint | None:
    with db.read() as session:
        row = session.execute(
            select(AuditEvent.seq, AuditEvent.hash, AuditEvent.at)
            .order_by(AuditEvent.seq.desc())
            .limit(1)
        ).first()
    return Checkpoint(row[0], row[1], row[2]) if row else None


def write_signed_checkpoint(db: Database, directory: Path, key: bytes) -> Path | None:
    """Sign the chain's head and write it to `directory` (a mount of another machine or a
    write-once store), named by its sequence number; None when the trail is empty. The file is
    written whole or not at all."""
    current = head(db)
    if current is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"wardkey-checkpoint-{current.seq:012d}.json"
    partial = path.with_suffix(".partial")
    partial.write_text(current.signed(key).to_json() + "\n", encoding="utf-8")
    os.replace(partial, path)
    return path


def newest_checkpoint(place: Path) -> Checkpoint:
    """A checkpoint file, or the newest in a directory of them."""
    if place.is_dir():
        files = sorted(place.glob("wardkey-checkpoint-*.json"))
        if not files:
            raise FileNotFoundError(f"no wardkey-checkpoint-*.json in {place}")
        place = files[-1]
    return Checkpoint.from_json(place.read_text(encoding="utf-8"))
