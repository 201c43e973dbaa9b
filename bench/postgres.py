"""The PostgreSQL server the benchmarks run against, and a fresh migrated schema on it."""

from __future__ import annotations

import os
import sys

import sqlalchemy as sa

from app.store import Database, upgrade

POSTGRES_SERVER = os.environ.get(
    "WARDKEY_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def fresh_schema(schema: str, script: str) -> Database:
    """An empty, migrated `schema` (dropped first if there); `script` names the benchmark in
    the one line it exits with when the server is not there."""
    server = sa.engine.make_url(POSTGRES_SERVER)
    admin = sa.create_engine(server.set(drivername="postgresql+psycopg"))
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    except sa.exc.OperationalError as exc:
        sys.exit(f"{script} needs PostgreSQL at {POSTGRES_SERVER}: {exc}".splitlines()[0])
    finally:
        admin.dispose()
    url = server.update_query_dict({"options": f"-csearch_path={schema}"})
    upgrade(url)
    return Database(url)
