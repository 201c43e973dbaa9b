"""The audit trail: every kind of tampering is found, and concurrent writers never fork it."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from app import audit
from app.cli import build_parser, main
from app.clock import ManualClock
from app.store import AuditEvent, Database

START = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)


def write_events(db: Database, count: int, first_request: int = 1) -> None:
    for i in range(count):
        with db.transaction() as session:
            audit.append(
                session,
                at=START + timedelta(seconds=i),
                action="request.created",
                actor=f"person{i}@ward.nhs.uk",
                request_id=first_request + i,
                data={"target": "pharmacy-db", "role": "read", "reason": f"story number {i}"},
            )


@contextmanager
def as_an_attacker(db: Database) -> Iterator[sa.Connection]:
    """Someone with database rights switches the append-only guard off to rewrite history."""
    with db.engine.begin() as conn:
        if db.is_sqlite:
            conn.execute(sa.text("DROP TRIGGER audit_events_no_update"))
            conn.execute(sa.text("DROP TRIGGER audit_events_no_delete"))
        else:
            conn.execute(
                sa.text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
            )
        yield conn
        if not db.is_sqlite:
            conn.execute(
                sa.text("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only")
            )


class TestChain:
    def test_an_untouched_chain_verifies(self, db: Database) -> None:
        write_events(db, 25)
        result = audit.verify(db)
        assert result.ok and result.checked == 25
        assert result.head is not None and result.head.seq == 25

    def test_the_table_refuses_updates_and_deletes(self, db: Database) -> None:
        write_events(db, 3)
        with pytest.raises(sa.exc.DatabaseError, match="append-only"), db.engine.begin() as conn:
            conn.execute(sa.text("UPDATE audit_events SET action = 'x' WHERE seq = 2"))
        with pytest.raises(sa.exc.DatabaseError, match="append-only"), db.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM audit_events WHERE seq = 2"))
        assert audit.verify(db).ok

    def test_an_edited_event_is_named(self, db: Database) -> None:
        write_events(db, 10)
        with as_an_attacker(db) as conn:
            conn.execute(
                sa.text(
                    "UPDATE audit_events SET body = replace(body, 'story number 6', 'nothing') "
                    "WHERE seq = 7"
                )
            )
        result = audit.verify(db)
        assert not result.ok
        assert result.broken_seq == 7
        assert "edited" in result.problem

    def test_an_edited_index_column_is_found_too(self, db: Database) -> None:
        write_events(db, 5)
        with as_an_attacker(db) as conn:
            conn.execute(sa.text("UPDATE audit_events SET request_id = 99 WHERE seq = 3"))
        result = audit.verify(db)
        assert (result.ok, result.broken_seq) == (False, 3)

    def test_a_deleted_event_is_named(self, db: Database) -> None:
        write_events(db, 10)
        with as_an_attacker(db) as conn:
            conn.execute(sa.text("DELETE FROM audit_events WHERE seq = 4"))
        result = audit.verify(db)
        assert (result.ok, result.broken_seq) == (False, 4)
        assert "missing" in result.problem

    def test_reordered_events_are_found(self, db: Database) -> None:
        write_events(db, 10)
        with as_an_attacker(db) as conn:
            # Swap events 5 and 6 by renumbering them (hashes travel with their rows).
            conn.execute(sa.text("UPDATE audit_events SET seq = 1000 WHERE seq = 5"))
            conn.execute(sa.text("UPDATE audit_events SET seq = 5 WHERE seq = 6"))
            conn.execute(sa.text("UPDATE audit_events SET seq = 6 WHERE seq = 1000"))
        result = audit.verify(db)
        assert (result.ok, result.broken_seq) == (False, 5)
        assert "deleted or reordered" in result.problem

    def test_an_event_moved_in_time_is_named(self, db: Database) -> None:
        """Someone moves the 03:00:05 and 03:00:08 events to the day before, out of the
        night's export and digest, without touching what was hashed."""
        write_events(db, 10)
        with as_an_attacker(db) as conn:
            for seq in (8, 6):
                conn.execute(
                    sa.update(AuditEvent.__table__)
                    .where(AuditEvent.seq == seq)
                    .values(at=START + timedelta(seconds=seq - 1) - timedelta(days=1))
                )
        result = audit.verify(db)
        assert (result.ok, result.broken_seq) == (False, 6)
        assert result.problem == (
            "its time was edited: the at column says 2026-11-29T03:00:05Z but the hashed event "
            "says 2026-11-30T03:00:05Z"
        )
        assert result.checked == 5

    @pytest.mark.parametrize("db", ["sqlite"], indirect=True)
    def test_the_same_time_written_another_way_is_found(self, db: Database) -> None:
        # SQLite compares times as text: '2026-11-30T03:00:02Z' sorts after every time written
        # '2026-11-30 …', so this edit would move event 3 into a later export or digest.
        write_events(db, 5)
        with as_an_attacker(db) as conn:
            conn.execute(
                sa.text("UPDATE audit_events SET at = '2026-11-30T03:00:02Z' WHERE seq = 3")
            )
        result = audit.verify(db)
        assert (result.ok, result.broken_seq) == (False, 3)
        assert "its time was edited" in result.problem

    def test_a_head_takes_its_time_from_the_hashed_event(self, db: Database) -> None:
        write_events(db, 3)
        with as_an_attacker(db) as conn:
            conn.execute(
                sa.update(AuditEvent.__table__)
                .where(AuditEvent.seq == 3)
                .values(at=START + timedelta(days=5))
            )
        head = audit.head(db)
        assert head is not None and head.at == START + timedelta(seconds=2)

    def test_a_cut_tail_is_found_against_a_checkpoint(self, db: Database) -> None:
        write_events(db, 10)
        checkpoint = audit.head(db)
        assert checkpoint is not None
        with as_an_attacker(db) as conn:
            conn.execute(sa.text("DELETE FROM audit_events WHERE seq > 7"))
        assert audit.verify(db).ok, "without a checkpoint a clean cut is undetectable"
        result = audit.verify(db, audit.Checkpoint.from_json(checkpoint.to_json()))
        assert not result.ok
        assert "3 events were cut from the end" in result.problem

    def test_history_rewritten_after_a_checkpoint_is_found(self, db: Database) -> None:
        write_events(db, 6)
        checkpoint = audit.head(db)
        assert checkpoint is not None
        with as_an_attacker(db) as conn:
            conn.execute(sa.text("DELETE FROM audit_events WHERE seq >= 4"))
        write_events(db, 3, first_request=50)  # a forged tail with a valid chain
        result = audit.verify(db, checkpoint)
        assert (result.ok, result.broken_seq) == (False, 6)
        assert "checkpoint" in result.problem

    def test_awkward_text_verifies_on_every_store(self, db: Database) -> None:
        # Tabs, newlines, backslashes, quotes, SQL/LDAP metacharacters, RTL and zero-width text.
        awkward = "ward\t12\nbed 3 \\ 'x'; DROP TABLE--)(cn=*) \u202eolleh\u200b 🩺 \\N"
        with db.transaction() as session:
            audit.append(
                session, at=START, action="request.created", actor=awkward, data={"reason": awkward}
            )
            audit.append(session, at=START, action="request.created", actor="a", request_id=None)
        result = audit.verify(db)
        assert result.ok, result.summary()
        assert result.checked == 2
        out = io.StringIO()
        audit.export(db, out)
        assert json.loads(out.getvalue().splitlines()[0])["data"]["reason"] == awkward

    def test_secrets_never_enter_an_event(self, db: Database) -> None:
        with pytest.raises(ValueError, match="secrets never go in"), db.transaction() as session:
            audit.append(session, at=START, action="x", actor="y", data={"bind_password": "p"})

    def test_times_are_utc_iso_8601_and_keys_sorted(self, db: Database) -> None:
        write_events(db, 1)
        out = io.StringIO()
        assert audit.export(db, out) == 1
        line = out.getvalue().strip()
        event = json.loads(line)
        assert event["at"] == "2026-11-30T03:00:00Z"
        assert list(event) == sorted(event)
        assert event["seq"] == 1 and event["prev_hash"] == audit.GENESIS_HASH


