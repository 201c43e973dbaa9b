"""Shared fixtures: the ward's policy, a controllable clock, and databases (SQLite always,
PostgreSQL when a server is reachable; in CI a missing server is a failure, never a skip)."""

from __future__ import annotations

import os
import shutil
import threading
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings

from app.access import AccessService
from app.clock import ManualClock
from app.demo.slack_fake import FakeSlack
from app.directory import SlackDirectory
from app.lifecycle.deps import CoreDeps
from app.notify.notifier import Notifier
from app.policy import Person, Policy, load_policy
from app.slack.app import web_client
from app.store import AuditEvent, Database, upgrade
from tests.fakes.memory_adapter import MemoryTarget

HERE = Path(__file__).parent
POSTGRES_URL = os.environ.get(
    "WARDKEY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
# Every run has schemas of its own (named after its process), so two runs on one server never
# drop each other's tables; modules that make more schemas build their names from this variable.
# WARDKEY_TEST_SCHEMA names them yourself.
RUN_SCHEMA_PREFIX = "wardkey_run"
os.environ.setdefault("WARDKEY_TEST_SCHEMA", f"{RUN_SCHEMA_PREFIX}{os.getpid()}")
# pytest-xdist's workers inherit the environment of the run that started them: each worker
# gets schemas of its own, or two workers would empty each other's tables.
_XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _XDIST_WORKER and not os.environ["WARDKEY_TEST_SCHEMA"].endswith(f"_{_XDIST_WORKER}"):
    os.environ["WARDKEY_TEST_SCHEMA"] += f"_{_XDIST_WORKER}"
TEST_SCHEMA = os.environ["WARDKEY_TEST_SCHEMA"]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# No timing thresholds in tests: Hypothesis's default 200 ms deadline per example (and its
# too-slow check) failed property tests on a busy machine, not on a fault in the code.
settings.register_profile("wardkey", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("wardkey")

# The people of the test trust (tests/data/ward_policy.yaml).
AMIRA = Person(slack_user_id="U0AMIRA", email="amira@ward.nhs.uk")  # clinical systems analyst
BEN = Person(slack_user_id="U0BEN", email="ben@ward.nhs.uk")  # clinical on-call (even days)
CHLOE = Person(slack_user_id="U0CHLOE", email="chloe@ward.nhs.uk")  # clinical on-call (odd days)
DEV = Person(slack_user_id="U0DEV", email="dev@ward.nhs.uk")  # infrastructure engineer
ERIN = Person(slack_user_id="U0ERIN", email="erin@ward.nhs.uk")  # infra lead, also engineer
FARID = Person(slack_user_id="U0FARID", email="farid@ward.nhs.uk")  # infra lead
GITA = Person(slack_user_id="U0GITA", email="gita@ward.nhs.uk")  # manager, WardKey admin
GITA_2ND = Person(slack_user_id="U0GITA2ND", email="gita.other@ward.nhs.uk")  # Gita's 2nd account
HANA = Person(slack_user_id="U0HANA", email="hana@ward.nhs.uk")  # duty manager
VAL = Person(slack_user_id="U0VAL", email="val@vendor.example")  # vendor engineer

# Monday 30 November 2026, 03:00 in London (GMT): Ben is the clinical on-call.
NIGHT_SHIFT = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def policy() -> Policy:
    return load_policy(HERE / "data" / "ward_policy.yaml")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NIGHT_SHIFT)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Migrate once, copy per test: the migrations are the schema, and tests stay fast."""
    path = tmp_path_factory.mktemp("template") / "wardkey.db"
    upgrade(f"sqlite:///{path}")
    return path


def postgres_unreachable(exc: Exception) -> None:
    """Skip with the reason on a developer's machine; fail in CI, where it must run."""
    reason = (
        f"PostgreSQL is not reachable at {POSTGRES_URL} ({str(exc).splitlines()[0]}); "
        "set WARDKEY_TEST_POSTGRES_URL or run .ci/run, which starts one"
    )
    if IN_CI:
        pytest.fail(f"CI must run the PostgreSQL tests: {reason}", pytrace=False)
    pytest.skip(reason)


_SESSIONS_IN_SCHEMA = sa.text(
    "SELECT DISTINCT l.pid, a.query FROM pg_locks l "
    "JOIN pg_class c ON c.oid = l.relation "
    "JOIN pg_namespace n ON n.oid = c.relnamespace "
    "JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE n.nspname = :schema AND l.pid <> pg_backend_pid()"
)


def _end_sessions_in(conn: sa.Connection, schema: str) -> list[str]:
    """End every other session holding locks in `schema`; returns their last statements."""
    lingering = conn.execute(_SESSIONS_IN_SCHEMA, {"schema": schema}).all()
    for pid, _query in lingering:
        conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    return [query for _pid, query in lingering]


def fresh_postgres_schema(schema: str) -> Database:
    """An empty, migrated schema on the real server; skipped (or failed, in CI) if absent."""
    admin = sa.create_engine(sa.engine.make_url(POSTGRES_URL).set(drivername="postgresql+psycopg"))
    try:
        with admin.begin() as conn:
            # A process an earlier test killed or cut off may have left its session idle in a
            # transaction, holding locks in the schema: end it, or the DROP waits for it.
            _end_sessions_in(conn, schema)
            conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    except sa.exc.OperationalError as exc:
        postgres_unreachable(exc)
    finally:
        admin.dispose()
    url = sa.engine.make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    upgrade(url)
    return Database(url)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[Database]:
    """A migrated schema of its own on the real server, shared by the session's tests."""
    database = fresh_postgres_schema(TEST_SCHEMA)
    yield database
    database.dispose()


_EMPTY_ALL = sa.text(
    "TRUNCATE audit_events, request_messages, reviews, decisions, access_requests, "
    "sweep_runs, standing_access, attestations, orphan_flags, seen_requests, "
    "home_views, outbox, lockdowns "
    "RESTART IDENTITY CASCADE"
)


def _empty_postgres(database: Database) -> None:
    """Empty the session's schema for the next test. A thread an earlier test left running
    (a heartbeat, a worker) can hold a lock the TRUNCATE waits for, or deadlock with it: its
    session is ended, with a warning naming its statement so the leak gets mended, and the
    TRUNCATE tried again."""
    for attempt in (1, 2, 3):
        try:
            with database.engine.begin() as conn:
                conn.execute(sa.text("SET LOCAL lock_timeout = '2s'"))
                conn.execute(_EMPTY_ALL)
            return
        except sa.exc.OperationalError:
            if attempt == 3:
                raise
            with database.engine.begin() as conn:
                for query in _end_sessions_in(conn, TEST_SCHEMA):
                    warnings.warn(
                        f"a session an earlier test left running held locks in the test "
                        f"schema and was ended; its last statement: {query[:200]}",
                        stacklevel=2,
                    )


def sqlite_copy(tmp_path: Path, sqlite_template: Path) -> Iterator[Database]:
    """A migrated SQLite database of the test's own (modules testing only the Slack layer
    use it as their `db`: the service's PostgreSQL behaviour has its own tests)."""
    path = tmp_path / "wardkey.db"
    shutil.copy(sqlite_template, path)
    database = Database(f"sqlite:///{path}")
    yield database
    database.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        yield from sqlite_copy(tmp_path, sqlite_template)
    else:
        database = request.getfixturevalue("postgres_database")
        _empty_postgres(database)
        yield database


@pytest.fixture
def targets() -> dict[str, MemoryTarget]:
    return {"pharmacy-db": MemoryTarget(), "directory": MemoryTarget()}


@pytest.fixture
def pauses() -> list[float]:
    """The waits the service asked for between adapter retries (none are really waited)."""
    return []


@pytest.fixture
def service(
    db: Database,
    policy: Policy,
    targets: dict[str, MemoryTarget],
    clock: ManualClock,
    pauses: list[float],
) -> AccessService:
    return AccessService(CoreDeps(db, policy, targets, clock, pause=pauses.append))


def audit_actions(service: AccessService, request_id: int | None = None) -> list[str]:
    """The audit trail's actions in order: of one request, or all of them."""
    query = sa.select(AuditEvent.action).order_by(AuditEvent.seq)
    if request_id is not None:
        query = query.where(AuditEvent.request_id == request_id)
    with service.db.read() as session:
        return list(session.scalars(query))


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    """The local fake of the Slack Web API, knowing the ward's people."""
    from tests.slack_harness import WARD_USERS  # (it imports this module)

    slack = FakeSlack().start()
    for user in WARD_USERS:
        slack.add_user(user)
    yield slack
    slack.stop()


@pytest.fixture
def notifier(service: AccessService, fake: FakeSlack) -> Notifier:
    """What a process tells Slack with: its notifier (and outbox) on the fake."""
    client = web_client(fake.token, fake.api_url)
    return Notifier(client, service, SlackDirectory(client))


_BACKGROUND = ("inbox-heartbeat", "inbox-writer", "wardkey-outbox", "wardkey-outbox-lease")


@pytest.fixture(autouse=True)
def no_background_thread_left_running() -> Iterator[None]:
    """A test that starts an inbox (an app served, an Intake) or a background outbox closes
    it: a thread left running writes to the next test's tables, and once deadlocked with
    their emptying."""
    before = {t for t in threading.enumerate() if t.name in _BACKGROUND}
    yield
    left = [t.name for t in threading.enumerate() if t.name in _BACKGROUND and t not in before]
    assert not left, f"the test left {left} running: close the Intake, WardKeyWSGI or Outbox"


# The fault tests that run real `serve` and `worker` processes and measure what they did
# (takeover times, how late revokes land) run one after another on one pytest-xdist worker, and
# start first: beside each other they would load the machine more than they are meant to be.
# Every other module stays whole on one worker too, so its module-wide fixtures (slapd, a
# throwaway PostgreSQL, a built wheel) are set up once. (`-n auto` in pyproject.toml; `-n 0`
# runs everything in one process.)
FAULT_TESTS = "fault tests with real processes"
FAULT_TEST_MODULES = frozenset(
    {
        "tests/system/test_reliability.py",
        "tests/system/test_workers_killed.py",
        "tests/system/test_topology.py",
        "tests/slack/test_intake_faults.py",
        "tests/notify/test_outbox.py",
    }
)


def _work_unit(nodeid: str) -> str:
    """The tests that go to one worker together: the fault tests, or one module."""
    module = nodeid.split("::", 1)[0]
    return FAULT_TESTS if module in FAULT_TEST_MODULES else module


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The fault tests first (the longest work unit), the rest in their order."""
    items.sort(key=lambda item: _work_unit(item.nodeid) != FAULT_TESTS)


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Hands out whole work units (`_work_unit`) in collection order. (xdist's own
    `--dist loadgroup` would do it with marks, but it stopped grouping with pytest 9.2:
    pytest-xdist issue #1386.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ByWorkUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _work_unit(nodeid)

    config.option.loadscopereorder = False  # keep the fault tests first
    return ByWorkUnit(config, log)  # type: ignore[arg-type]


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Drop this run's schemas, and those of earlier runs whose process is gone."""
    if not TEST_SCHEMA.startswith(RUN_SCHEMA_PREFIX):
        return  # named by the person running the tests: theirs to keep
    admin = sa.create_engine(sa.engine.make_url(POSTGRES_URL).set(drivername="postgresql+psycopg"))
    try:
        with admin.begin() as conn:
            names = conn.execute(
                sa.text("SELECT nspname FROM pg_namespace WHERE nspname LIKE :prefix"),
                {"prefix": RUN_SCHEMA_PREFIX + "%"},
            ).scalars()
            for name in list(names):
                if name.startswith(TEST_SCHEMA) or not _process_alive(name):
                    conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
    except sa.exc.OperationalError:
        pass  # no server: nothing was made
    finally:
        admin.dispose()


def _process_alive(schema: str) -> bool:
    digits = schema.removeprefix(RUN_SCHEMA_PREFIX).split("_")[0]
    if not digits.isdigit():
        return True
    try:
        os.kill(int(digits), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
