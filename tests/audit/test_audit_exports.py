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
from app.access import AccessService
from app.audit import jobs as audit_jobs
from app.cli import build_parser, main
from app.clock import ManualClock
from app.scheduler import job_deps
from app.store import AuditEvent, Database
from tests.audit.test_audit import as_an_attacker
from tests.conftest import AMIRA, BEN

WHY = '=HYPERLINK("http://evil") pharmacy system down, ED waiting'
KEY = b"checkpoint-key-kept-by-the-IG-lead"
FIVE_MINUTES = timedelta(minutes=5)


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


def verify_at(clock: ManualClock, *args: str) -> int:
    """`wardkey audit verify ARGS` as the auditor runs it, at the clock's time."""
    parsed = build_parser().parse_args(["audit", "verify", *args])
    parsed.clock = clock
    code: int = parsed.run(parsed)
    return code


def cut_tail(db: Database, keep: int) -> None:
    """Someone with the database deletes every event after `keep`."""
    with as_an_attacker(db) as conn:
        conn.execute(sa.text("DELETE FROM audit_events WHERE seq > :s"), {"s": keep})


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

    def test_since_follows_the_hashed_time_not_an_edited_column(
        self, service: AccessService, clock: ManualClock
    ) -> None:
        """Someone edits the stored time of the break-glass start to the day before (out of
        tonight's export) and of the first request to tomorrow (into it)."""
        start = clock.now()
        a_night(service, clock)
        events = [json.loads(x) for x in exported(service.db, "jsonl").splitlines()]
        glass = next(e for e in events if e["action"] == "breakglass.started")
        first = events[0]
        with as_an_attacker(service.db) as conn:
            for seq, moved in (
                (glass["seq"], start - timedelta(days=1)),
                (1, start + timedelta(days=1)),
            ):
                conn.execute(
                    sa.update(AuditEvent.__table__).where(AuditEvent.seq == seq).values(at=moved)
                )
        since = start + timedelta(minutes=31)
        later = [json.loads(x) for x in exported(service.db, "jsonl", since).splitlines()]
        assert glass in later and first not in later
        assert later == [e for e in events if e["at"] >= "2026-11-30T03:31:00Z"]
        assert audit.verify(service.db).broken_seq == 1


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
        deps = job_deps(service, checkpoint_to=(vault, KEY))
        assert audit_jobs.checkpoint(deps) is None  # nothing to checkpoint yet
        a_night(service, clock)
        written = audit_jobs.checkpoint(deps)
        assert written is not None and written.parent == vault
        saved = json.loads(written.read_text())
        assert saved["signature_alg"] == "HMAC-SHA256" and len(saved["signature"]) == 64
        # The auditor looks a minute after the sweep wrote it (by whichever clock the sweep
        # keeps), so the checkpoint is fresh.
        auditor = ManualClock(datetime.fromisoformat(saved["written_at"]) + timedelta(minutes=1))

        assert verify_at(auditor, "--checkpoint", str(vault)) == 0
        capsys.readouterr()

        # Someone with the database cuts off the last two events...
        with as_an_attacker(env_db) as conn:
            top = conn.execute(sa.text("SELECT max(seq) FROM audit_events")).scalar_one()
            conn.execute(sa.text("DELETE FROM audit_events WHERE seq > :s"), {"s": top - 2})
        assert verify_at(auditor) == 0  # the chain alone cannot tell
        capsys.readouterr()
        assert verify_at(auditor, "--checkpoint", str(vault)) == 1
        assert "BROKEN" in capsys.readouterr().out

        # ...and writes a checkpoint of the cut chain to cover it up: without the key it fails.
        forged = json.loads(written.read_text())
        forged["seq"] = top - 2
        written.write_text(json.dumps(forged))
        assert verify_at(auditor, "--checkpoint", str(written)) == 1
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


