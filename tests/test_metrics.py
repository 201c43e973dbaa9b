"""`/metrics`: Prometheus text read from the database, so every worker's work is counted."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.clock import ManualClock
from app.devtools.slack_driver import serving
from app.metrics import metrics_text
from app.service import AccessService
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
    with serving(app) as url, httpx.Client() as http:
        assert http.get(f"{url}/metrics").status_code == 401
        assert (
            http.get(f"{url}/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        )
        ok = http.get(f"{url}/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert ok.status_code == 200
    assert ok.headers["content-type"].startswith("text/plain")
    assert "wardkey_active_grants" in ok.text
