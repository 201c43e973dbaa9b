"""The PostgreSQL adapter against a real server: the elevated login really can (and then really
cannot) use the role, open sessions are ended, recording is switched on and off, and hostile
names are quoted or refused. WardKey's own login here is not a superuser: it has only what
docs/targets.md says the adapter needs."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import sql

from app.access import AccessService
from app.adapters.base import PermanentAdapterError, TransientAdapterError
from app.adapters.postgres import PostgresAdapter, PostgresSettings, login_lock_key
from app.clock import ManualClock
from app.store.models import RequestState as S
from tests.conftest import POSTGRES_URL, postgres_unreachable
from tests.small_trust import AMIRA, BEN, one_target_service, role

pytestmark = pytest.mark.postgres
UNTIL = datetime(2030, 1, 1, tzinfo=UTC)
PASSWORD = "wk-test-password"  # every login here has it, so password authentication works too


@dataclass
class Server:
    host: str
    port: int
    dbname: str
    prefix: str  # every role this module creates starts with it
    admin: str  # the server's superuser, standing in for the hospital's DBA

    def role(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def connect(self, user: str) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=self.host, port=self.port, dbname=self.dbname, user=user, password=PASSWORD,
            autocommit=True,
        )  # fmt: skip

    def settings(self, **changes: Any) -> PostgresSettings:
        values: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "dbname": self.dbname,
            "user": self.role("adapter"),
            "sslmode": "disable",
        }
        return PostgresSettings(**{**values, **changes})

    def can_read(self, login: str) -> bool:
        with self.connect(login) as conn:
            try:
                conn.execute(sql.SQL("SELECT count(*) FROM {}").format(self.table))
            except psycopg.errors.InsufficientPrivilege:
                return False
            return True

    def login_settings(self, login: str) -> dict[str, str]:
        """What `ALTER ROLE login SET …` has stored for the login in every database."""
        with self.connect(self.role("adapter")) as conn:
            row = conn.execute(
                "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_roles r "
                "ON r.oid = s.setrole WHERE r.rolname = %s AND s.setdatabase = 0",
                (login,),
            ).fetchone()
        return dict(item.split("=", 1) for item in row[0]) if row else {}

    def dba_sets(self, login: str, parameter: str, value: str) -> None:
        """The hospital's DBA configures the login by hand, before or outside WardKey."""
        with self.connect(self.admin) as conn:
            conn.execute(
                sql.SQL("ALTER ROLE {} SET {} = {}").format(
                    sql.Identifier(login), sql.Identifier(parameter), sql.Literal(value)
                )
            )

    def waiting_for_a_login_lock(self) -> int:
        with self.connect(self.admin) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND NOT l.granted "
                "AND a.application_name = 'wardkey'"
            ).fetchone()
        return int(row[0]) if row else 0

    @property
    def table(self) -> sql.Identifier:
        return sql.Identifier(self.role("stock"))


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    url = sa.engine.make_url(POSTGRES_URL)
    try:
        admin = psycopg.connect(
            host=url.host, port=url.port or 5432, dbname=url.database, user=url.username,
            password=url.password, autocommit=True, connect_timeout=5,
        )  # fmt: skip
    except psycopg.OperationalError as exc:
        postgres_unreachable(exc)
    srv = Server(url.host or "127.0.0.1", url.port or 5432, url.database or "test",
                 f"wkt{secrets.token_hex(3)}_", url.username or "postgres")  # fmt: skip
    r = srv.role
    odd = 'o\'brien "x"'
    statements = [
        ("CREATE ROLE {} NOLOGIN", "pharmacy_read"),
        ("CREATE ROLE {} NOLOGIN", "pharmacy_owner"),
        ("CREATE TABLE {} (item text)", "stock"),
        ("CREATE ROLE {} LOGIN PASSWORD 'wk-test-password'", "amira"),
        ("CREATE ROLE {} LOGIN PASSWORD 'wk-test-password'", "ben"),
        ("CREATE ROLE {} LOGIN PASSWORD 'wk-test-password'", odd),
        # WardKey's own login: least privilege, as docs/targets.md lists it.
        ("CREATE ROLE {} LOGIN CREATEROLE PASSWORD 'wk-test-password'", "adapter"),
        ("GRANT pg_signal_backend TO {}", "adapter"),
        ("GRANT SET ON PARAMETER log_statement TO {}", "adapter"),
        ("GRANT SET ON PARAMETER wardkey.state TO {}", "adapter"),
    ]
    for template, name in statements:
        admin.execute(sql.SQL(template).format(sql.Identifier(r(name))))
    admin.execute(
        sql.SQL("GRANT SELECT ON {} TO {}").format(
            sql.Identifier(r("stock")), sql.Identifier(r("pharmacy_read"))
        )
    )
    try:
        yield srv
    finally:
        admin.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(r("stock"))))
        for parameter in ("log_statement", "wardkey.state"):
            admin.execute(
                sql.SQL("REVOKE SET ON PARAMETER {} FROM {}").format(
                    sql.SQL(parameter), sql.Identifier(r("adapter"))
                )
            )
        for (name,) in admin.execute(
            "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", (srv.prefix,)
        ).fetchall():
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
        admin.close()


