"""How fast `wardkey audit verify` checks the chain, on SQLite and PostgreSQL.

Builds a chain of N events (default 1,000,000) with the real hashing code, then times, in the
same run:
  - floor:  reading the rows from the driver without hashing anything;
  - naive:  loading ORM objects and re-encoding each event's JSON before hashing it;
  - wardkey: `app.audit.verify`.
Prints events/s for each and the ratio of WardKey to the naive verifier.

    python bench/audit_verify.py [--events 1000000] [--no-postgres]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import audit
from app.audit.chain import iter_rows
from app.store import AuditEvent, Database, upgrade

POSTGRES_URL = os.environ.get(
    "WARDKEY_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
SCHEMA = "wardkey_bench"
START = datetime(2026, 1, 1, tzinfo=UTC)


def chain(count: int) -> Iterator[tuple[int, datetime, str, int, str, str, str]]:
    prev = audit.GENESIS_HASH
    for seq in range(1, count + 1):
        at = START + timedelta(milliseconds=seq)
        action = ("request.created", "request.approved", "grant.succeeded")[seq % 3]
        request_id = seq // 3 + 1
        body = audit.canonical_json(
            {
                "action": action,
                "actor": f"user{seq % 97}@trust.nhs.uk",
                "at": at,
                "request_id": request_id,
                "data": {
                    "target": "pharmacy-db",
                    "role": "read",
                    "path": "clinical",
                    "reason": "fix stuck order set on ward 12",
                    "ticket": None,
                    "expires_at": at + timedelta(minutes=30),
                },
            }
        )
        digest = audit.event_hash(seq, prev, action, request_id, body)
        yield seq, at, action, request_id, prev, digest, body
        prev = digest


def fill_sqlite(db: Database, count: int) -> None:
    raw = db.engine.raw_connection()
    cursor = raw.cursor()
    cursor.execute("BEGIN")
    cursor.executemany(
        "INSERT INTO audit_events (seq, at, action, request_id, prev_hash, hash, body) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            (s, at.replace(tzinfo=None).isoformat(" ", "microseconds"), a, r, p, h, b)
            for s, at, a, r, p, h, b in chain(count)
        ),
    )
    cursor.execute("COMMIT")
    raw.close()


def fill_postgres(db: Database, count: int) -> None:
    raw = db.engine.raw_connection()
    conn = raw.driver_connection
    copy_sql = "COPY audit_events (seq, at, action, request_id, prev_hash, hash, body) FROM STDIN"
    with conn.cursor() as cursor, cursor.copy(copy_sql) as copy:  # type: ignore[union-attr]
        for row in chain(count):
            copy.write_row(row)
    conn.commit()  # type: ignore[union-attr]
    raw.close()
    # A trail that has been in service is vacuumed; measure that, not the first scan's hint-bit
    # writes after a bulk load.
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn2:
        conn2.execute(sa.text("VACUUM (ANALYZE) audit_events"))


def floor(db: Database) -> int:
    return sum(1 for _ in iter_rows(db))


def naive(db: Database) -> int:
    """What a first attempt looks like: ORM objects, JSON parsed and encoded again per event."""
    prev, count = audit.GENESIS_HASH, 0
    with db.read() as session:
        for event in session.scalars(
            sa.select(AuditEvent).order_by(AuditEvent.seq).execution_options(yield_per=5000)
        ):
            body = audit.canonical_json(json.loads(event.body))
            rid = "" if event.request_id is None else event.request_id
            digest = hashlib.sha256(
                f"{event.seq}|{prev}|{event.action}|{rid}|{body}".encode()
            ).hexdigest()
            if digest != event.hash or event.prev_hash != prev:
                raise SystemExit(f"naive verifier disagrees at {event.seq}")
            prev, count = digest, count + 1
    return count


def ours(db: Database) -> int:
    result = audit.verify(db)
    if not result.ok:
        raise SystemExit(result.summary())
    return result.checked


def timed(fn: Callable[[Database], int], db: Database) -> tuple[int, float]:
    started = time.perf_counter()
    count = fn(db)
    return count, time.perf_counter() - started


def run(name: str, db: Database, fill: Callable[[Database, int], None], count: int) -> list[str]:
    started = time.perf_counter()
    fill(db, count)
    print(
        f"{name}: built {count:,} events in {time.perf_counter() - started:.1f} s", file=sys.stderr
    )
    rows = []
    results = {}
    for label, fn in (
        ("floor (read only)", floor),
        ("naive (ORM + re-encode)", naive),
        ("wardkey verify", ours),
    ):
        checked, seconds = timed(fn, db)
        assert checked == count, (label, checked)
        results[label] = count / seconds
        rows.append(f"| {name:<10} | {label:<24} | {seconds:8.2f} | {count / seconds:12,.0f} |")
    ratio = results["wardkey verify"] / results["naive (ORM + re-encode)"]
    share = results["wardkey verify"] / results["floor (read only)"]
    rows.append(f"| {name:<10} | {'wardkey ÷ naive':<24} | {'':>8} | {ratio:11.2f}x |")
    rows.append(f"| {name:<10} | {'wardkey ÷ floor':<24} | {'':>8} | {share:11.2f}x |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()

    table = [
        "| store      | verifier                 | seconds  | events/s     |",
        "|------------|--------------------------|----------|--------------|",
    ]
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/bench.db"
        upgrade(url)
        db = Database(url)
        table += run("SQLite", db, fill_sqlite, args.events)
        db.dispose()

    if not args.no_postgres:
        admin = sa.create_engine(POSTGRES_URL)
        try:
            with admin.begin() as conn:
                conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
                conn.execute(sa.text(f"CREATE SCHEMA {SCHEMA}"))
        except sa.exc.OperationalError as exc:
            print(f"PostgreSQL skipped: {str(exc).splitlines()[0]}", file=sys.stderr)
        else:
            url_pg = sa.engine.make_url(POSTGRES_URL).update_query_dict(
                {"options": f"-csearch_path={SCHEMA}"}
            )
            upgrade(url_pg)
            db = Database(url_pg)
            table += run("PostgreSQL", db, fill_postgres, args.events)
            db.dispose()
            with admin.begin() as conn:
                conn.execute(sa.text(f"DROP SCHEMA {SCHEMA} CASCADE"))
        finally:
            admin.dispose()

    out = io.StringIO()
    print("\n".join(table), file=out)
    print(out.getvalue(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
