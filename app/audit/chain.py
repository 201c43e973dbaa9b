"""The tamper-evident audit trail: append and verify.

Each event's hash covers its sequence number, its predecessor's hash, its indexed columns and its
canonical JSON body, so editing, deleting or reordering any stored event breaks the chain at that
event. The `at` column is not in the preimage (chains written before this check must still
verify), but the body holds the same time, so verify checks that the column says exactly what
was hashed. A checkpoint (sequence number and hash kept off the box) also exposes a cut-off tail.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from functools import partial
from typing import Any

from sqlalchemy import event, select, text
from sqlalchemy.orm import Session

from app.store.db import Database
from app.store.models import AuditEvent
from app.wording import plural

GENESIS_HASH = "0" * 64
# pg_advisory_xact_lock key that serialises appends, so concurrent writers cannot fork the chain.
_APPEND_LOCK_KEY = 0x5741524B4B4559  # "WARKKEY"
_FORBIDDEN_KEYS = ("password", "secret", "token", "private_key", "passphrase")
_BATCH = 20_000
# Where a session keeps the events appended in its transaction until they are chained at commit.
_PENDING = "audit_events_to_chain"


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
) -> None:
    """Add one event to the chain with the caller's transaction (`append_many`)."""
    append_many(
        session, [Entry(at=at, action=action, actor=actor, request_id=request_id, data=data)]
    )


@dataclass(frozen=True)
class Entry:
    """One event to append (`append_many`)."""

    at: datetime
    action: str
    actor: str
    request_id: int | None = None
    data: Mapping[str, Any] | None = None


def append_many(session: Session, entries: Iterable[Entry]) -> None:
    """Add events to the chain, in order, with the caller's transaction: checked and encoded
    now (a secret refused here, at the caller), chained as the transaction commits.

    Chaining takes the one lock every writer of the trail shares, and holds it until the
    commit. Taken where the events are written, it was held through the rest of the
    transaction's statements, so on a busy worker (a wave of expiries: every writer queued
    behind one slow client) other writers, and the lease renewals waiting on their rows,
    waited for seconds; taken at commit, it covers the head's read, the inserts and the commit.
    Events appended in a transaction that rolls back are dropped with it."""
    bodies = []
    for entry in entries:
        details = dict(entry.data or {})
        _check_no_secrets(details)
        body = canonical_json(
            {
                "action": entry.action,
                "actor": entry.actor,
                "at": entry.at,
                "request_id": entry.request_id,
                "data": details,
            }
        )
        bodies.append((entry, body))
    if bodies:
        session.info.setdefault(_PENDING, []).extend(bodies)


@event.listens_for(Session, "before_commit")
def _chain_pending(session: Session) -> None:
    """Chain the transaction's events onto the head: one lock and one read of the head for all
    of them (a lockdown or a wave of expiries writes hundreds in one transaction), each event
    holding its predecessor's hash."""
    bodies: list[tuple[Entry, str]] = session.info.pop(_PENDING, [])
    if not bodies:
        return
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _APPEND_LOCK_KEY})
    # SQLite transactions here begin IMMEDIATE, so writers are already serialised.
    head = session.execute(
        select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)
    ).first()
    seq, prev_hash = (head[0] + 1, head[1]) if head else (1, GENESIS_HASH)
    events = []
    for entry, body in bodies:
        digest = event_hash(seq, prev_hash, entry.action, entry.request_id, body)
        events.append(
            AuditEvent(
                seq=seq,
                at=entry.at,
                action=entry.action,
                request_id=entry.request_id,
                prev_hash=prev_hash,
                hash=digest,
                body=body,
            )
        )
        seq, prev_hash = seq + 1, digest
    session.add_all(events)
    session.flush()


