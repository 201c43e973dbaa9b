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
from app.cli import main
from app.store import Database

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

    def test_a_cut_tail_is_found_against_a_checkpoint(self, db: Database) -> None:
        write_events(db, 10)
        checkpoint = audit.head(db)
        assert checkpoint is not None
        with as_an_attacker(db) as conn:
            conn.execute(sa.text("DELETE FROM audit_events WHERE seq > 7"))
        assert audit.verify(db).ok, "without a checkpoint a clean cut is undetectable"
        result = audit.verify(db, audit.Checkpoint.from_json(checkpoint.to_json()))
        assert not result.ok
        assert "3 event(s) were cut from the end" in result.problem

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