@pytest.fixture
def adapter(server: Server) -> Iterator[PostgresAdapter]:
    yield PostgresAdapter(server.settings(), PASSWORD)
    with server.connect(server.admin) as conn:  # leave no membership or setting behind
        for login in ("amira", "ben", 'o\'brien "x"'):
            for role in ("pharmacy_read", "pharmacy_owner"):
                conn.execute(
                    sql.SQL("REVOKE {} FROM {}").format(
                        sql.Identifier(server.role(role)), sql.Identifier(server.role(login))
                    )
                )
            conn.execute(
                sql.SQL("ALTER ROLE {} RESET ALL").format(sql.Identifier(server.role(login)))
            )


class TestGrantAndRevoke:
    def test_the_privilege_works_only_while_granted(
        self, server: Server, adapter: PostgresAdapter
    ) -> None:
        login, role = server.role("amira"), server.role("pharmacy_read")
        assert not server.can_read(login)
        assert not adapter.check(login, role)

        granted = adapter.grant(login, role, UNTIL)
        assert not granted.already_present
        assert adapter.check(login, role)
        assert login in adapter.list_members(role)
        assert server.can_read(login)

        revoked = adapter.revoke(login, role)
        assert not revoked.already_absent
        assert not adapter.check(login, role)
        assert not server.can_read(login)

    def test_an_open_session_is_ended_at_revoke(
        self, server: Server, adapter: PostgresAdapter
    ) -> None:
        login, role = server.role("amira"), server.role("pharmacy_read")
        adapter.grant(login, role, UNTIL)
        with server.connect(login) as psql:
            psql.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
            psql.execute(sql.SQL("SELECT count(*) FROM {}").format(server.table))
            assert adapter.revoke(login, role).sessions_ended == 1
            with pytest.raises(psycopg.OperationalError):
                psql.execute(sql.SQL("SELECT count(*) FROM {}").format(server.table))

    def test_granting_and_revoking_twice_is_success(
        self, server: Server, adapter: PostgresAdapter
    ) -> None:
        login, role = server.role("ben"), server.role("pharmacy_read")
        assert not adapter.grant(login, role, UNTIL).already_present
        assert adapter.grant(login, role, UNTIL).already_present
        assert not adapter.revoke(login, role).already_absent
        assert adapter.revoke(login, role).already_absent

    def test_recorded_roles_log_every_statement_for_the_window(
        self, server: Server, adapter: PostgresAdapter
    ) -> None:
        login, role = server.role("amira"), server.role("pharmacy_owner")
        recording = PostgresAdapter(server.settings(), PASSWORD, recorded={role})

        with server.connect(login) as already_open:
            result = recording.grant(login, role, UNTIL)
            assert server.login_settings(login)["log_statement"] == "all"
            assert "ended 1 open session" in result.detail
            with pytest.raises(psycopg.OperationalError):
                already_open.execute("SELECT 1")  # it would not have been logged
        with server.connect(login) as fresh:
            assert fresh.execute("SHOW log_statement").fetchone() == ("all",)
        recording.revoke(login, role)
        assert server.login_settings(login) == {}

    def test_a_per_database_override_that_would_stop_recording_is_refused(
        self, server: Server, adapter: PostgresAdapter
    ) -> None:
        """A DBA once set `log_statement = none` for the login in this database only: it beats
        the login-wide setting, so a recorded role would go unrecorded. WardKey refuses."""
        login, role = server.role("amira"), server.role("pharmacy_owner")
        recording = PostgresAdapter(server.settings(), PASSWORD, recorded={role})
        override = sql.SQL("ALTER ROLE {} IN DATABASE {} {}")
        with server.connect(server.admin) as conn:
            conn.execute(
                override.format(
                    sql.Identifier(login),
                    sql.Identifier(server.dbname),
                    sql.SQL("SET log_statement = 'none'"),
                )
            )
        try:
            with pytest.raises(PermanentAdapterError, match="would stop the session being"):
                recording.grant(login, role, UNTIL)
            assert not recording.check(login, role)
            reader = server.role("pharmacy_read")
            assert not adapter.grant(login, reader, UNTIL).already_present  # unrecorded: fine
            adapter.revoke(login, reader)
        finally:
            with server.connect(server.admin) as conn:
                conn.execute(
                    override.format(
                        sql.Identifier(login),
                        sql.Identifier(server.dbname),
                        sql.SQL("RESET log_statement"),
                    )
                )