@event.listens_for(Session, "after_soft_rollback")
def _drop_pending(session: Session, _previous: Any) -> None:
    """A rolled-back transaction's events go with it."""
    session.info.pop(_PENDING, None)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read; the text says what is wrong, never its contents."""


_HEX64 = re.compile(r"[0-9a-f]{64}")
SIGNATURE_ALG = "HMAC-SHA256"


@dataclass(frozen=True)
class Checkpoint:
    """The chain's head at a moment, kept off this machine: a later chain must still contain
    it, so a cut-off tail is found. Signed (HMAC-SHA256), it cannot be forged by whoever can
    write the database and the place it is kept, without the key. `at` is the head event's
    hashed time; `written_at`, when the checkpoint was made (signed too, so a stale one cannot
    pass for fresh). Checkpoints from before `written_at` existed are signed without it and
    still verify."""

    seq: int
    hash: str
    at: datetime | None = None
    signature: str | None = None
    written_at: datetime | None = None

    def _fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"seq": self.seq, "hash": self.hash, "at": self.at}
        if self.written_at is not None:
            fields["written_at"] = self.written_at
        return fields

    def _mac(self, key: bytes) -> str:
        return hmac.new(key, canonical_json(self._fields()).encode(), hashlib.sha256).hexdigest()

    def signed(self, key: bytes) -> Checkpoint:
        return replace(self, signature=self._mac(key))

    def signature_ok(self, key: bytes) -> bool:
        return self.signature is not None and hmac.compare_digest(self._mac(key), self.signature)

    def to_json(self) -> str:
        data = self._fields()
        if self.signature is not None:
            data.update(signature=self.signature, signature_alg=SIGNATURE_ALG)
        return canonical_json(data)

    @classmethod
    def from_json(cls, raw: str) -> Checkpoint:
        """Parse strictly; anything else raises CheckpointError (never a traceback)."""
        try:
            data = json.loads(raw)
        except ValueError:
            raise CheckpointError("not JSON") from None
        if not isinstance(data, dict):
            raise CheckpointError("not a JSON object")
        seq, digest = data.get("seq"), data.get("hash")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise CheckpointError("'seq' must be a whole number of at least 1")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise CheckpointError("'hash' must be 64 lowercase hex digits")
        signature = data.get("signature")
        if signature is not None and not (
            isinstance(signature, str) and _HEX64.fullmatch(signature)
        ):
            raise CheckpointError("'signature' must be 64 lowercase hex digits")
        if data.get("signature_alg", SIGNATURE_ALG) != SIGNATURE_ALG:
            raise CheckpointError(f"'signature_alg' must be {SIGNATURE_ALG}")
        return cls(
            seq=seq,
            hash=digest,
            at=_checkpoint_time(data, "at"),
            signature=signature,
            written_at=_checkpoint_time(data, "written_at"),
        )


def _checkpoint_time(data: Mapping[str, Any], name: str) -> datetime | None:
    value = data.get(name)
    if value is None:
        return None
    when = parse_time(value)
    if when is None:
        raise CheckpointError(f"'{name}' must be an ISO 8601 time with a time zone")
    return when


def parse_time(value: object) -> datetime | None:
    """An ISO 8601 text with a time zone as UTC; None for anything else."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return when.astimezone(UTC) if when.tzinfo is not None else None
    except (ValueError, OverflowError):  # not a time, or one that cannot be put in UTC
        return None


