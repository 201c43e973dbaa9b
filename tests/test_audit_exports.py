"""Audit exports for auditors and governance leads (JSON Lines, CSV, FHIR R4 AuditEvent) and
signed checkpoints that find a cut-off tail off the box."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from fhir.resources.R4B.auditevent import AuditEvent as FhirAuditEvent

from app import audit
from app.cli import main
from app.clock import ManualClock
from app.scheduler import Sweeps
from app.service import AccessService
from app.store import Database
from tests.conftest import AMIRA, BEN
from tests.test_audit import as_an_attacker

WHY = '=HYPERLINK("http://evil") pharmacy system down, ED waiting'
KEY = b"checkpoint-key-kept-by-the-IG-lead"


def a_night(service: AccessService, clock: ManualClock) -> tuple[int, int]:
    """A clinical grant that ends, a break-glass use that ends, and a revoke that fails."""
    req = service.request(
        AMIRA, "pharmacy-db", "read", timedelta(minutes=30), "fix ward 12 order set"
    )
    service.approve(req.id, BEN)
    clock.advance(timedelta(minutes=31))
    service.expire_due()
    glass = service.break_glass(AMIRA, "pharmacy-db", "read", WHY, timedelta(minutes=20))
    clock.advance(timedelta(minutes=21))
    service.expire_due()
    return req.id, glass.id


def exported(db: Database, fmt: str, since: datetime | None = None) -> str:
    out = io.StringIO()
    audit.export(db, out, fmt, since)
    return out.getvalue()


class TestFhir:
    def test_every_event_is_a_valid_r4_audit_event(
        self, service: AccessService, clock: ManualClock
    ) -> None:
        a_night(service, clock)
        lines = exported(service.db, "fhir").splitlines()
        assert len(lines) == audit.verify(service.db).checked
        for line in lines:
            resource = json.loads(line)
            FhirAuditEvent.model_validate(resource)  # raises on anything R4 does not allow
            assert resource["agent"] and resource["source"]["observer"]

    def test_break_glass_start_and_stop_carry_the_dicom_emergency_override_codes(
        self, service: AccessService, clock: ManualClock
    ) -> None:
        _, glass = a_night(service, clock)
        resources = [json.loads(x) for x in exported(service.db, "fhir").splitlines()]
        ours = [
            r
            for r in resources
            if {"type": "request", "valueString": str(glass)} in r["entity"][0]["detail"]
        ]
        codes = [(r["type"]["code"], r["subtype"][0]["code"]) for r in ours]
        assert codes[0] == ("110113", "110127")  # Security Alert / Emergency Override Started
        assert ("110113", "110128") in codes  # ...Stopped, when the access was taken away
        started = ours[0]
        assert started["purposeOfEvent"][0]["coding"][0]["code"] == "ETREAT"
        assert started["purposeOfEvent"][0]["text"] == WHY
        # Ordinary grants and revokes are role changes, not alerts.
        other = [
            r for r in resources if r not in ours and r["subtype"][-1]["code"] == "grant.succeeded"
        ]
        assert other and other[0]["type"]["code"] == "110136"


class TestCsvAndJsonl:
    def test_csv_has_a_row_per_event_and_never_a_formula(
        self, service: AccessService, clock: ManualClock
    ) -> None:
        a_night(service, clock)
        rows = list(csv.DictReader(io.StringIO(exported(service.db, "csv"))))
        assert len(rows) == audit.verify(service.db).checked
        started = next(r for r in rows if r["action"] == "breakglass.started")
        assert started["reason"].startswith("'=HYPERLINK")  # a spreadsheet shows it as text
        assert started["requester"] == "amira@ward.nhs.uk"
        assert started["target"] == "pharmacy-db" and started["role"] == "read"
        assert all(len(r["hash"]) == 64 for r in rows)

    def test_since_keeps_the_later_events_with_their_sequence_numbers(
        self, service: AccessService, clock: ManualClock
    ) -> None:
        start = clock.now()
        a_night(service, clock)
        later = [
            json.loads(x)
            for x in exported(service.db, "jsonl", start + timedelta(minutes=31)).splitlines()
        ]
        everything = exported(service.db, "jsonl").splitlines()
        assert 0 < len(later) < len(everything)
        assert later[0]["seq"] > 1 and all(e["at"] >= "2026-11-30T03:31:00Z" for e in later)


class TestSignedCheckpoints:
    @pytest.fixture
    def env_db(self, db: Database, monkeypatch: pytest.MonkeyPatch) -> Database:
        monkeypatch.setenv("DATABASE_URL", db.url.render_as_string(hide_password=False))
        monkeypatch.setenv("WARDKEY_CHECKPOINT_KEY", KEY.decode())
        return db

    def test_scheduled_checkpoints_find_a_cut_tail_and_a_forged_one_is_refused(
        self,
        env_db: Database,
        service: AccessService,
        clock: ManualClock,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        vault = tmp_path / "vault"  # stands for a mount of another machine
        sweeps = Sweeps(service, checkpoint_to=(vault, KEY))
        assert sweeps.checkpoint() is None  # nothing to checkpoint yet
        a_night(service, clock)
        written = sweeps.checkpoint()
        assert written is not None and written.parent == vault
        saved = json.loads(written.read_text())
        assert saved["signature_alg"] == "HMAC-SHA256" and len(saved["signature"]) == 64

        assert main(["audit", "verify", "--checkpoint", str(vault)]) == 0
        capsys.readouterr()

        # Someone with the database cuts off the last two events...
        with as_an_attacker(env_db) as conn:
            top = conn.execute(sa.text("SELECT max(seq) FROM audit_events")).scalar_one()
            conn.execute(sa.text("DELETE FROM audit_events WHERE seq > :s"), {"s": top - 2})
        assert main(["audit", "verify"]) == 0  # the chain alone cannot tell
        capsys.readouterr()
        assert main(["audit", "verify", "--checkpoint", str(vault)]) == 1
        assert "BROKEN" in capsys.readouterr().out

        # ...and writes a checkpoint of the cut chain to cover it up: without the key it fails.
        forged = json.loads(written.read_text())
        forged["seq"] = top - 2
        written.write_text(json.dumps(forged))
        assert main(["audit", "verify", "--checkpoint", str(written)]) == 1
        assert "does not carry a valid signature" in capsys.readouterr().out

    def test_a_signed_checkpoint_needs_the_key_to_be_checked(
        self,
        env_db: Database,
        service: AccessService,
        clock: ManualClock,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        a_night(service, clock)
        path = tmp_path / "cp.json"
        assert main(["audit", "checkpoint", "--output", str(path)]) == 0
        monkeypatch.delenv("WARDKEY_CHECKPOINT_KEY")
        assert main(["audit", "verify", "--checkpoint", str(path)]) == 2
        assert "set WARDKEY_CHECKPOINT_KEY" in capsys.readouterr().err


def test_checkpoint_signature_is_over_seq_hash_and_time() -> None:
    at = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)
    signed = audit.Checkpoint(7, "ab" * 32, at).signed(KEY)
    assert signed.signature_ok(KEY)
    assert not signed.signature_ok(b"another key")
    moved = audit.Checkpoint(8, signed.hash, at, signed.signature)
    assert not moved.signature_ok(KEY)
    assert audit.Checkpoint.from_json(signed.to_json()) == signed
