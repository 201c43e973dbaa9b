"""PostgreSQL: an entitlement is a role; access is membership of it (`GRANT role TO login`).

Identifiers are always quoted with `psycopg.sql`, never formatted into SQL. Revoking also ends the
login's open sessions, because PostgreSQL checks membership at each statement but a session that
already ran `SET ROLE` keeps that role until it ends. Recorded entitlements turn on statement
logging for the login for the window, with pgaudit (`pgaudit.log = 'all'`) where the server has
it loaded and `log_statement = 'all'` otherwise (and end its sessions at grant, since a role
setting only applies to new sessions), and reset it at revoke.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Literal, TypeVar

import psycopg
from psycopg import errors, sql
from pydantic import BaseModel, ConfigDict, Field

from app.adapters.base import (
    GrantResult,
    PermanentAdapterError,
    RevokeResult,
    TransientAdapterError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_IDENTIFIER_BYTES = 63  # NAMEDATALEN - 1: PostgreSQL would silently truncate a longer name


class PostgresSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field(min_length=1)
    port: int = Field(default=5432, ge=1, le=65535)
    dbname: str = Field(min_length=1)
    user: str = Field(default="wardkey", min_length=1, description="WardKey's own login")
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = (
        "verify-full"
    )
    connect_timeout_seconds: int = Field(default=10, ge=1, le=60)
    statement_timeout: str | None = Field(
        default=None, description="Set on the login while elevated, e.g. '5min'; reset after."
    )
    read_only: bool = Field(
        default=False, description="default_transaction_read_only on the login while elevated."
    )
    recording: Literal["auto", "pgaudit", "log_statement"] = Field(
        default="auto",
        description="How recorded roles are logged: pgaudit where loaded, else log_statement.",
    )


def _name(kind: str, value: str) -> str:
    if not value or "\x00" in value or len(value.encode()) > MAX_IDENTIFIER_BYTES:
        raise PermanentAdapterError(
            f"'{value[:80]}' cannot be a PostgreSQL {kind} name (empty, NUL or over 63 bytes)"
        )
    return value


class PostgresAdapter:
    def __init__(
        self,
        settings: PostgresSettings,
        password: str | None = None,
        recorded: Iterable[str] = (),
    ) -> None:
        self.settings = settings
        self.password = password
        self.recorded = frozenset(recorded)

    # ------------------------------------------------------------------ connections

    def _connect(self) -> psycopg.Connection[Any]:
        s = self.settings
        try:
            return psycopg.connect(
                host=s.host,
                port=s.port,
                dbname=s.dbname,
                user=s.user,
                password=self.password,
                sslmode=s.sslmode,
                connect_timeout=s.connect_timeout_seconds,
                application_name="wardkey",
                options="-c statement_timeout=15000 -c lock_timeout=5000",
                autocommit=True,
            )
        except psycopg.OperationalError as exc:
            raise TransientAdapterError(f"cannot connect to {s.host}:{s.port}: {exc}") from None

    def _run(self, operation: str, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run `work(connection)`, turning driver errors into the adapter's two kinds."""
        try:
            with self._connect() as conn:
                return work(conn)
        except (
            errors.UndefinedObject,
            errors.InsufficientPrivilege,
            errors.InvalidGrantOperation,
            errors.InvalidParameterValue,
        ) as exc:
            raise PermanentAdapterError(f"{operation}: {exc}".strip()) from None
        except (psycopg.OperationalError, errors.QueryCanceled, errors.LockNotAvailable) as exc:
            raise TransientAdapterError(f"{operation}: {exc}".strip()) from None
        except psycopg.Error as exc:
            raise PermanentAdapterError(f"{operation}: {type(exc).__name__}: {exc}") from None

    # --------------------------------------------------------------------- protocol

    def grant(self, account: str, entitlement: str, until: datetime) -> GrantResult:
        login, role = _name("login", account), _name("role", entitlement)

        def work(conn: psycopg.Connection[Any]) -> GrantResult:
            self._require_role(conn, "login", login)
            self._require_role(conn, "role", role)
            # Known before granting: a role that must be recorded is never granted unrecorded.
            recorder = self._recorder(conn) if role in self.recorded else ""
            present = _is_member(conn, login, role)
            if not present:
                conn.execute(
                    sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(login))
                )
            ended = 0
            if recorder:
                self._set_login(conn, login, recorder, "all")
                # A role setting applies to new sessions only: end open ones so that every
                # statement made with the elevated role is in the server log.
                ended = _terminate(conn, login)
            if self.settings.statement_timeout:
                self._set_login(conn, login, "statement_timeout", self.settings.statement_timeout)
            if self.settings.read_only:
                self._set_login(conn, login, "default_transaction_read_only", "on")
            detail = f"recorded: {recorder}=all" if recorder else ""
            if ended:
                detail += f"; ended {ended} open session(s) so recording covers them"
            return GrantResult(already_present=present, detail=detail.strip("; "))

        return self._run("grant", work)

    def revoke(self, account: str, entitlement: str) -> RevokeResult:
        login, role = _name("login", account), _name("role", entitlement)

        def work(conn: psycopg.Connection[Any]) -> RevokeResult:
            absent = not _is_member(conn, login, role)
            if not absent:
                conn.execute(
                    sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(role), sql.Identifier(login))
                )
            if _role_exists(conn, login):
                for parameter in self._session_parameters(conn, role):
                    conn.execute(
                        sql.SQL("ALTER ROLE {} RESET {}").format(
                            sql.Identifier(login), _parameter(parameter)
                        )
                    )
            ended = _terminate(conn, login)
            return RevokeResult(already_absent=absent, sessions_ended=ended)

        return self._run("revoke", work)

    def check(self, account: str, entitlement: str) -> bool:
        login, role = _name("login", account), _name("role", entitlement)
        return self._run("check", lambda conn: _is_member(conn, login, role))

    def end_sessions(self, account: str) -> int:
        login = _name("login", account)
        return self._run("end sessions", lambda conn: _terminate(conn, login))

    def list_members(self, entitlement: str) -> set[str]:
        role = _name("role", entitlement)

        def work(conn: psycopg.Connection[Any]) -> set[str]:
            rows = conn.execute(
                "SELECT u.rolname FROM pg_auth_members m "
                "JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles u ON u.oid = m.member "
                "WHERE r.rolname = %s",
                (role,),
            ).fetchall()
            return {str(r[0]) for r in rows}

        return self._run("list members", work)

    # ---------------------------------------------------------------------- helpers

    def _recorder(self, conn: psycopg.Connection[Any]) -> str:
        """The parameter that records the login's statements on this server."""
        if self.settings.recording == "log_statement":
            return "log_statement"
        # pg_settings lists a module's parameters only once the module is loaded.
        loaded = conn.execute("SELECT 1 FROM pg_settings WHERE name = 'pgaudit.log'").fetchone()
        if loaded:
            return "pgaudit.log"
        if self.settings.recording == "pgaudit":
            raise PermanentAdapterError(
                "recording is 'pgaudit' but the server has not loaded it: add pgaudit to "
                "shared_preload_libraries and run CREATE EXTENSION pgaudit"
            )
        return "log_statement"

    def _session_parameters(self, conn: psycopg.Connection[Any], role: str) -> list[str]:
        names = []
        if role in self.recorded:
            names.append(self._recorder(conn))
        if self.settings.statement_timeout:
            names.append("statement_timeout")
        if self.settings.read_only:
            names.append("default_transaction_read_only")
        return names

    @staticmethod
    def _require_role(conn: psycopg.Connection[Any], kind: str, name: str) -> None:
        if not _role_exists(conn, name):
            raise PermanentAdapterError(f"there is no {kind} '{name}' on the server")

    @staticmethod
    def _set_login(conn: psycopg.Connection[Any], login: str, parameter: str, value: str) -> None:
        conn.execute(
            sql.SQL("ALTER ROLE {} SET {} = {}").format(
                sql.Identifier(login), _parameter(parameter), sql.Literal(value)
            )
        )


def _parameter(name: str) -> sql.Composable:
    """A parameter name, a module's own (`pgaudit.log`) written as its two parts."""
    return sql.SQL(".").join(sql.Identifier(part) for part in name.split("."))


def _role_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is not None


def _is_member(conn: psycopg.Connection[Any], login: str, role: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM pg_auth_members m "
        "JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles u ON u.oid = m.member "
        "WHERE r.rolname = %s AND u.rolname = %s",
        (role, login),
    ).fetchone()
    return row is not None


def _terminate(conn: psycopg.Connection[Any], login: str) -> int:
    rows = conn.execute(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
        "WHERE usename = %s AND pid <> pg_backend_pid()",
        (login,),
    ).fetchall()
    return sum(1 for (ended,) in rows if ended)