def hashed_time(body: str | bytes) -> datetime | None:
    """The time an event's hashed body records, or None if it records none."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return parse_time(data.get("at")) if isinstance(data, dict) else None


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    head: Checkpoint | None
    broken_seq: int | None = None
    problem: str = ""
    checkpoint: Checkpoint | None = None  # the one the tail was checked against, if any

    def summary(self) -> str:
        if not self.ok:
            return f"BROKEN at event {self.broken_seq}: {self.problem}"
        if self.checkpoint is None:
            return (
                f"OK: {self.checked} events verified (chain only: events cut from the end "
                "would not be seen without a checkpoint)"
            )
        return (
            f"OK: {self.checked} events verified; tail checked against checkpoint seq "
            f"{self.checkpoint.seq}"
        )


Row = tuple[int, str, str, int | None, str, str]
# What verification needs of one event: seq, prev_hash and stored hash as raw 32-byte digests,
# the bytes its hash covers, and whether its `at` column says exactly the time its hashed body
# records (worked out by the database; when it says no, `_time_problem` looks closer).
Link = tuple[int, bytes, bytes, bytes, Any]
_ROWS = "SELECT seq, prev_hash, action, request_id, hash, body FROM audit_events ORDER BY seq"
_PREFIX = "seq || '|' || prev_hash || '|' || action || '|' || coalesce(request_id, '') || '|'"
# The body's own time: canonical JSON sorts its keys, so the first `,"at":"` in a body is the
# top-level one (a quote inside a JSON string is always escaped). The column holds when the text
# `,"at":"<column as canonical JSON writes it>"` is found there first.
_AT = ',"at":"'
# SQLite keeps `at` as text in SQLAlchemy's format, '2026-11-30 03:00:05.000000', and compares
# it as text, so only that exact spelling holds: the same instant spelt another way would sort
# elsewhere in an export or digest. (The mapping to canonical text is one-to-one on it.)
_SQLITE_AT = (
    "CASE WHEN length(at) = 26 AND substr(at, 11, 1) = ' ' AND substr(at, 20, 1) = '.' "
    "THEN substr(at, 1, 10) || 'T' || substr(at, 12, 8) || "
    "CASE WHEN substr(at, 20) = '.000000' THEN '' ELSE substr(at, 20) END || 'Z' END"
)
_PG_UTC = "at AT TIME ZONE 'UTC'"
_PG_AT = (
    f"to_char({_PG_UTC}, 'YYYY-MM-DD\"T\"HH24:MI:SS') || CASE WHEN to_char({_PG_UTC}, 'US') = "
    f"'000000' THEN '' ELSE to_char({_PG_UTC}, '.US') END || 'Z'"
)
_SQLITE_LINKS = (
    f"SELECT seq, prev_hash, hash, CAST({_PREFIX} || body AS BLOB), "
    f"instr(body, '{_AT}') > 0 AND instr(body, '{_AT}' || {_SQLITE_AT} || '\"') = "
    f"instr(body, '{_AT}') FROM audit_events ORDER BY seq"
)
# PostgreSQL sends binary columns, so the digests arrive as bytes. A server that lies could fake
# any row anyway, so letting it concatenate and compare trusts it with nothing new.
_PG_PREFIX = (
    "seq::text || '|' || prev_hash || '|' || action || '|' || coalesce(request_id::text, '') || '|'"
)
_PG_LINKS = (
    f"SELECT seq, decode(prev_hash, 'hex'), decode(hash, 'hex'), "
    f"convert_to({_PG_PREFIX} || body, 'UTF8'), "
    f"strpos(body, '{_AT}') > 0 AND strpos(body, '{_AT}' || {_PG_AT} || '\"') = "
    f"strpos(body, '{_AT}') FROM audit_events ORDER BY seq"
)


def preimage(seq: int, prev_hash: str, action: str, request_id: int | None, body: str) -> bytes:
    rid = "" if request_id is None else request_id
    return f"{seq}|{prev_hash}|{action}|{rid}|{body}".encode()


def event_hash(seq: int, prev_hash: str, action: str, request_id: int | None, body: str) -> str:
    return hashlib.sha256(preimage(seq, prev_hash, action, request_id, body)).hexdigest()


TimeCheck = Callable[[int], str]


def verify_links(
    links: Iterable[Link],
    checkpoint: Checkpoint | None = None,
    time_problem: TimeCheck | None = None,
) -> VerifyResult:
    """Walk the chain in sequence order and stop at the first event that does not hold.
    `time_problem(seq)` explains an event whose time check failed ("" if it holds after all)."""
    expected_seq, expected_prev = 1, bytes.fromhex(GENESIS_HASH)
    checked = 0
    sha256 = hashlib.sha256
    for seq, prev_hash, stored_hash, image, time_holds in links:
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
        if not time_holds:
            problem = time_problem(seq) if time_problem else "its time could not be checked"
            if problem:
                return _broken(checked, seq, expected_prev, problem)
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
            f"{checkpoint.seq}: {plural(checkpoint.seq - checked, 'event')} were cut from the end",
            checkpoint,
        )
    return VerifyResult(True, checked, head, checkpoint=checkpoint)


def _broken(checked: int, seq: int, last_good: bytes, problem: str) -> VerifyResult:
    head = Checkpoint(checked, last_good.hex()) if checked else None
    return VerifyResult(False, checked, head, seq, problem)


def _digest(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:  # a hash edited into something that is not hex cannot match anything
        return b"not hex: " + text.encode()


def _time_problem(db: Database, seq: int) -> str:
    """The slow path, for the rare event whose column text was not found in its body: the same
    instant spelt another (still valid) way in the body holds; anything else is an edit of the
    `at` column. Returns "" when it holds."""
    column = _PG_AT if not db.is_sqlite else _SQLITE_AT
    with db.engine.connect() as conn:
        row = conn.execute(
            text(f"SELECT body, {column}, at FROM audit_events WHERE seq = :seq"), {"seq": seq}
        ).one()
    when = hashed_time(row[0])
    hashed = str(_json_default(when)) if when else "no time at all"
    if row[1] is None:  # not a time the store writes: show what is there
        return (
            f"its time was edited: the at column says {str(row[2])[:40]!r} but the hashed "
            f"event says {hashed}"
        )
    if row[1] == hashed:
        return ""
    return f"its time was edited: the at column says {row[1]} but the hashed event says {hashed}"


def _sqlite_links(rows: Iterable[tuple[int, str, str, bytes, int]]) -> Iterator[Link]:
    for seq, prev, stored, image, time_holds in rows:
        yield seq, _digest(prev), _digest(stored), image, time_holds


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
    """Check every event (its link, its hash, that its `at` column is its hashed time) and,
    given a checkpoint, that the chain still contains it."""
    explain = partial(_time_problem, db)
    if db.is_sqlite:
        return verify_links(_sqlite_links(_stream(db, _SQLITE_LINKS)), checkpoint, explain)
    return verify_links(_stream(db, _PG_LINKS, binary=True), checkpoint, explain)


def head(db: Database) -> Checkpoint | None:
    """The chain's last event as an unsigned checkpoint, its time read from the hashed body
    (the `at` column is not covered by the hash)."""
    with db.read() as session:
        row = session.execute(
            select(AuditEvent.seq, AuditEvent.hash, AuditEvent.body)
            .order_by(AuditEvent.seq.desc())
            .limit(1)
        ).first()
    return Checkpoint(row[0], row[1], hashed_time(row[2])) if row else None
