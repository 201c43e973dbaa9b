"""PostgreSQL: an entitlement is a role; access is membership of it (`GRANT role TO login`).

Identifiers are always quoted with `psycopg.sql`, never formatted into SQL. Revoking also ends the
login's open sessions, because PostgreSQL checks membership at each statement but a session that
already ran `SET ROLE` keeps that role until it ends. Recorded entitlements turn on statement
logging for the login for the window, with pgaudit (`pgaudit.log = 'all'`) where the server has
it loaded and `log_statement = 'all'` otherwise (and end its sessions at grant, since a role
setting only applies to new sessions).

One login can hold several grants at once, so the settings WardKey puts on a login belong to all
of them: each grant and revoke locks the login (an advisory lock, in one transaction with the
GRANT or REVOKE), and WardKey's record on the login itself (`wardkey.state`, a custom setting
that changes nothing in a session) names the roles it granted and, for each setting it changed,
the login's value before. A setting stays while a role WardKey granted, and the login still holds,
needs it; after the last one it goes back to the login's value before (or is reset if it had
none), unless someone changed it by hand meanwhile, in which case their value is kept.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
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
from app.wording import plural

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_IDENTIFIER_BYTES = 63  # NAMEDATALEN - 1: PostgreSQL would silently truncate a longer name
STATE_PARAMETER = "wardkey.state"  # WardKey's record on a login; see the module's docstring
RECORDERS = frozenset({"log_statement", "pgaudit.log"})


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
            with conn.transaction():
                _lock_login(conn, login)
                self._require_role(conn, "login", login)
                self._require_role(conn, "role", role)
                # Known before granting: a role that must be recorded is never granted unrecorded.
                wanted = self._wanted(conn, role)
                _refuse_database_overrides(conn, login, [p for p in wanted if p in RECORDERS])
                present = _is_member(conn, login, role)
                if not present:
                    conn.execute(
                        sql.SQL("GRANT {} TO {}").format(
                            sql.Identifier(role), sql.Identifier(login)
                        )
                    )
                if wanted:
                    _elevate(conn, login, role, wanted)
            recorder = next((p for p in wanted if p in RECORDERS), "")
            # A role setting applies to new sessions only: end open ones (after the commit, so a
            # session that reconnects sees the setting) so every elevated statement is logged.
            ended = _terminate(conn, login) if recorder else 0
            detail = f"recorded: {recorder}=all" if recorder else ""
            if ended:
                detail += f"; ended {plural(ended, 'open session')} so recording covers them"
            return GrantResult(already_present=present, detail=detail.strip("; "))

        return self._run("grant", work)

    def revoke(self, account: str, entitlement: str) -> RevokeResult:
        login, role = _name("login", account), _name("role", entitlement)

        def work(conn: psycopg.Connection[Any]) -> RevokeResult:
            detail = ""
            with conn.transaction():
                _lock_login(conn, login)
                absent = not _is_member(conn, login, role)
                if not absent:
                    conn.execute(
                        sql.SQL("REVOKE {} FROM {}").format(
                            sql.Identifier(role), sql.Identifier(login)
                        )
                    )
                if _role_exists(conn, login):
                    detail = self._step_down_safely(conn, login, role)
            # After the commit: a session that reconnects finds the role gone.
            ended = _terminate(conn, login)
            return RevokeResult(already_absent=absent, sessions_ended=ended, detail=detail)

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

    def _wanted(self, conn: psycopg.Connection[Any], role: str) -> dict[str, str]:
        """The settings a grant of `role` puts on the login for the window."""
        wanted = {}
        if role in self.recorded:
            wanted[self._recorder(conn)] = "all"
        if self.settings.statement_timeout:
            wanted["statement_timeout"] = self.settings.statement_timeout
        if self.settings.read_only:
            wanted["default_transaction_read_only"] = "on"
        return wanted

    def _needed(self, parameter: str, roles: set[str]) -> bool:
        """Whether a grant WardKey made, of one of `roles`, still needs the setting."""
        return bool(roles & self.recorded) if parameter in RECORDERS else bool(roles)

    def _step_down_safely(self, conn: psycopg.Connection[Any], login: str, role: str) -> str:
        """Put back the settings no remaining grant needs. The REVOKE matters more than the
        settings: if putting them back fails, access still goes and the detail says so."""
        try:
            with conn.transaction():  # a savepoint: its failure leaves the REVOKE in place
                return self._step_down(conn, login, role)
        except (psycopg.Error, PermanentAdapterError) as exc:
            log.warning("event=postgres_settings_not_restored error=%s", type(exc).__name__)
            return f"the login's settings were not put back, check them by hand: {exc}".strip()

    def _step_down(self, conn: psycopg.Connection[Any], login: str, role: str) -> str:
        stored = _login_settings(conn, login)
        if STATE_PARAMETER not in stored:
            return ""  # WardKey changed nothing on this login
        state = _Elevation.parse(stored[STATE_PARAMETER], login)
        # Held roles only: one removed by hand no longer keeps anything on.
        state.roles = (state.roles - {role}) & _memberships(conn, login)
        kept, restored, theirs = [], [], []
        for parameter, (before, ours) in sorted(state.settings.items()):
            if self._needed(parameter, state.roles):
                kept.append(parameter)
                continue
            del state.settings[parameter]
            if stored.get(parameter) != ours:
                theirs.append(parameter)  # changed by hand during the window: theirs now
            elif before is None:
                _reset_login(conn, login, parameter)
                restored.append(parameter)
            else:
                _set_login(conn, login, parameter, before)
                restored.append(parameter)
        if state.roles or state.settings:
            _set_login(conn, login, STATE_PARAMETER, state.dump())
        else:
            _reset_login(conn, login, STATE_PARAMETER)
        parts = [
            f"{label}: {', '.join(names)}"
            for label, names in (
                ("settings put back", restored),
                ("kept for the login's other grants", kept),
                ("left as changed by hand", theirs),
            )
            if names
        ]
        return "; ".join(parts)

    @staticmethod
    def _require_role(conn: psycopg.Connection[Any], kind: str, name: str) -> None:
        if not _role_exists(conn, name):
            raise PermanentAdapterError(f"there is no {kind} '{name}' on the server")


@dataclass
class _Elevation:
    """WardKey's record on a login: the roles it granted there, and for each setting it changed,
    (the login's own value before, or None if it had none; the value WardKey set)."""

    roles: set[str] = field(default_factory=set)
    settings: dict[str, tuple[str | None, str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | None, login: str) -> _Elevation:
        if not text:
            return cls()
        try:
            data = json.loads(text)
            return cls(
                {str(r) for r in data["roles"]},
                {
                    str(p): (b if b is None else str(b), str(o))
                    for p, (b, o) in data["settings"].items()
                },
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            raise PermanentAdapterError(
                f"the {STATE_PARAMETER} setting on login '{login}' is not WardKey's record: "
                f"reset it (ALTER ROLE … RESET {STATE_PARAMETER}) after checking the login's "
                "settings by hand"
            ) from None

    def dump(self) -> str:
        data = {"roles": sorted(self.roles), "settings": dict(sorted(self.settings.items()))}
        return json.dumps(data, separators=(",", ":"))


def login_lock_key(login: str) -> str:
    """The advisory lock every WardKey worker takes before changing a login."""
    return f"wardkey.login:{login}"


def _lock_login(conn: psycopg.Connection[Any], login: str) -> None:
    # Held to the end of the transaction, so two workers on one login take turns.
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (login_lock_key(login),))


def _elevate(conn: psycopg.Connection[Any], login: str, role: str, wanted: dict[str, str]) -> None:
    """Set what the grant needs, remembering the login's own value the first time."""
    stored = _login_settings(conn, login)
    state = _Elevation.parse(stored.get(STATE_PARAMETER), login)
    state.roles.add(role)
    for parameter, value in wanted.items():
        before = (
            state.settings[parameter][0] if parameter in state.settings else stored.get(parameter)
        )
        state.settings[parameter] = (before, value)
    _set_login(conn, login, STATE_PARAMETER, state.dump())
    for parameter, value in wanted.items():
        _set_login(conn, login, parameter, value)


def _refuse_database_overrides(
    conn: psycopg.Connection[Any], login: str, recorders: list[str]
) -> None:
    """`ALTER ROLE login IN DATABASE d SET log_statement = 'none'` beats the login-wide setting
    WardKey makes: a recorded role would be granted unrecorded while saying it is recorded."""
    if not recorders:
        return
    rows = conn.execute(
        "SELECT d.datname, c FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
        "JOIN pg_database d ON d.oid = s.setdatabase, unnest(s.setconfig) AS c "
        "WHERE r.rolname = %s AND s.setdatabase <> 0",
        (login,),
    ).fetchall()
    for database, setting in rows:
        name = str(setting).split("=", 1)[0].lower()
        if name in recorders:
            raise PermanentAdapterError(
                f"grant: {login} has its own {name} in database {database}, which would stop "
                f"the session being recorded; a DBA must remove it first (ALTER ROLE {login} "
                f"IN DATABASE {database} RESET {name})"
            )


def _login_settings(conn: psycopg.Connection[Any], login: str) -> dict[str, str]:
    """The login's own settings (`ALTER ROLE login SET …`, for every database)."""
    row = conn.execute(
        "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
        "WHERE r.rolname = %s AND s.setdatabase = 0",
        (login,),
    ).fetchone()
    pairs = (str(item).split("=", 1) for item in (row[0] if row and row[0] else []))
    return {name.lower(): value for name, value in pairs}


def _memberships(conn: psycopg.Connection[Any], login: str) -> set[str]:
    rows = conn.execute(
        "SELECT r.rolname FROM pg_auth_members m "
        "JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles u ON u.oid = m.member "
        "WHERE u.rolname = %s",
        (login,),
    ).fetchall()
    return {str(r[0]) for r in rows}


def _set_login(conn: psycopg.Connection[Any], login: str, parameter: str, value: str) -> None:
    try:
        conn.execute(
            sql.SQL("ALTER ROLE {} SET {} = {}").format(
                sql.Identifier(login), _parameter(parameter), sql.Literal(value)
            )
        )
    except errors.InsufficientPrivilege as exc:
        raise errors.InsufficientPrivilege(
            f"{exc}; WardKey's login needs GRANT SET ON PARAMETER {parameter} TO it"
        ) from None


def _reset_login(conn: psycopg.Connection[Any], login: str, parameter: str) -> None:
    conn.execute(
        sql.SQL("ALTER ROLE {} RESET {}").format(sql.Identifier(login), _parameter(parameter))
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
