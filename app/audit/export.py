"""The audit trail in the shapes other systems read: JSON Lines (a SIEM), CSV (a spreadsheet
for an information-governance lead) and FHIR R4 AuditEvent resources as NDJSON (a health
record's audit repository, the format of FHIR bulk export).

Every exported event keeps its sequence number and both hashes, so a copy can be checked
against the chain (`wardkey audit verify`) and against a signed checkpoint. Everything exported,
and the `since` filter, come from what was hashed: never from the `at` column, which the hash
does not cover.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from sqlalchemy import ColumnElement, func, or_, select

from app.audit.chain import canonical_json, parse_time
from app.store.db import Database
from app.store.models import AuditEvent

FORMATS = ("jsonl", "csv", "fhir")
BREAK_GLASS_PATH = "breakglass"

DCM = "http://dicom.nema.org/resources/ontology/DCM"
ACTION_SYSTEM = "urn:wardkey:audit-action"
# DICOM event types (PS3.16 CID 400) used as AuditEvent.type.
APPLICATION_ACTIVITY = {"system": DCM, "code": "110100", "display": "Application Activity"}
SECURITY_ALERT = {"system": DCM, "code": "110113", "display": "Security Alert"}
ROLES_CHANGED = {"system": DCM, "code": "110136", "display": "Security Roles Changed"}
OVERRIDE_STARTED = {"system": DCM, "code": "110127", "display": "Emergency Override Started"}
OVERRIDE_STOPPED = {"system": DCM, "code": "110128", "display": "Emergency Override Stopped"}
EMERGENCY_TREATMENT = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
    "code": "ETREAT",
    "display": "Emergency Treatment",
}
# Access really appeared on or disappeared from a target.
_ROLE_CHANGES = {"grant.succeeded", "revoke.succeeded", "revoke.resolved_by_person"}
_ALERTS = {"revoke.failed", "standing.found", "standing.removed", "review.overdue"}
# A break-glass use has stopped: its access was taken away, or never came.
_OVERRIDE_ENDS = {"revoke.succeeded", "revoke.resolved_by_person", "grant.failed"}
# FHIR AuditEvent.outcome: 0 success, 4 minor failure, 8 serious failure.
_OUTCOMES = {"grant.failed": "4", "revoke.failed": "8"}

CSV_COLUMNS = (
    "seq",
    "at",
    "action",
    "actor",
    "request_id",
    "requester",
    "target",
    "role",
    "account",
    "path",
    "reason",
    "data",
    "prev_hash",
    "hash",
)


@dataclass(frozen=True)
class ExportedEvent:
    seq: int
    at: datetime
    action: str
    actor: str
    request_id: int | None
    data: dict[str, Any]
    body: dict[str, Any]
    prev_hash: str
    hash: str


class ExportError(ValueError):
    """An event that cannot be exported as it stands; says which, and to run verify."""


def events(db: Database, since: datetime | None = None) -> Iterator[ExportedEvent]:
    """The chain in sequence order, from `since` on by each event's hashed time (read in
    batches, never all at once)."""
    query = select(AuditEvent).order_by(AuditEvent.seq).execution_options(yield_per=2000)
    if since is not None:
        query = query.where(_may_be_since(db, since))
    with db.read(streamed=True) as session:
        for row in session.scalars(query):
            body = _body(row)
            at = parse_time(body.get("at"))
            if at is None:
                raise ExportError(
                    f"event {row.seq} has no time in its hashed body; run `wardkey audit verify`"
                )
            if since is not None and at < since:
                continue
            yield ExportedEvent(
                seq=row.seq,
                at=at,
                action=row.action,
                actor=str(body.get("actor", "")),
                request_id=row.request_id,
                data=body.get("data") or {},
                body=body,
                prev_hash=row.prev_hash,
                hash=row.hash,
            )


def _body(row: AuditEvent) -> dict[str, Any]:
    try:
        body = json.loads(row.body)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ExportError(
            f"event {row.seq} cannot be read (its body is not a JSON object); "
            "run `wardkey audit verify`"
        )
    return body


def _may_be_since(db: Database, since: datetime) -> ColumnElement[bool]:
    """A filter the database runs on the hashed body, not the `at` column (which the hash does
    not cover): its time's first 19 characters, to the second, at or after `since`'s. Canonical
    JSON sorts keys, so the body's first `,"at":"` is its own time. Events it keeps are checked
    exactly afterwards; a body without that text is kept, to be checked the same way."""
    marker = ',"at":"'
    find = func.instr if db.is_sqlite else func.strpos
    where = find(AuditEvent.body, marker)
    seconds: ColumnElement[str] = func.substr(AuditEvent.body, where + len(marker), 19)
    if not db.is_sqlite:
        seconds = seconds.collate("C")  # byte order, whatever the database's collation
    return or_(where == 0, seconds >= since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S"))


def export(db: Database, out: IO[str], fmt: str = "jsonl", since: datetime | None = None) -> int:
    """Write the events in `fmt` (jsonl, csv or fhir); returns how many."""
    writers: dict[str, Callable[[Iterator[ExportedEvent], IO[str]], int]] = {
        "jsonl": _write_jsonl,
        "csv": _write_csv,
        "fhir": _write_fhir,
    }
    if fmt not in writers:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    return writers[fmt](events(db, since), out)


def _write_jsonl(items: Iterator[ExportedEvent], out: IO[str]) -> int:
    count = 0
    for event in items:
        record = {**event.body, "seq": event.seq, "prev_hash": event.prev_hash, "hash": event.hash}
        out.write(canonical_json(record) + "\n")
        count += 1
    return count


def _write_csv(items: Iterator[ExportedEvent], out: IO[str]) -> int:
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    count = 0
    for e in items:
        d = e.data
        writer.writerow(
            [
                e.seq,
                e.body.get("at"),
                e.action,
                _no_formula(e.actor),
                e.request_id or "",
                _no_formula(str(d.get("requester") or "")),
                d.get("target") or "",
                d.get("role") or "",
                _no_formula(str(d.get("account") or "")),
                d.get("path") or "",
                _no_formula(str(d.get("reason") or "")),
                _no_formula(canonical_json(d)),
                e.prev_hash,
                e.hash,
            ]
        )
        count += 1
    return count


def _no_formula(text: str) -> str:
    """A cell a spreadsheet would run as a formula (CSV injection) is quoted as text."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _write_fhir(items: Iterator[ExportedEvent], out: IO[str]) -> int:
    count = 0
    for event in items:
        out.write(json.dumps(to_fhir(event), ensure_ascii=False, separators=(",", ":")) + "\n")
        count += 1
    return count