class TestSettingsSharedByGrants:
    """Two recorded grants on one login: the settings follow the last one out, and what the DBA
    had set before WardKey comes back."""

    @pytest.fixture
    def both_recorded(self, server: Server, adapter: PostgresAdapter) -> PostgresAdapter:
        roles = {server.role("pharmacy_read"), server.role("pharmacy_owner")}
        return PostgresAdapter(server.settings(), PASSWORD, recorded=roles)

    def test_ending_one_recorded_grant_keeps_recording_for_the_other(
        self, server: Server, both_recorded: PostgresAdapter
    ) -> None:
        amira = server.role("amira")
        server.dba_sets(amira, "log_statement", "ddl")  # the trust logs DDL for every login
        both_recorded.grant(amira, server.role("pharmacy_read"), UNTIL)
        both_recorded.grant(amira, server.role("pharmacy_owner"), UNTIL)

        both_recorded.revoke(amira, server.role("pharmacy_owner"))
        assert server.login_settings(amira)["log_statement"] == "all"
        with server.connect(amira) as session:  # still elevated, still recorded
            assert session.execute("SHOW log_statement").fetchone() == ("all",)

        both_recorded.revoke(amira, server.role("pharmacy_read"))
        assert server.login_settings(amira) == {"log_statement": "ddl"}
        assert both_recorded.revoke(amira, server.role("pharmacy_read")).already_absent
        assert server.login_settings(amira) == {"log_statement": "ddl"}

    def test_timeout_and_read_only_hold_until_the_last_grant_ends(self, server: Server) -> None:
        ben = server.role("ben")
        server.dba_sets(ben, "statement_timeout", "30s")
        guarded = PostgresAdapter(
            server.settings(statement_timeout="5min", read_only=True), PASSWORD
        )
        guarded.grant(ben, server.role("pharmacy_read"), UNTIL)
        guarded.grant(ben, server.role("pharmacy_owner"), UNTIL)
        guarded.revoke(ben, server.role("pharmacy_read"))
        with server.connect(ben) as session:
            assert session.execute("SHOW statement_timeout").fetchone() == ("5min",)
            assert session.execute("SHOW default_transaction_read_only").fetchone() == ("on",)

        guarded.revoke(ben, server.role("pharmacy_owner"))
        assert server.login_settings(ben) == {"statement_timeout": "30s"}

    def test_a_value_the_dba_changes_during_the_window_is_left_as_they_set_it(
        self, server: Server, both_recorded: PostgresAdapter
    ) -> None:
        amira = server.role("amira")
        both_recorded.grant(amira, server.role("pharmacy_owner"), UNTIL)
        server.dba_sets(amira, "log_statement", "mod")  # an investigation needs it kept on
        both_recorded.revoke(amira, server.role("pharmacy_owner"))
        assert server.login_settings(amira) == {"log_statement": "mod"}

    def test_access_still_goes_when_the_settings_cannot_be_put_back(self, server: Server) -> None:
        ben, role = server.role("ben"), server.role("pharmacy_read")
        guarded = PostgresAdapter(server.settings(read_only=True), PASSWORD)
        guarded.grant(ben, role, UNTIL)
        adapter_login = sql.Identifier(server.role("adapter"))
        with server.connect(server.admin) as dba:  # someone tidies WardKey's privileges away
            dba.execute(
                sql.SQL("REVOKE SET ON PARAMETER wardkey.state FROM {}").format(adapter_login)
            )
        try:
            revoked = guarded.revoke(ben, role)
        finally:
            with server.connect(server.admin) as dba:
                dba.execute(
                    sql.SQL("GRANT SET ON PARAMETER wardkey.state TO {}").format(adapter_login)
                )
        assert not guarded.check(ben, role)
        assert not server.can_read(ben)
        assert "settings were not put back" in revoked.detail

    def test_two_workers_on_one_login_take_turns(
        self, server: Server, both_recorded: PostgresAdapter
    ) -> None:
        amira = server.role("amira")
        server.dba_sets(amira, "log_statement", "ddl")
        roles = [server.role("pharmacy_read"), server.role("pharmacy_owner")]

        def at_once(call: Callable[[str], object]) -> None:
            """Both calls start while the login is locked, so they meet at the lock."""
            with server.connect(server.admin) as holder:
                holder.execute(
                    "SELECT pg_advisory_lock(hashtextextended(%s, 0))", (login_lock_key(amira),)
                )
                workers = [threading.Thread(target=noting(call), args=(r,)) for r in roles]
                for worker in workers:
                    worker.start()
                deadline = 200
                while server.waiting_for_a_login_lock() < 2 and deadline:
                    if not any(w.is_alive() for w in workers):
                        break
                    deadline -= 1
                    threading.Event().wait(0.05)
                waited = server.waiting_for_a_login_lock()
                holder.execute("SELECT pg_advisory_unlock_all()")
            for worker in workers:
                worker.join()
            assert not failures
            assert waited == 2, "both workers must wait for the login's lock"

        failures: list[BaseException] = []

        def noting(call: Callable[[str], object]) -> Callable[[str], None]:
            def run(role: str) -> None:
                try:
                    call(role)
                except BaseException as exc:  # a thread's error would otherwise be lost
                    failures.append(exc)

            return run

        at_once(lambda r: both_recorded.grant(amira, r, UNTIL))
        assert all(both_recorded.check(amira, r) for r in roles)
        assert server.login_settings(amira)["log_statement"] == "all"
        at_once(lambda r: both_recorded.revoke(amira, r))
        assert not any(both_recorded.check(amira, r) for r in roles)
        assert server.login_settings(amira) == {"log_statement": "ddl"}