class TestCheckpointsAnAuditorCanTrust:
    """The vault holds one signed checkpoint per sweep; someone who can write the database and
    the vault, but has no key, tries to hide a cut tail."""

    @pytest.fixture
    def env_db(self, db: Database, monkeypatch: pytest.MonkeyPatch) -> Database:
        monkeypatch.setenv("DATABASE_URL", db.url.render_as_string(hide_password=False))
        monkeypatch.setenv("WARDKEY_CHECKPOINT_KEY", KEY.decode())
        monkeypatch.setenv("WARDKEY_CHECKPOINT_SECONDS", "300")
        return db

    def test_a_planted_unsigned_checkpoint_never_hides_a_cut_tail(
        self,
        env_db: Database,
        service: AccessService,
        clock: ManualClock,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        vault = tmp_path / "vault"
        a_night(service, clock)
        audit.write_signed_checkpoint(env_db, vault, KEY, clock=clock)
        top = audit.verify(env_db).checked
        cut_tail(env_db, top - 2)
        # An unsigned checkpoint of the shortened chain, named to sort after the real one.
        cut_head = audit.head(env_db)
        assert cut_head is not None
        (vault / "wardkey-checkpoint-999999999999.json").write_text(cut_head.to_json())
        clock.advance(timedelta(minutes=1))

        assert verify_at(clock, "--checkpoint", str(vault)) == 1
        out = capsys.readouterr().out
        assert (
            "PROBLEM: wardkey-checkpoint-999999999999.json is not signed; not used "
            "(with WARDKEY_CHECKPOINT_KEY set every checkpoint must be signed)"
        ) in out
        assert f"checkpoint records event {top}: 2 events were cut from the end" in out

    def test_the_highest_signed_seq_is_used_whatever_the_files_are_called(
        self,
        env_db: Database,
        service: AccessService,
        clock: ManualClock,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        vault = tmp_path / "vault"
        a_night(service, clock)
        earlier = audit.write_signed_checkpoint(env_db, vault, KEY, clock=clock)
        assert earlier is not None
        seq_then = audit.verify(env_db).checked
        service.request(
            AMIRA, "pharmacy-db", "read", timedelta(minutes=30), "reprint ward 9 labels"
        )
        clock.advance(FIVE_MINUTES)
        latest = audit.write_signed_checkpoint(env_db, vault, KEY, clock=clock)
        assert latest is not None
        # The cut leaves a chain that matches the earlier checkpoint; the latest is renamed
        # to sort first.
        cut_tail(env_db, seq_then)
        latest.rename(vault / "wardkey-checkpoint-000000000000.json")
        clock.advance(timedelta(minutes=1))

        assert verify_at(clock, "--checkpoint", str(vault)) == 1
        out = capsys.readouterr().out
        assert "were cut from the end" in out and "PROBLEM" not in out

    def test_a_stale_newest_checkpoint_is_a_warning_not_ok(
        self,
        env_db: Database,
        service: AccessService,
        clock: ManualClock,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """The vault's mount went away at 03:52; checkpoints are due every 5 minutes, and two
        may be missed (a slow sweep, a restart) plus a minute's slack: 11 minutes."""
        vault = tmp_path / "vault"
        a_night(service, clock)  # ends at 03:52
        audit.write_signed_checkpoint(env_db, vault, KEY, clock=clock)
        seq = audit.verify(env_db).checked

        clock.advance(timedelta(minutes=2))
        assert verify_at(clock, "--checkpoint", str(vault)) == 0
        assert capsys.readouterr().out == (
            f"OK: {seq} events verified; tail checked against signed checkpoint seq {seq} "
            "written 2 min ago\n"
        )

        clock.advance(timedelta(minutes=9))  # 11 minutes: still within the allowance
        assert verify_at(clock, "--checkpoint", str(vault)) == 0
        capsys.readouterr()

        clock.advance(timedelta(seconds=1))
        assert verify_at(clock, "--checkpoint", str(vault)) == 3
        assert capsys.readouterr().out == (
            f"WARNING: {seq} events verified; tail checked against signed checkpoint seq {seq}, "
            "but it was written 11 min ago and checkpoints are due every 5 min: events cut from "
            "the end since then would not be seen. Check that the checkpoint sweep runs and can "
            "write to the checkpoint directory.\n"
        )

    def test_ok_counts_the_events_after_the_checkpoint(
        self,
        env_db: Database,
        service: AccessService,
        clock: ManualClock,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        vault = tmp_path / "vault"
        a_night(service, clock)
        audit.write_signed_checkpoint(env_db, vault, KEY, clock=clock)
        seq = audit.verify(env_db).checked
        clock.advance(timedelta(minutes=3))
        service.request(
            AMIRA, "pharmacy-db", "read", timedelta(minutes=30), "reprint ward 9 labels"
        )
        assert verify_at(clock, "--checkpoint", str(vault)) == 0
        assert capsys.readouterr().out == (
            f"OK: {seq + 1} events verified; tail checked against signed checkpoint seq {seq} "
            "written 3 min ago (the 1 event after it is covered by the chain alone)\n"
        )

    def test_verify_uses_the_configured_checkpoint_directory(
        self,
        env_db: Database,
        service: AccessService,
        clock: ManualClock,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        vault = tmp_path / "vault"
        monkeypatch.setenv("WARDKEY_CHECKPOINT_DIR", str(vault))
        a_night(service, clock)
        audit.write_signed_checkpoint(env_db, vault, KEY, clock=clock)
        cut_tail(env_db, 3)
        assert verify_at(clock) == 1
        assert "were cut from the end" in capsys.readouterr().out

    def test_an_empty_vault_is_a_warning(
        self,
        env_db: Database,
        service: AccessService,
        clock: ManualClock,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        a_night(service, clock)
        (tmp_path / "vault").mkdir()
        assert verify_at(clock, "--checkpoint", str(tmp_path / "vault")) == 3
        out = capsys.readouterr().out
        assert out.startswith("WARNING: ") and "no checkpoint" in out

    def test_a_garbled_checkpoint_in_the_vault_is_reported_and_not_used(
        self,
        env_db: Database,
        service: AccessService,
        clock: ManualClock,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        vault = tmp_path / "vault"
        a_night(service, clock)
        audit.write_signed_checkpoint(env_db, vault, KEY, clock=clock)
        (vault / "wardkey-checkpoint-999999999999.json").write_text('{"seq": [1]}')
        odd = {"seq": 99, "hash": "ab" * 32, "signature": "é" * 64, "at": "0001-01-01T00:00+05:00"}
        (vault / "wardkey-checkpoint-999999999998.json").write_text(json.dumps(odd))
        assert verify_at(clock, "--checkpoint", str(vault)) == 1
        out = capsys.readouterr().out
        for name in (
            "wardkey-checkpoint-999999999999.json",
            "wardkey-checkpoint-999999999998.json",
        ):
            assert f"PROBLEM: {name} cannot be read as a checkpoint" in out
        assert out.splitlines()[-1].startswith("BROKEN: ")


def test_the_signature_covers_when_the_checkpoint_was_written() -> None:
    at = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)
    signed = audit.Checkpoint(7, "ab" * 32, at, written_at=at + FIVE_MINUTES).signed(KEY)
    assert signed.signature_ok(KEY)
    assert audit.Checkpoint.from_json(signed.to_json()) == signed
    later = audit.Checkpoint(7, signed.hash, at, signed.signature, at + 2 * FIVE_MINUTES)
    assert not later.signature_ok(KEY)
    # A checkpoint signed before checkpoints said when they were written still verifies.
    old = audit.Checkpoint(7, "ab" * 32, at).signed(KEY)
    assert old.written_at is None and old.signature_ok(KEY)


def test_checkpoint_signature_is_over_seq_hash_and_time() -> None:
    at = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)
    signed = audit.Checkpoint(7, "ab" * 32, at).signed(KEY)
    assert signed.signature_ok(KEY)
    assert not signed.signature_ok(b"another key")
    moved = audit.Checkpoint(8, signed.hash, at, signed.signature)
    assert not moved.signature_ok(KEY)
    assert audit.Checkpoint.from_json(signed.to_json()) == signed
