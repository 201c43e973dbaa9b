"""Engine and transactions. SQLite works out of the box; PostgreSQL is for production."""

from __future__ import annotations

import logging
import select
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger(__name__)
# A server that takes the connection and never answers must not hang a command or a sweep:
# connecting gives up after this long, and the server ends any statement that runs longer.
CONNECT_TIMEOUT_SECONDS = 5
STATEMENT_TIMEOUT_SECONDS = 30
# A client that died or was cut off mid-transaction leaves its server session holding locks until
# TCP notices (hours, by default): the server ends such a session after this long idle.
IDLE_IN_TRANSACTION_SECONDS = 300
# How long a thread waits for a pooled connection before it is told the database is busy.
POOL_TIMEOUT_SECONDS = 10
# A pooled connection idle longer than this is pinged before use (a firewall or a network that
# dropped it silently says nothing); a busier one only when the server wrote to it meanwhile.
PING_IDLE_SECONDS = 5.0


def normalise_url(url: str | URL) -> URL:
    """Accept the usual `postgresql://` spelling and use psycopg 3 for it."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def bounded(url: str | URL, connect_seconds: float, statement_seconds: float) -> URL:
    """The same PostgreSQL database on connections that give up when the server does not
    answer: the connect within `connect_seconds`, each statement within `statement_seconds`
    (0: no limit), a server-side end to a session left idle in a transaction (a client that
    died mid-transaction holds no locks for long), and TCP keepalives so a silently dropped
    connection is noticed. Values the URL sets itself are kept."""
    parsed = normalise_url(url)
    query = dict(parsed.query)
    options = str(query.get("options", ""))
    if statement_seconds and "statement_timeout" not in options:
        options = f"{options} -c statement_timeout={int(statement_seconds * 1000)}".strip()
    if "idle_in_transaction_session_timeout" not in options:
        idle = int(IDLE_IN_TRANSACTION_SECONDS * 1000)
        options = f"{options} -c idle_in_transaction_session_timeout={idle}".strip()
    extra = {
        "connect_timeout": str(max(1, round(connect_seconds))),
        "keepalives": "1",
        "keepalives_idle": "10",
        "keepalives_interval": "5",
        "keepalives_count": "3",
    }
    new = {k: v for k, v in extra.items() if k not in query}
    if options:
        new["options"] = options
    return parsed.update_query_dict(new)


class DatabaseOutage:
    """Logs a database outage once when it starts (event=database_unreachable) and once when
    it ends (event=database_back, with how long it lasted), not a traceback per failed call.

    A caller notes when its call to the database begins (`call_began`) and hands that to
    `answered`: only a call begun after the outage started can end it. One already under way
    when the database went away may still finish, and says nothing of the database now (under
    load, such a straggler logged one outage as three)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.down_since: float | None = None
        self.failures = 0
        self._outages = 0  # how many have begun: a call's `call_began`

    def call_began(self) -> int:
        """For `answered`, when this call's answer comes."""
        return self._outages

    def failed(self, where: str, exc: BaseException) -> None:
        with self._lock:
            self.failures += 1
            if self.down_since is not None:
                return
            self.down_since = time.monotonic()
            self._outages += 1
        log.error(
            "event=database_unreachable where=%s error=%s",
            where,
            _short(exc),
        )

    def answered(self, call_began: int) -> None:
        """The call that `call_began` noted was answered: the outage is over if the call
        began after it started."""
        if self.down_since is None:  # the usual case: no lock, no work
            return
        with self._lock:
            if self.down_since is None or call_began != self._outages:
                return
            lasted = time.monotonic() - self.down_since
            failures, self.down_since, self.failures = self.failures, None, 0
        log.warning("event=database_back down_seconds=%.1f failed_calls=%s", lasted, failures)


def is_database_error(exc: BaseException) -> bool:
    """The database could not be reached or did not answer in time (refused or lost
    connections, connect and statement time-outs, no pooled connection free): not a bug."""
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeout):
        return True
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated
    # The driver's own, where code uses a raw connection (the audit trail's streamed read).
    module = type(exc).__module__
    return module.startswith("psycopg") and any(
        base.__name__ in ("OperationalError", "InterfaceError") for base in type(exc).__mro__
    )