class TestConcurrentAppends:
    @pytest.mark.parametrize(
        "db", [pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"], indirect=True
    )
    def test_twenty_writers_never_fork_the_chain(self, db: Database) -> None:
        barrier = threading.Barrier(20)
        errors: list[BaseException] = []

        def writer(n: int) -> None:
            try:
                barrier.wait()
                for i in range(10):
                    with db.transaction() as session:
                        audit.append(
                            session,
                            at=START,
                            action="test.append",
                            actor=f"writer{n}",
                            data={"i": i},
                        )
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        result = audit.verify(db)
        assert result.ok, result.summary()
        assert result.checked == 200

    @pytest.mark.parametrize(
        "db", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
    )
    def test_a_transaction_still_open_holds_up_no_other_writer(self, db: Database) -> None:
        """The trail's one lock is taken as a transaction commits, not where it appends: a
        writer busy with the rest of its transaction holds up no other writer meanwhile."""
        done = threading.Event()
        with db.transaction() as slow:
            audit.append(slow, at=START, action="request.created", actor="slow")
            other = threading.Thread(target=lambda: (write_events(db, 1), done.set()))
            other.start()
            other.join(timeout=60)  # only a guard against a hang: a waiting writer never ends
            written_meanwhile = done.is_set()
        other.join()
        assert written_meanwhile, "the other writer waited for this transaction to end"
        assert actors_in_order(db) == [
            "person0@ward.nhs.uk",
            "slow",
        ]  # chained in the order they committed
        assert audit.verify(db).ok

    @pytest.mark.parametrize(
        "db", [pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"], indirect=True
    )
    def test_a_rolled_back_transactions_events_are_not_chained(self, db: Database) -> None:
        with pytest.raises(RuntimeError), db.transaction() as session:
            audit.append(session, at=START, action="request.created", actor="gone")
            raise RuntimeError("the change failed")
        write_events(db, 1)
        assert actors_in_order(db) == ["person0@ward.nhs.uk"]
        assert audit.verify(db).ok


def actors_in_order(db: Database) -> list[str]:
    with db.read() as session:
        bodies = session.scalars(sa.select(AuditEvent.body).order_by(AuditEvent.seq))
        return [json.loads(body)["actor"] for body in bodies]


class TestCommands:
    @pytest.fixture
    def env_db(self, db: Database, monkeypatch: pytest.MonkeyPatch) -> Database:
        monkeypatch.setenv("DATABASE_URL", db.url.render_as_string(hide_password=False))
        return db

    def test_verify_export_and_checkpoint(
        self, env_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        write_events(env_db, 4)
        assert main(["audit", "verify"]) == 0
        assert capsys.readouterr().out.startswith("OK: 4 events verified")

        checkpoint = tmp_path / "checkpoint.json"
        assert main(["audit", "checkpoint", "--output", str(checkpoint)]) == 0
        assert json.loads(checkpoint.read_text())["seq"] == 4

        exported = tmp_path / "audit.jsonl"
        assert (
            main(["audit", "export", "--output", str(exported), "--since", "2026-11-30T03:00:02Z"])
            == 0
        )
        assert [json.loads(x)["seq"] for x in exported.read_text().splitlines()] == [3, 4]

        with as_an_attacker(env_db) as conn:
            conn.execute(sa.text("DELETE FROM audit_events WHERE seq = 4"))
        capsys.readouterr()
        assert main(["audit", "verify", "--checkpoint", str(checkpoint)]) == 1
        assert "BROKEN at event 4" in capsys.readouterr().out

    def test_export_of_a_garbled_event_says_which_in_one_line(
        self, env_db: Database, capsys: pytest.CaptureFixture[str]
    ) -> None:
        write_events(env_db, 3)
        with as_an_attacker(env_db) as conn:
            conn.execute(sa.text("UPDATE audit_events SET body = 'not json' WHERE seq = 2"))
        capsys.readouterr()
        assert main(["audit", "export"]) == 1
        said = capsys.readouterr().err.strip().splitlines()
        assert said[-1].startswith("wardkey: event 2 cannot be read"), said
        assert "Traceback" not in "\n".join(said)

    def test_verify_without_a_checkpoint_says_a_cut_tail_would_not_be_seen(
        self, env_db: Database, capsys: pytest.CaptureFixture[str]
    ) -> None:
        write_events(env_db, 4)
        assert main(["audit", "verify"]) == 0
        assert capsys.readouterr().out == (
            "OK: 4 events verified (chain only: events cut from the end would not be seen; "
            "pass --checkpoint or set WARDKEY_CHECKPOINT_DIR)\n"
        )

    def test_an_unsigned_checkpoint_is_used_without_a_key_and_called_unsigned(
        self, env_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        write_events(env_db, 4)
        checkpoint = tmp_path / "checkpoint.json"
        assert main(["audit", "checkpoint", "--output", str(checkpoint)]) == 0
        saved = json.loads(checkpoint.read_text())
        assert "signature" not in saved and saved["written_at"].endswith("Z")
        # The auditor reads it back by a clock of their own, four minutes later.
        parsed = build_parser().parse_args(["audit", "verify", "--checkpoint", str(checkpoint)])
        parsed.clock = ManualClock(
            audit.Checkpoint.from_json(checkpoint.read_text()).written_at + timedelta(minutes=4)
        )
        capsys.readouterr()
        assert parsed.run(parsed) == 0
        assert capsys.readouterr().out == (
            "OK: 4 events verified; tail checked against unsigned checkpoint seq 4 written 4 min "
            "ago; unsigned, it is only as safe as the place it was kept (set "
            "WARDKEY_CHECKPOINT_KEY to sign checkpoints)\n"
        )

    def test_a_missing_checkpoint_file_is_one_line_not_a_traceback(
        self, env_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        write_events(env_db, 2)
        assert main(["audit", "verify", "--checkpoint", str(tmp_path / "nowhere.json")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("wardkey: no checkpoint at ") and "nowhere.json" in err

    def test_an_unreadable_checkpoint_file_is_broken_evidence_not_a_traceback(
        self, env_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        write_events(env_db, 2)
        for name, text in (("a.json", "{not json"), ("b.json", '{"seq": "two", "hash": 5}')):
            (tmp_path / name).write_text(text)
            assert main(["audit", "verify", "--checkpoint", str(tmp_path / name)]) == 1
            out = capsys.readouterr().out
            assert f"PROBLEM: {name} cannot be read as a checkpoint" in out
            assert "BROKEN" in out
