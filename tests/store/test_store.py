"""Storage: migrations are the schema, SQLite is set up for safe concurrent use, times are UTC."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.exc import OperationalError

from app.cli import main
from app.store import AccessRequest, Database, normalise_url
from app.store.db import DatabaseOutage
from app.store.models import Base


def test_migrations_match_the_models(db: Database) -> None:
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_db_upgrade_creates_a_sqlite_file_out_of_the_box(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert main(["db", "upgrade"]) == 0
    assert (tmp_path / "wardkey.db").exists()
    assert main(["db", "upgrade"]) == 0  # running it again is harmless
    assert "up to date" in capsys.readouterr().out


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_sqlite_runs_in_wal_mode_with_foreign_keys(db: Database) -> None:
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000


def test_times_come_back_as_aware_utc_and_naive_times_are_refused(db: Database) -> None:
    local = datetime(2026, 7, 1, 14, 0, tzinfo=timezone(timedelta(hours=1)))
    fields = dict(
        state="pending",
        version=1,
        requester="a@ward.nhs.uk",
        target="t",
        role="r",
        path="clinical",
        entitlement="e",
        account="a",
        reason="some good reason",
        requested_seconds=60,
        approvals_needed=1,
        approval_round=0,
        revoke_attempts=0,
    )
    with db.transaction() as session:
        session.add(AccessRequest(id=1, created_at=local, state_changed_at=local, **fields))
    with db.read() as session:
        stored = session.get(AccessRequest, 1)
        assert stored is not None
        assert stored.created_at == local
        assert stored.created_at.utcoffset() == timedelta(0)
    with pytest.raises(sa.exc.StatementError, match="naive"), db.transaction() as session:
        naive = datetime(2026, 7, 1, 14, 0)
        session.add(AccessRequest(id=2, created_at=naive, state_changed_at=naive, **fields))


def test_plain_postgresql_urls_use_psycopg_3() -> None:
    assert normalise_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalise_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert normalise_url("sqlite:///x.db").drivername == "sqlite"


@pytest.mark.postgres
def test_a_session_left_idle_in_a_transaction_is_ended_by_the_server(
    postgres_database: Database,
) -> None:
    """A client that dies or is cut off mid-transaction must not hold its locks for the hours
    TCP takes to notice: WardKey's connections ask the server to end such a session."""
    with postgres_database.engine.connect() as conn:
        shown = conn.execute(sa.text("SHOW idle_in_transaction_session_timeout")).scalar()
    assert shown == "5min"


@pytest.mark.postgres
def test_reads_on_postgresql_run_outside_a_transaction_and_streamed_ones_inside(
    postgres_database: Database,
) -> None:
    """Outside a transaction each statement starts its own, so now() (its start) is the
    statement's own start; inside one, a second statement starts after now()."""
    began_before_this_statement = sa.text("SELECT now() < statement_timestamp()")
    with postgres_database.read() as session:
        session.execute(sa.text("SELECT 1"))
        assert session.scalar(began_before_this_statement) is False
    with postgres_database.read(streamed=True) as session:
        session.execute(sa.text("SELECT 1"))
        assert session.scalar(began_before_this_statement) is True


@pytest.mark.postgres
def test_a_pooled_connection_the_server_ended_is_replaced_before_use(
    postgres_database: Database,
) -> None:
    """Pooled connections are not pinged before every transaction; one the server has ended
    since its last use (a restart, a terminated session) is noticed and replaced, so the next
    transaction does not fail on it."""
    db = Database(postgres_database.url, pool_size=1, max_overflow=0)
    backend = sa.text("SELECT pg_backend_pid()")
    try:
        with db.transaction() as session:
            ended = session.scalar(backend)
        with postgres_database.engine.begin() as admin:
            admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": ended})
            for _ in range(100):  # the server ends it a moment later
                gone = sa.text("SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = :pid")
                if admin.scalar(gone, {"pid": ended}):
                    break
                time.sleep(0.05)
        with db.transaction() as session:
            assert session.scalar(backend) != ended
    finally:
        db.dispose()


class TestAnOutageIsLoggedOnce:
    """app/store/db.py DatabaseOutage: one line when an outage starts, one when it ends."""

    def test_a_call_already_under_way_when_it_started_does_not_end_it(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        outage = DatabaseOutage()
        straggler = outage.call_began()  # began while the database still answered
        outage.failed("expire", OperationalError("SELECT 1", {}, Exception("connection lost")))
        outage.answered(straggler)  # it finished after the outage began: says nothing of now
        outage.failed("reconcile", OperationalError("SELECT 1", {}, Exception("refused")))
        after = outage.call_began()
        outage.answered(after)
        outage.answered(outage.call_began())  # the usual case again: nothing more to say
        events = [r.getMessage().split()[0] for r in caplog.records]
        assert events == ["event=database_unreachable", "event=database_back"]
        assert "failed_calls=2" in caplog.records[-1].getMessage()

    def test_each_outage_is_its_own(self, caplog: pytest.LogCaptureFixture) -> None:
        outage = DatabaseOutage()
        for _ in range(2):
            outage.failed("outbox", OperationalError("SELECT 1", {}, Exception("refused")))
            outage.answered(outage.call_began())
        events = [r.getMessage().split()[0] for r in caplog.records]
        assert events == ["event=database_unreachable", "event=database_back"] * 2