def unreachable(url: str | URL, exc: BaseException) -> str:
    """One line for an operator: which database did not answer, and what to check."""
    where = normalise_url(url).render_as_string()
    return f"the database at {where} did not answer ({_short(exc)}); check that it is up"


def _short(exc: BaseException) -> str:
    """The error's type and first line, without a password or a wall of driver text."""
    orig = getattr(exc, "orig", None) or exc
    first = (str(orig).strip().splitlines() or [""])[0][:200]
    return f"{type(orig).__name__}: {first}" if first else type(orig).__name__


class Database:
    def __init__(
        self,
        url: str | URL,
        *,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        statement_timeout: float = STATEMENT_TIMEOUT_SECONDS,
        **engine_options: Any,
    ) -> None:
        self.url = normalise_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        self.connect_timeout = connect_timeout
        self.outage = DatabaseOutage()
        connect_url = self.url
        if self.is_sqlite:
            engine_options.setdefault("connect_args", {"timeout": 30, "check_same_thread": False})
        else:
            connect_url = bounded(self.url, connect_timeout, statement_timeout)
            engine_options.setdefault("pool_size", 10)
            engine_options.setdefault("max_overflow", 20)
            engine_options.setdefault("pool_timeout", POOL_TIMEOUT_SECONDS)
        self.engine: Engine = create_engine(connect_url, **engine_options)
        if self.is_sqlite:
            _configure_sqlite(self.engine)
        elif not engine_options.get("pool_pre_ping"):
            _ping_when_doubtful(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Reads take no write lock, so on SQLite they run beside a writer (WAL) instead of
        # queueing behind it. On PostgreSQL they run outside a transaction: at READ COMMITTED
        # each statement sees its own snapshot anyway, and BEGIN and ROLLBACK would be two
        # round trips for nothing.
        reading: dict[str, object] = {"wardkey_read_only": True}
        if not self.is_sqlite:
            reading["isolation_level"] = "AUTOCOMMIT"
        self._read_sessions = sessionmaker(
            self.engine.execution_options(**reading), expire_on_commit=False
        )
        self._streamed_read_sessions = sessionmaker(
            self.engine.execution_options(wardkey_read_only=True), expire_on_commit=False
        )

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: commit on success, roll back on any exception."""
        with self._sessions.begin() as session:
            yield session

    @contextmanager
    def read(self, streamed: bool = False) -> Iterator[Session]:
        """A session for reading only (never committed). `streamed`: the read goes through a
        server-side cursor (`yield_per`), which PostgreSQL keeps only inside a transaction."""
        with (self._streamed_read_sessions if streamed else self._read_sessions)() as session:
            yield session

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def unreachable(self, exc: BaseException) -> str:
        return unreachable(self.url, exc)

    def dispose(self) -> None:
        self.engine.dispose()


def configured_database(settings: Settings) -> Database:
    """The database DATABASE_URL names, on connections that give up when the server does not
    answer (WARDKEY_DB_CONNECT_TIMEOUT_SECONDS, WARDKEY_DB_STATEMENT_TIMEOUT_SECONDS)."""
    return Database(
        settings.database_url,
        connect_timeout=settings.wardkey_db_connect_timeout_seconds,
        statement_timeout=settings.wardkey_db_statement_timeout_seconds,
    )


def _ping_when_doubtful(engine: Engine) -> None:
    """Ping a pooled connection before use only when it may be dead, not before every
    transaction (a round trip each: a fifth of a request's statements). A server that restarts
    or ends the session writes to it first, so its socket turns readable; a connection idle for
    long may have been dropped without a word. A failed ping makes the pool connect afresh."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.pop("idle_since", None)
        if idle_since is None:
            return  # just connected
        if time.monotonic() - idle_since < PING_IDLE_SECONDS and not _readable(dbapi_conn):
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            raise DisconnectionError(f"a pooled connection was dead: {_short(exc)}") from exc


def _readable(dbapi_conn: Any) -> bool:
    """Has the server written to this idle connection (a goodbye, or the end of the stream)?"""
    try:
        ready, _, _ = select.select([dbapi_conn.fileno()], [], [], 0)
    except (OSError, ValueError):  # closed already
        return True
    return bool(ready)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself (below); pysqlite's own deferred BEGIN would let two
        # writers read first and then deadlock on the upgrade to a write lock.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        read_only = conn.get_execution_options().get("wardkey_read_only", False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
