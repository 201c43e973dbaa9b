"""Session recording with pgaudit, on a server of its own that has pgaudit loaded: the elevated
login's statements reach the server log as AUDIT lines for the window, and stop at revoke.
WardKey's login has only what docs/targets.md says it needs (CREATEROLE, pg_signal_backend and SET
on the pgaudit.log and wardkey.state parameters), not superuser."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from app.adapters.postgres import PostgresAdapter, PostgresSettings
from tests.pgaudit_server import AuditedServer, audited_server

pytestmark = pytest.mark.postgres
UNTIL = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def server() -> Iterator[AuditedServer]:
    with audited_server() as srv:
        with connect(srv, "postgres") as admin:
            for statement in (
                "CREATE EXTENSION pgaudit",
                "CREATE ROLE pharmacy_owner NOLOGIN",
                "CREATE ROLE pharmacy_admin NOLOGIN",
                "CREATE ROLE amira LOGIN",
                "CREATE ROLE dev LOGIN",
                "CREATE ROLE wardkey LOGIN CREATEROLE",
                "GRANT pg_signal_backend TO wardkey",
                "GRANT SET ON PARAMETER pgaudit.log TO wardkey",
                "GRANT SET ON PARAMETER wardkey.state TO wardkey",
                "CREATE TABLE stock (item text)",
                "GRANT SELECT ON stock TO pharmacy_owner",
            ):
                admin.execute(statement)
        yield srv


def connect(server: AuditedServer, user: str) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host="127.0.0.1", port=server.port, dbname="postgres", user=user, autocommit=True
    )


def adapter(server: AuditedServer, **settings: Any) -> PostgresAdapter:
    config = PostgresSettings(
        host="127.0.0.1", port=server.port, dbname="postgres", sslmode="disable", **settings
    )
    return PostgresAdapter(config, recorded={"pharmacy_owner", "pharmacy_admin"})


def audited(server: AuditedServer, marker: str) -> bool:
    return any(
        "AUDIT: SESSION" in line and marker in line for line in server.log_text().splitlines()
    )


def test_statements_in_the_window_are_audited_and_stop_at_revoke(server: AuditedServer) -> None:
    recording = adapter(server)
    result = recording.grant("amira", "pharmacy_owner", UNTIL)
    assert result.detail.startswith("recorded: pgaudit.log=all")
    with connect(server, "amira") as session:
        assert session.execute("SHOW pgaudit.log").fetchone() == ("all",)
        session.execute("SELECT count(*), 'wk-during-window' FROM stock")
    assert audited(server, "wk-during-window")

    recording.revoke("amira", "pharmacy_owner")
    with connect(server, "amira") as session:
        assert session.execute("SHOW pgaudit.log").fetchone() == ("none",)
        session.execute("SELECT 'wk-after-revoke'")
    assert not audited(server, "wk-after-revoke")


def test_log_statement_can_be_chosen_even_where_pgaudit_is_loaded(
    server: AuditedServer,
) -> None:
    with connect(server, "postgres") as admin:
        admin.execute("GRANT SET ON PARAMETER log_statement TO wardkey")
    plain = adapter(server, recording="log_statement")
    assert plain.grant("amira", "pharmacy_owner", UNTIL).detail.startswith(
        "recorded: log_statement=all"
    )
    with connect(server, "amira") as session:
        assert session.execute("SHOW pgaudit.log").fetchone() == ("none",)
        assert session.execute("SHOW log_statement").fetchone() == ("all",)
    plain.revoke("amira", "pharmacy_owner")


def test_one_grant_ending_leaves_the_other_audited_then_the_dba_setting_returns(
    server: AuditedServer,
) -> None:
    with connect(server, "postgres") as admin:  # the trust audits DDL for this login anyway
        admin.execute("ALTER ROLE dev SET pgaudit.log = 'ddl'")
    recording = adapter(server)
    recording.grant("dev", "pharmacy_owner", UNTIL)
    recording.grant("dev", "pharmacy_admin", UNTIL)

    recording.revoke("dev", "pharmacy_admin")
    with connect(server, "dev") as session:  # still holds pharmacy_owner: still audited
        assert session.execute("SHOW pgaudit.log").fetchone() == ("all",)
        session.execute("SELECT count(*), 'wk-between-revokes' FROM stock")
    assert audited(server, "wk-between-revokes")

    recording.revoke("dev", "pharmacy_owner")
    with connect(server, "dev") as session:
        assert session.execute("SHOW pgaudit.log").fetchone() == ("ddl",)