class TestRefusals:
    def test_pgaudit_asked_for_but_not_loaded_refuses_to_grant(self, server: Server) -> None:
        login, role = server.role("amira"), server.role("pharmacy_owner")
        strict = PostgresAdapter(server.settings(recording="pgaudit"), PASSWORD, recorded={role})
        with pytest.raises(PermanentAdapterError, match="shared_preload_libraries"):
            strict.grant(login, role, UNTIL)
        with server.connect(server.role("adapter")) as conn:
            assert not conn.execute(
                "SELECT 1 FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
                "JOIN pg_roles u ON u.oid = m.member WHERE r.rolname = %s AND u.rolname = %s",
                (role, login),
            ).fetchone()

    def test_hostile_names_are_quoted_never_run(
        self, server: Server, adapter: PostgresAdapter
    ) -> None:
        role = server.role("pharmacy_read")
        hostile = f'{server.role("ben")}"; DROP ROLE "{server.role("amira")}"; --'
        with pytest.raises(PermanentAdapterError, match="there is no login"):
            adapter.grant(hostile, role, UNTIL)
        assert adapter.check(server.role("amira"), role) is False
        with server.connect(server.role("amira")):  # still exists
            pass
        odd = server.role('o\'brien "x"')
        adapter.grant(odd, role, UNTIL)
        assert adapter.check(odd, role)
        adapter.revoke(odd, role)

    def test_names_postgres_would_truncate_are_refused(self, adapter: PostgresAdapter) -> None:
        with pytest.raises(PermanentAdapterError, match="over 63 bytes"):
            adapter.grant("a" * 64, "pharmacy_read", UNTIL)
        with pytest.raises(PermanentAdapterError, match="NUL"):
            adapter.check("amira\x00", "pharmacy_read")

    def test_an_unknown_role_is_permanent(self, server: Server, adapter: PostgresAdapter) -> None:
        with pytest.raises(PermanentAdapterError, match="there is no role"):
            adapter.grant(server.role("amira"), server.role("no_such_role"), UNTIL)

    def test_a_server_that_is_down_is_transient(self, server: Server) -> None:
        down = PostgresAdapter(server.settings(port=1, connect_timeout_seconds=2))
        with pytest.raises(TransientAdapterError, match="cannot connect"):
            down.check(server.role("amira"), server.role("pharmacy_read"))


