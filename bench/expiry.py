"""How fast expired access is taken away, and what the expiry sweep's query costs.

On a real PostgreSQL (the claim with FOR UPDATE SKIP LOCKED is what lets workers share a wave):

1. Latency: `--active` grants are active on a signed-webhook console (the one `wardkey demo`
   uses), `--waves` of them expiring at the same instant. `wardkey worker` processes (1, the
   baseline, then `--workers`) revoke the wave; for each grant the time from its expiry to its
   `ended` record (written after the console was read back and shows the access gone) gives
   p50/p95/p99/max, and the ratio of the baseline to the several workers.
2. Sweep query: the claim query the expiry sweep runs each tick (due rows only, LIMIT 20,
   FOR UPDATE SKIP LOCKED) timed with 1,000 to 100,000 active grants and 100 due, next to a
   naive sweep that reads every active grant and filters them in Python, measured in the same
   run. Ours should stay flat as the active count grows; the naive one grows with it.

The grants are seeded straight into the table (not through the service: making 10,000 through
Slack-sized steps would take minutes and measure something else); the revokes go through the real
workers, adapters and audit trail.

    python bench/expiry.py [--active 10000] [--waves 100,1000] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.demo.slack_fake import FakeSlack
from app.demo.webhook_target import WebhookTarget
from app.store import Database
from app.store.models import AccessRequest, RequestState
from bench.postgres import fresh_schema
from tests.fakes.big_trust import (
    CONSOLE,
    ENTITLEMENT,
    KEY_VARIABLE,
    ROLE,
    account_of,
    staff,
    write_big_trust,
)

SCHEMA = "wardkey_bench_expiry"
KEY = "bench-signing-key-" + "x" * 16


def fresh_database() -> Database:
    return fresh_schema(SCHEMA, "bench/expiry.py")


def seed(db: Database, active: int, due: int, expiry: datetime, start: int = 0) -> list[int]:
    """`active` grants, the first `due` of them expiring at `expiry`, the rest tomorrow."""
    now = datetime.now(UTC)
    later = now + timedelta(days=1)
    rows = []
    for n in range(start, start + active):
        person = staff(n)
        ends = expiry if n - start < due else later
        rows.append(
            {
                "state": RequestState.ACTIVE.value,
                "version": 3,
                "requester": person.email,
                "requester_slack_id": person.slack_user_id,
                "requester_email": person.email,
                "target": CONSOLE,
                "role": ROLE,
                "path": "clinical",
                "entitlement": ENTITLEMENT,
                "account": account_of(n),
                "reason": "bench: ward 12 order sets",
                "requested_seconds": int((ends - now).total_seconds()),
                "approvals_needed": 1,
                "approval_round": 0,
                "revoke_attempts": 0,
                "escalation_level": 0,
                "preexisting": False,
                "created_at": now,
                "decided_at": now,
                "granted_at": now,
                "expires_at": ends,
                "state_changed_at": now,
            }
        )
    if rows:
        with db.transaction() as session:
            session.execute(sa.insert(AccessRequest), rows)
    return list(range(start, start + due))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_wave(active: int, wave: int, workers: int, lead: float = 4.0) -> list[float]:
    """Seconds from expiry to `ended` for each grant of the wave, with `workers` workers."""
    db = fresh_database()
    console = WebhookTarget(KEY.encode(), name="console").start()
    slack = FakeSlack(token="xoxb-bench").start()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        policy = Path(tmp) / "policy.yaml"
        write_big_trust(policy, console.url, people=1)  # only the target matters to workers
        expiry = datetime.now(UTC) + timedelta(seconds=lead + 0.5 * workers)
        for n in seed(db, active, wave, expiry):
            console.members[ENTITLEMENT].add(account_of(n))
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SLACK_")},
            "DATABASE_URL": db.url.render_as_string(hide_password=False),
            "WARDKEY_POLICY": str(policy),
            "SLACK_BOT_TOKEN": "xoxb-bench",
            "SLACK_API_URL": slack.api_url,
            KEY_VARIABLE: KEY,
        }
        try:
            for n in range(workers):
                log = open(Path(tmp) / f"worker{n}.log", "wb")  # noqa: SIM115
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "app", "worker"],
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
            deadline = time.monotonic() + lead + 120
            while True:
                with db.read() as session:
                    left = session.scalar(
                        sa.select(sa.func.count()).where(
                            AccessRequest.expires_at == expiry,
                            AccessRequest.state != RequestState.ENDED.value,
                        )
                    )
                if not left:
                    break
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    sys.exit(f"the wave did not finish: {left} left; see the worker logs")
                time.sleep(0.2)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=10)
            console.stop()
            slack.stop()
    with db.read() as session:
        ended = session.scalars(
            sa.select(AccessRequest.ended_at).where(AccessRequest.expires_at == expiry)
        ).all()
    db.dispose()
    assert not console.members[ENTITLEMENT], "the console still shows access"
    return [(e - expiry).total_seconds() for e in ended if e is not None]


def claim_query(now: datetime) -> sa.Select[tuple[AccessRequest]]:
    return (
        sa.select(AccessRequest)
        .where(AccessRequest.state == RequestState.ACTIVE.value, AccessRequest.expires_at <= now)
        .order_by(AccessRequest.expires_at)
        .limit(20)
        .with_for_update(skip_locked=True)
    )


def time_queries(db: Database, repeats: int = 30) -> tuple[float, float]:
    """Median ms of our claim query and of the naive read-everything-and-filter sweep."""
    ours, naive = [], []
    for _ in range(repeats):
        now = datetime.now(UTC)
        with db.engine.connect() as conn:
            t0 = time.perf_counter()
            conn.execute(claim_query(now)).all()
            ours.append(time.perf_counter() - t0)
            conn.rollback()
            t0 = time.perf_counter()
            rows = conn.execute(
                sa.select(AccessRequest.id, AccessRequest.expires_at).where(
                    AccessRequest.state == RequestState.ACTIVE.value
                )
            ).all()
            [rid for rid, ends in rows if ends <= now]
            naive.append(time.perf_counter() - t0)
            conn.rollback()
    return statistics.median(ours) * 1000, statistics.median(naive) * 1000


def query_table(sizes: list[int], due: int) -> list[tuple[int, float, float, str]]:
    db = fresh_database()
    seeded = 0
    out = []
    past = datetime.now(UTC) - timedelta(minutes=1)
    for size in sizes:
        # The first batch brings the due rows; later ones only add grants that end tomorrow.
        seed(db, size - seeded, due if seeded == 0 else 0, past, start=seeded)
        seeded = size
        with db.engine.begin() as conn:
            conn.execute(sa.text("ANALYZE access_requests"))
            plan = (
                conn.execute(
                    sa.text(
                        "EXPLAIN "
                        + str(
                            claim_query(datetime.now(UTC)).compile(
                                dialect=db.engine.dialect, compile_kwargs={"literal_binds": True}
                            )
                        )
                    )
                )
                .scalars()
                .all()
            )
        scan = next((line.strip(" ->") for line in plan if "Scan" in line), plan[0])
        ours, naive = time_queries(db)
        out.append((size, ours, naive, scan.split("  ")[0]))
    db.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--active", type=int, default=10_000)
    parser.add_argument("--waves", default="100,1000", help="grants expiring at once, per run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--sizes", default="1000,10000,100000", help="active counts for the query table"
    )
    args = parser.parse_args()

    waves = [int(w) for w in args.waves.split(",")]
    print(f"Expiry-to-revoked latency, {args.active:,} active grants (seconds)")
    print(f"{'wave':>6} {'workers':>8} {'p50':>7} {'p95':>7} {'p99':>7} {'max':>7} {'grants/s':>9}")
    for wave in waves:
        p99 = {}
        for workers in sorted({1, args.workers}):
            lat = run_wave(args.active, wave, workers)
            p99[workers] = percentile(lat, 0.99)
            rate = len(lat) / max(max(lat), 1e-9)
            print(
                f"{wave:>6,} {workers:>8} {percentile(lat, 0.5):>7.2f} "
                f"{percentile(lat, 0.95):>7.2f} {p99[workers]:>7.2f} {max(lat):>7.2f} {rate:>9.0f}"
            )
        if args.workers != 1:
            verdict = "met" if p99[args.workers] <= 2.0 else "NOT met"
            print(
                f"{'':>6} p99 1 worker / {args.workers} workers: "
                f"{p99[1] / p99[args.workers]:.2f}x; goal p99 <= 2 s with 2 workers: {verdict}"
            )

    sizes = [int(s) for s in args.sizes.split(",")]
    print()
    print("Expiry sweep query vs active grants (100 due; median of 30, ms)")
    print(f"{'active':>8} {'claim ms':>9} {'naive ms':>9} {'naive/claim':>12}  plan of the claim")
    for size, ours, naive, scan in query_table(sizes, due=100):
        print(f"{size:>8,} {ours:>9.2f} {naive:>9.2f} {naive / ours:>11.1f}x  {scan}")


if __name__ == "__main__":
    main()
