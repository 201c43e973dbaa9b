"""How fast a lockdown takes every grant away from one target, next to the revoke rate of the
expiry path, measured the same way in the same run.

On a real PostgreSQL, `--grants` grants (default 1,000) are active on a signed-webhook console
(the reference receiver `wardkey demo` uses, app/demo/webhook_target.py, on loopback), seeded
straight into the table. Then, each on a fresh schema and console:

1. expiry, one call per grant: the wave expires at once and the expiry sweep, ticking every
   second in the background as in a worker, revokes it with the console answering no batch call
   (404 to /revoke-batch), so every grant takes /revoke, /end-sessions and /check, as every
   expiry did before batches;
2. expiry, batched: the same wave, the console taking /revoke-batch (20 to a call, so several
   workers share a wave) and each batch read back with one /members;
3. lockdown, one call per grant: `Lockdowns.run`, the console without batches;
4. lockdown, batched: `Lockdowns.run` with batches of 200;
5. the same as `serve` does it, with the process's outbox sending the Slack messages the
   lockdown causes (each holder's DM, card updates, the progress message) to a fake Slack
   meanwhile, on the same cores (the time is still until every grant is removed).

Every run goes through the real service: claims, the one transition function, the audit chain
(verified at the end), outbox notices; the time is from the start of the work until every grant
is recorded `ended` and the console, read back, shows no access (in runs 1 to 4 the Slack
notices wait in the outbox, as they would while Slack is slow). It prints a table and the
ratios of each to the per-grant expiry rate.

    python bench/lockdown.py [--grants 1000] [--profile FILE]

`--profile FILE` also writes a cProfile of the per-grant expiry run (where its time goes).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import audit
from app.access import AccessService
from app.adapters.registry import build_adapters
from app.clock import ManualClock
from app.config import Settings
from app.demo.slack_fake import FakeSlack
from app.demo.webhook_target import WebhookTarget
from app.directory import SlackDirectory
from app.grants import jobs as grant_jobs
from app.lifecycle.deps import CoreDeps
from app.lockdown.flows import LockdownFlows
from app.lockdown.service import Lockdowns
from app.notify.notifier import Notifier
from app.policy import load_policy
from app.scheduler import job_deps
from app.slack.app import web_client
from app.store import Database
from app.store.models import AccessRequest, RequestState
from bench.postgres import fresh_schema
from tests.fakes.big_trust import (
    APPROVER,
    CONSOLE,
    ENTITLEMENT,
    KEY_VARIABLE,
    ROLE,
    account_of,
    staff,
    write_big_trust,
)

SCHEMA = "wardkey_bench_lockdown"
KEY = "bench-signing-key-" + "x" * 16
GOAL_SECONDS = 5.0
EXPIRY_TICK = 1.0  # the expiry sweep's default cadence
CONCURRENCY = Settings.model_fields["wardkey_target_concurrency"].default  # a worker's, 4


def fresh_database() -> Database:
    return fresh_schema(SCHEMA, "bench/lockdown.py")


def seed(db: Database, console: WebhookTarget, grants: int, expiry: datetime) -> None:
    """`grants` active grants on the console, all ending at `expiry`."""
    now = expiry - timedelta(hours=1)
    rows = []
    for n in range(grants):
        person = staff(n)
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
                "requested_seconds": 3600,
                "approvals_needed": 1,
                "approval_round": 0,
                "revoke_attempts": 0,
                "escalation_level": 0,
                "preexisting": False,
                "created_at": now,
                "decided_at": now,
                "granted_at": now,
                "expires_at": expiry,
                "state_changed_at": now,
            }
        )
        console.members[ENTITLEMENT].add(account_of(n))
    with db.transaction() as session:
        session.execute(sa.insert(AccessRequest), rows)


def left(db: Database) -> int:
    with db.read() as session:
        return int(
            session.scalar(
                sa.select(sa.func.count()).where(AccessRequest.state != RequestState.ENDED.value)
            )
            or 0
        )


def expiry_wave(service: AccessService) -> None:
    """The expiry sweep as a worker runs it: every second (WARDKEY_EXPIRY_SWEEP_SECONDS), in
    the background (each target's lane works while the sweep returns)."""
    deps = job_deps(service, background=True)
    while left(service.db):
        tick = time.monotonic()
        grant_jobs.expire(deps)
        while left(service.db) and time.monotonic() < tick + EXPIRY_TICK:
            time.sleep(0.02)


def lockdown(service: AccessService) -> None:
    lockdowns = Lockdowns(service)
    view, _ = lockdowns.start(APPROVER, CONSOLE, "bench: suspected compromise of the console")
    lockdowns.run(view.id)


def lockdown_telling_slack(service: AccessService) -> None:
    """The lockdown as `serve` runs it after the confirmation: its flow kicks the process's
    outbox, whose delivery threads render and send the holders' DMs, the card updates and the
    security channel's progress to a fake Slack while the grants are being removed."""
    slack = FakeSlack(token="xoxb-bench").start()
    try:
        client = web_client(slack.token, slack.api_url)
        notifier = Notifier(client, service, SlackDirectory(client))
        flows = LockdownFlows(service, notifier.outbox.kick)
        view = flows.start(APPROVER, CONSOLE, "bench: suspected compromise of the console")
        flows.run(view.id)
    finally:
        slack.stop()


def measure(
    grants: int, batch: bool, work: Callable[[AccessService], None], profile: str | None = None
) -> tuple[float, dict[str, int]]:
    """Seconds for `work` to take every grant away (recorded ended, console read back)."""
    db = fresh_database()
    console = WebhookTarget(KEY.encode(), name="console").start()
    console.batch = batch
    try:
        with tempfile.TemporaryDirectory() as tmp:
            policy_path = Path(tmp) / "policy.yaml"
            write_big_trust(policy_path, console.url, people=1)
            os.environ[KEY_VARIABLE] = KEY
            policy = load_policy(policy_path)
        expiry = datetime.now(UTC).replace(microsecond=0)
        seed(db, console, grants, expiry)
        clock = ManualClock(expiry + timedelta(seconds=1))
        service = AccessService(
            CoreDeps(
                db, policy, build_adapters(policy), clock, heartbeat=True, concurrency=CONCURRENCY
            )
        )
        profiler = cProfile.Profile() if profile else None
        started = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        work(service)
        remaining = left(db)
        elapsed = time.perf_counter() - started
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile)  # type: ignore[arg-type]
        assert remaining == 0, f"{remaining} grants not ended"
        assert not console.members[ENTITLEMENT], "the console still shows access"
        assert audit.verify(db).ok, "the audit chain is broken"
        calls = {
            "batch": console.batch_calls,
            "single": sum(console.revoke_calls.values()) - (grants if batch else 0),
        }
        return elapsed, calls
    finally:
        console.stop()
        db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grants", type=int, default=1000)
    parser.add_argument("--profile", help="write a cProfile of the per-grant expiry run here")
    args = parser.parse_args()
    n = args.grants
    runs = [
        ("expiry, one call per grant", False, expiry_wave, args.profile),
        ("expiry, batched", True, expiry_wave, None),
        ("lockdown, one call per grant", False, lockdown, None),
        ("lockdown, batched", True, lockdown, None),
        ("lockdown, batched, Slack told", True, lockdown_telling_slack, None),
    ]
    print(f"Taking {n:,} grants away from one webhook target (PostgreSQL, in-process service)")
    print(f"{'run':<30} {'seconds':>8} {'revokes/s':>10} {'vs per-grant expiry':>20}  calls")
    base: float | None = None
    results: dict[str, float] = {}
    for name, batch, work, profile in runs:
        seconds, calls = measure(n, batch, work, profile)
        rate = n / seconds
        base = base or rate
        results[name] = seconds
        shown = f"{calls['batch']} batch" if batch else f"{calls['single']:,} single revokes"
        print(f"{name:<30} {seconds:>8.2f} {rate:>10.0f} {rate / base:>19.1f}x  {shown}")
    goal = max(results["lockdown, batched"], results["lockdown, batched, Slack told"])
    verdict = "met" if goal <= GOAL_SECONDS else "NOT met"
    print(f"goal: lockdown of {n:,} within {GOAL_SECONDS:.0f} s: {verdict} ({goal:.2f} s)")


if __name__ == "__main__":
    main()
