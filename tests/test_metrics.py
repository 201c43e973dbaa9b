"""`/metrics`: Prometheus text read from the database, so every worker's work is counted."""

from __future__ import annotations

from contextlib import closing
from datetime import timedelta

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from app.access import AccessService
from app.clock import ManualClock
from app.demo.slack_driver import serving
from app.metrics import metrics_text
from app.store import Database
from app.store.models import UTCDateTime
from app.web import WardKeyWSGI
from tests.conftest import AMIRA, BEN, CHLOE
from tests.fakes.memory_adapter import MemoryTarget

WHY = "fix stuck order set on ward 12"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def busy_night(
    service: AccessService, clock: ManualClock, targets: dict[str, MemoryTarget]
) -> None:
    fast = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), WHY)
    clock.advance(timedelta(seconds=45))
    service.approve(fast.id, BEN)  # decided in 45 s
    slow = service.request(CHLOE, "pharmacy-db", "read", timedelta(minutes=30), WHY)
    clock.advance(timedelta(minutes=8))
    service.deny(slow.id, BEN, "use the order set tool")  # decided in 8 min
    service.break_glass(
        CHLOE, "pharmacy-db", "read", "pharmacy system down in ED", timedelta(minutes=10)
    )
    clock.advance(timedelta(minutes=31))
    targets["pharmacy-db"].down = True
    service.expire_due()  # both revokes fail: still held, retried
    clock.advance(timedelta(days=2))  # the break-glass review is overdue