def to_fhir(event: ExportedEvent) -> dict[str, Any]:
    """One event as a FHIR R4 AuditEvent. Break-glass start and stop are Security Alerts with
    the DICOM Emergency Override subtypes; grants and revokes are Security Roles Changed."""
    d = event.data
    break_glass = d.get("path") == BREAK_GLASS_PATH
    subtypes = [{"system": ACTION_SYSTEM, "code": event.action}]
    if event.action == "breakglass.started":
        kind = SECURITY_ALERT
        subtypes.insert(0, OVERRIDE_STARTED)
    elif break_glass and event.action in _OVERRIDE_ENDS:
        kind = SECURITY_ALERT
        subtypes.insert(0, OVERRIDE_STOPPED)
    elif event.action in _ALERTS:
        kind = SECURITY_ALERT
    elif event.action in _ROLE_CHANGES:
        kind = ROLES_CHANGED
    else:
        kind = APPLICATION_ACTIVITY
    agents: list[dict[str, Any]] = [
        {
            "who": {"identifier": {"value": event.actor}, "display": event.actor},
            "requestor": event.actor == d.get("requester") or event.actor != "wardkey",
        }
    ]
    requester = d.get("requester")
    if requester and requester != event.actor:
        agents.append(
            {
                "who": {"identifier": {"value": str(requester)}, "display": str(requester)},
                "requestor": False,
            }
        )
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": f"wardkey-{event.seq}",
        "type": kind,
        "subtype": subtypes,
        "action": "E",
        "recorded": event.body.get("at"),
        "outcome": _OUTCOMES.get(event.action, "0"),
        "agent": agents,
        "source": {
            "observer": {"display": "WardKey"},
            "type": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "code": "4",
                    "display": "Application Server",
                }
            ],
        },
        "entity": [_entity(event)],
    }
    why_failed = d.get("error") or d.get("end_reason")
    if why_failed:
        resource["outcomeDesc"] = str(why_failed)[:1000]
    if d.get("reason"):
        purpose: dict[str, Any] = {"text": str(d["reason"])[:1000]}
        if break_glass:
            purpose["coding"] = [EMERGENCY_TREATMENT]
        resource["purposeOfEvent"] = [purpose]
    return resource


def _entity(event: ExportedEvent) -> dict[str, Any]:
    d = event.data
    details = [
        {"type": "seq", "valueString": str(event.seq)},
        {"type": "hash", "valueString": event.hash},
        {"type": "prev_hash", "valueString": event.prev_hash},
        {"type": "data", "valueString": canonical_json(d)},
    ]
    if event.request_id is not None:
        details.insert(0, {"type": "request", "valueString": str(event.request_id)})
    what = f"{d['target']}:{d['role']}" if d.get("target") and d.get("role") else event.action
    entity: dict[str, Any] = {
        "what": {"identifier": {"value": what}, "display": what},
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
            "code": "2",
            "display": "System Object",
        },
        "detail": details,
    }
    if d.get("account"):
        entity["name"] = str(d["account"])
    return entity
