"""Several `wardkey serve` instances on one PostgreSQL: a captured Slack request replayed to
another instance is refused there too, and forged requests are never remembered."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from app.service import AccessService
from app.store.models import SeenRequest
from tests.slack_harness import RunningApp, run_app

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.parametrize(
        "db", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
    ),
]
BODY = "command=%2Fjit&text=help&user_id=U0AMIRA&team_id=T0WARD"


@pytest.fixture
def two_instances(service: AccessService) -> Iterator[tuple[RunningApp, RunningApp]]:
    first, second = run_app(service), run_app(service)
    try:
        yield next(first), next(second)
    finally:
        first.close()
        second.close()


def test_a_replay_sent_to_another_instance_is_refused(
    two_instances: tuple[RunningApp, RunningApp],
) -> None:
    one, other = two_instances
    now = int(time.time())
    assert one.post(BODY, timestamp=now).status_code == 200
    assert other.post(BODY, timestamp=now).status_code == 409
    assert one.post(BODY, timestamp=now).status_code == 409
    assert other.post(BODY, timestamp=now + 1).status_code == 200  # a new request


def test_forged_requests_are_not_remembered(
    two_instances: tuple[RunningApp, RunningApp], service: AccessService
) -> None:
    one, _ = two_instances
    for n in range(5):
        assert one.post(f"command=%2Fjit&text={n}", signature="v0=" + "0" * 64).status_code == 401
    with service.db.read() as session:
        assert session.scalar(select(func.count()).select_from(SeenRequest)) == 0