@pytest.mark.parametrize(
    "db", [pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"], indirect=True
)
def test_counts_latency_failures_and_overdue_reviews(
    service: AccessService, clock: ManualClock, targets: dict[str, MemoryTarget]
) -> None:
    busy_night(service, clock, targets)
    got = samples(metrics_text(service.db, clock).decode())

    assert got[("wardkey_requests", (("path", "clinical"), ("state", "revoke_failed")))] == 1
    assert got[("wardkey_requests", (("path", "clinical"), ("state", "denied")))] == 1
    assert got[("wardkey_revoke_failures", ())] == 2
    assert got[("wardkey_revoke_failed_attempts_total", ())] == 2
    assert got[("wardkey_overdue_reviews", ())] == 1
    bucket = "wardkey_approval_latency_seconds_bucket"
    assert got[(bucket, (("le", "60"), ("path", "clinical")))] == 1  # the 45 s approval
    assert got[(bucket, (("le", "300"), ("path", "clinical")))] == 1
    assert got[(bucket, (("le", "600"), ("path", "clinical")))] == 2  # ...and the 8 min deny
    assert got[(bucket, (("le", "+Inf"), ("path", "clinical")))] == 2
    assert got[("wardkey_approval_latency_seconds_sum", (("path", "clinical"),))] == pytest.approx(
        525
    )
    assert not any(
        k[1] and ("path", "breakglass") in k[1] and k[0].startswith("wardkey_approval") for k in got
    )


def test_served_over_http_behind_a_bearer_token(service: AccessService) -> None:
    app = WardKeyWSGI(
        bolt=None,  # type: ignore[arg-type]
        db=service.db,
        signing_secret="not-used-here",
        metrics_token="scrape-me",
    )
    with closing(app), serving(app) as url, httpx.Client() as http:
        assert http.get(f"{url}/metrics").status_code == 401
        assert (
            http.get(f"{url}/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        )
        ok = http.get(f"{url}/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert ok.status_code == 200
    assert ok.headers["content-type"].startswith("text/plain")
    assert "wardkey_active_grants" in ok.text


def test_metrics_stay_off_until_the_operator_sets_a_token(service: AccessService) -> None:
    app = WardKeyWSGI(bolt=None, db=service.db, signing_secret="not-used-here")  # type: ignore[arg-type]
    with closing(app), serving(app) as url, httpx.Client() as http:
        answer = http.get(f"{url}/metrics")
    assert answer.status_code == 403
    assert "set WARDKEY_METRICS_TOKEN" in answer.text
    assert "wardkey_" not in answer.text


def test_an_operator_on_a_closed_network_may_open_them_to_anyone(service: AccessService) -> None:
    app = WardKeyWSGI(
        bolt=None,  # type: ignore[arg-type]
        db=service.db,
        signing_secret="not-used-here",
        metrics_public=True,
    )
    with closing(app), serving(app) as url, httpx.Client() as http:
        answer = http.get(f"{url}/metrics")
    assert answer.status_code == 200
    assert "wardkey_active_grants" in answer.text


def years_of_audit(db: Database, events: int, failed_every: int) -> None:
    """A long-lived trust's audit trail: many events, a few of them failed revokes. Written
    straight to the table (the scrape only counts; the chain is not what is tested here)."""
    with db.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO audit_events (seq, at, action, request_id, prev_hash, hash, body) "
                "SELECT g, TIMESTAMPTZ '2026-01-01 00:00+00' + g * INTERVAL '1 minute', "
                "CASE WHEN g % :every = 0 THEN 'revoke.failed' ELSE 'request.created' END, "
                "g, md5(g::text) || md5((-g)::text), md5(g::text) || md5((g + 1)::text), '{}' "
                "FROM generate_series(1, :events) AS g"
            ),
            {"every": failed_every, "events": events},
        )
        conn.execute(sa.text("ANALYZE audit_events"))


@pytest.mark.parametrize(
    "db", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_a_scrape_does_not_read_the_whole_audit_trail(service: AccessService) -> None:
    years_of_audit(service.db, events=60_000, failed_every=2_000)
    statements: list[tuple[str, object]] = []

    def seen(
        _conn: object, _cursor: object, statement: str, parameters: object, *_: object
    ) -> None:
        statements.append((statement, parameters))

    sa.event.listen(service.db.engine, "before_cursor_execute", seen)
    try:
        got = samples(metrics_text(service.db).decode())
    finally:
        sa.event.remove(service.db.engine, "before_cursor_execute", seen)
    assert got[("wardkey_revoke_failed_attempts_total", ())] == 30

    on_audit = [(s, p) for s, p in statements if "audit_events" in s]
    assert on_audit, "the scrape no longer reads the audit trail: update this test"
    with service.db.engine.connect() as conn:
        for statement, parameters in on_audit:
            plan = conn.exec_driver_sql(f"EXPLAIN {statement}", parameters).scalars().all()
            assert not [line for line in plan if "Seq Scan on audit_events" in line], plan


@pytest.mark.parametrize(
    "db", [pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"], indirect=True
)
def test_every_delay_is_visible_waiting_slack_work_and_messages(
    service: AccessService, clock: ManualClock
) -> None:
    """Nobody delivered the night's messages (no notifier ran) and a click's work is still
    in hand: the backlog and the age of the oldest of each show it."""
    got = samples(metrics_text(service.db, clock).decode())
    assert got[("wardkey_outbox_backlog", ())] == 0
    assert got[("wardkey_outbox_oldest_seconds", ())] == 0
    assert got[("wardkey_inbox_oldest_seconds", ())] == 0

    service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), WHY)
    with service.db.transaction() as session:
        session.execute(
            sa.text(
                "INSERT INTO seen_requests (signature, seen_until, state, received_at, attempts) "
                "VALUES ('v0=click', :until, 'working', :now, 1)"
            ).bindparams(
                sa.bindparam("until", type_=UTCDateTime()), sa.bindparam("now", type_=UTCDateTime())
            ),
            {"until": clock.now() + timedelta(minutes=5), "now": clock.now()},
        )
    clock.advance(timedelta(seconds=90))
    got = samples(metrics_text(service.db, clock).decode())
    assert got[("wardkey_outbox_backlog", ())] == 1  # the new request's notice
    assert got[("wardkey_outbox_oldest_seconds", ())] == 90
    assert got[("wardkey_inbox_oldest_seconds", ())] == 90
    assert got[("wardkey_outbox_refused_total", ())] == 0