class TestThroughTheService:
    @pytest.fixture
    def world(
        self, server: Server, adapter: PostgresAdapter, tmp_path: Path, sqlite_template: Path
    ) -> Iterator[tuple[AccessService, dict[str, Any], ManualClock]]:
        target = {
            "kind": "postgres",
            "settings": {"host": "localhost", "dbname": "test"},
            "account": {"template": server.prefix + "{local}"},
            "roles": {"read": role("clinical", server.role("pharmacy_read"))},
        }
        service, adapters, clock = one_target_service(
            tmp_path, sqlite_template, "pharmacy-db", target, adapter
        )
        yield service, adapters, clock
        service.db.dispose()

    def test_approved_access_works_then_expires_on_the_server(
        self, server: Server, world: tuple[AccessService, dict[str, Any], ManualClock]
    ) -> None:
        service, _, clock = world
        view = service.request(
            AMIRA, "pharmacy-db", "read", timedelta(minutes=30), "fix the stock levels"
        )
        assert service.approve(view.id, BEN).state == S.ACTIVE
        assert server.can_read(server.role("amira"))
        clock.advance(timedelta(minutes=31))
        assert service.expire_due() == [view.id]
        assert service.get(view.id).state == S.ENDED
        assert not server.can_read(server.role("amira"))

    def test_membership_held_before_wardkey_survives_expiry(
        self,
        server: Server,
        adapter: PostgresAdapter,
        world: tuple[AccessService, dict[str, Any], ManualClock],
    ) -> None:
        service, _, clock = world
        login, role = server.role("amira"), server.role("pharmacy_read")
        adapter.grant(login, role, UNTIL)  # standing access someone gave by hand
        view = service.request(
            AMIRA, "pharmacy-db", "read", timedelta(minutes=30), "fix the stock levels"
        )
        service.approve(view.id, BEN)
        clock.advance(timedelta(minutes=31))
        service.expire_due()
        assert service.get(view.id).state == S.ENDED
        assert adapter.check(login, role), "pre-existing membership must be left alone"

    def test_server_down_at_grant_never_shows_active(
        self, server: Server, world: tuple[AccessService, dict[str, Any], ManualClock]
    ) -> None:
        service, adapters, _ = world
        adapters["pharmacy-db"] = PostgresAdapter(server.settings(port=1))
        view = service.request(
            AMIRA, "pharmacy-db", "read", timedelta(minutes=30), "fix the stock levels"
        )
        assert service.approve(view.id, BEN).state == S.GRANT_FAILED

    def test_server_down_at_revoke_fails_loudly_then_recovers(
        self,
        server: Server,
        adapter: PostgresAdapter,
        world: tuple[AccessService, dict[str, Any], ManualClock],
    ) -> None:
        service, adapters, clock = world
        view = service.request(
            AMIRA, "pharmacy-db", "read", timedelta(minutes=30), "fix the stock levels"
        )
        service.approve(view.id, BEN)
        adapters["pharmacy-db"] = PostgresAdapter(server.settings(port=1))
        clock.advance(timedelta(minutes=31))
        service.expire_due()
        assert service.get(view.id).state == S.REVOKE_FAILED
        assert server.can_read(server.role("amira"))  # honest: it is still there
        adapters["pharmacy-db"] = adapter
        assert service.grants.retry_revoke(view.id).state == S.ENDED
        assert not server.can_read(server.role("amira"))
