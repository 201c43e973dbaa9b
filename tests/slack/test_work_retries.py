"""Work after an ack that fails is tried again until it works, never dropped (issue 12:
acknowledged means recorded): a few seconds apart at first, then once a minute, logged as stuck
once and its end once. An outage met before the work did anything (the database; Slack's API
when asked who clicked) is left to those retries instead of being told as an error; one met
later is told, never tried again, as the work may have done something already."""

from __future__ import annotations

import json
import logging
from contextlib import closing
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import pytest
import sqlalchemy as sa
from slack_bolt import BoltContext
from slack_sdk.errors import SlackApiError
from slack_sdk.web.slack_response import SlackResponse
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.access import AccessService
from app.clock import ManualClock
from app.demo.slack_fake import FakeSlack
from app.directory import SlackDirectory, Workspace
from app.grants.messages import HOME_EXTEND, HOME_EXTEND_BY
from app.lifecycle.errors import ServiceError
from app.listeners import slack_app
from app.metrics import metrics_text
from app.requests.messages import APPROVE_ACTION
from app.slack.app import web_client
from app.slack.errors import NOT_NOW, UNEXPECTED, answered
from app.slack.gate import ASKER, Asker, Caller, WhoUnknown
from app.slack.intake import Intake, Pending, Redelivery
from app.store.models import RequestState, SeenRequest
from tests.conftest import AMIRA, audit_actions
from tests.grants.test_timers import approved
from tests.slack_harness import TEAM, RunningApp, SlackOnSqlite

KEY = "v0=" + "d" * 64


def state_of(service: AccessService) -> str:
    with service.db.read() as session:
        return str(session.scalar(select(SeenRequest.state).where(SeenRequest.signature == KEY)))


def test_work_that_keeps_failing_is_kept_and_tried_until_it_works(
    service: AccessService, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    failures = Intake.MAX_ATTEMPTS + 2
    tries: list[int] = []

    def approve() -> None:
        tries.append(1)
        if len(tries) <= failures:
            raise OperationalError("UPDATE", {}, ConnectionError("server closed the connection"))

    # The gap before each next try, as the inbox spaces them: 2, 4, 8 s, then a lease apart,
    # then once a minute from the try that makes it stuck.
    gaps = [
        Intake.STUCK_RETRY
        if attempt >= Intake.MAX_ATTEMPTS
        else min(Intake.LEASE, timedelta(seconds=2**attempt))
        for attempt in range(1, failures + 1)
    ]
    inbox = Intake(service.db, clock)
    caplog.set_level(logging.WARNING, logger="app.slack.intake")
    with closing(inbox):
        assert inbox.record(KEY, b"payload=%7B%7D", {})
        assert not inbox.run(Pending(key=KEY, jobs=[approve]), inbox.owner)
        for attempt, gap in enumerate(gaps, start=2):
            assert state_of(service) == "working"  # not done, not dropped
            clock.advance(gap - timedelta(seconds=1))
            assert inbox.claim_due() == [], f"try {attempt} came early"
            clock.advance(timedelta(seconds=1))
            (claimed,) = inbox.claim_due()
            pending, _, _, owner = claimed
            assert pending.attempt == attempt
            pending.jobs = [approve]
            assert inbox.run(pending, owner) == (attempt > failures)
        assert state_of(service) == "done"

    assert len(tries) == failures + 1
    stuck = [r.getMessage() for r in caplog.records if "event=intake_work_stuck" in r.getMessage()]
    assert len(stuck) == 1 and "attempts=6" in stuck[0] and "retry_every=60s" in stuck[0], stuck
    assert [r.levelname for r in caplog.records if "intake_work_stuck" in r.getMessage()] == [
        "ERROR"
    ]
    assert (
        sum("event=intake_work_unstuck attempts=9" in r.getMessage() for r in caplog.records) == 1
    )


def test_stuck_work_shows_in_the_inbox_age_metric(
    service: AccessService, clock: ManualClock
) -> None:
    def failing() -> None:
        raise OperationalError("UPDATE", {}, ConnectionError("server closed the connection"))

    inbox = Intake(service.db, clock)
    with closing(inbox):
        assert inbox.record(KEY, b"payload=%7B%7D", {})
        assert not inbox.run(Pending(key=KEY, jobs=[failing]), inbox.owner)
        clock.advance(timedelta(minutes=10))
    text = metrics_text(service.db, clock).decode()
    assert "wardkey_inbox_oldest_seconds 600.0" in text, [
        line for line in text.splitlines() if "inbox" in line
    ]


def slack_error(status: int, error: str) -> SlackApiError:
    response = SlackResponse(
        client=None,
        http_verb="POST",
        api_url="https://slack.com/api/users.info",
        req_args={},
        data={"ok": False, "error": error},
        headers={},
        status_code=status,
    )
    return SlackApiError(f"users.info failed: {error}", response)


def context_replying_to(told: list[str]) -> BoltContext:
    context = BoltContext()
    context[ASKER] = Asker(None, None, told.append)  # type: ignore[arg-type]
    return context


@pytest.mark.parametrize(
    "outage",
    [
        OperationalError("SELECT", {}, ConnectionError("server closed the connection")),
        PoolTimeout("QueuePool limit of size 10 overflow 20 reached"),
        WhoUnknown("SlackApiError"),
    ],
    ids=["database", "pool", "slack-who-clicked"],
)
def test_an_outage_before_the_work_did_anything_is_left_to_the_inbox(outage: Exception) -> None:
    told: list[str] = []

    def work() -> None:
        raise outage

    with pytest.raises(type(outage)):
        answered(work, context_replying_to(told))()
    assert told == []  # the inbox does it again when Slack or the database is back
    # A dialog's click is not in the inbox: the person is told to click again.
    answered(work, context_replying_to(told), retried=False)()
    assert told == [NOT_NOW]


@pytest.mark.parametrize(
    "outage",
    [slack_error(503, "service_unavailable"), TimeoutError("timed out")],
    ids=["slack-503", "timeout"],
)
def test_an_outage_later_in_the_work_is_told_never_tried_again(outage: Exception) -> None:
    """Met after the work may have changed something (an extension made, then its reply
    failed): a second try would do it twice."""
    told: list[str] = []
    extended: list[int] = []

    def extend() -> None:
        extended.append(30)
        raise outage

    answered(extend, context_replying_to(told))()
    assert extended == [30] and told == [UNEXPECTED]


def test_a_reply_slack_cannot_take_is_logged_and_the_work_not_done_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def reply(text: str) -> None:
        raise slack_error(429, "ratelimited")

    context = BoltContext()
    context[ASKER] = Asker(None, None, reply)  # type: ignore[arg-type]
    extended: list[int] = []

    def extend() -> None:
        extended.append(30)
        raise ServiceError("You can extend request #4 by at most 30 minutes more.")

    answered(extend, context)()  # nothing raised: the inbox will not run it again
    assert extended == [30]
    assert "event=reply_failed error=SlackApiError" in caplog.text


def test_who_clicked_is_unknown_only_when_slack_fails_not_when_it_answers(
    service: AccessService,
) -> None:
    """Slack's failure becomes WhoUnknown (try again later); Slack's answer does not."""
    fake = FakeSlack().start()
    try:
        client = web_client(fake.token, fake.api_url)
        directory = SlackDirectory(client, Workspace.configured(TEAM, None))
        who = Caller("U0NOBODY", TEAM, TEAM, None)
        fake.fail(1000, 500)
        with pytest.raises(WhoUnknown):
            Asker(who, directory, None).person()
        fake.fail(0)
        with pytest.raises(SlackApiError):  # user_not_found: Slack's answer, told as it is
            Asker(who, directory, None).person()
    finally:
        fake.stop()


def test_a_refusal_or_a_real_error_in_the_work_is_told_to_the_person() -> None:
    told: list[str] = []

    def refused() -> None:
        raise ServiceError("Request #4 was already approved by Ben Hughes.")

    def broken() -> None:
        raise slack_error(200, "user_not_found")

    context = context_replying_to(told)
    answered(refused, context)()
    answered(broken, context)()
    assert told == ["Request #4 was already approved by Ben Hughes.", UNEXPECTED]


def sweep_at(service: AccessService, slack: RunningApp, at: datetime) -> list[str]:
    """The inbox's sweep, as any process runs it, at `at`: what it did again."""
    client = web_client(slack.fake.token, slack.fake.api_url)
    inbox = Intake(service.db, ManualClock(at))
    redelivery = Redelivery(
        inbox,
        lambda: slack_app(
            service, client, "", workspace=Workspace.configured(TEAM, None), redelivery=True
        ),
    )
    with closing(inbox):
        return redelivery.redeliver_due()


class TestAClickWhileSlacksApiFails(SlackOnSqlite):
    def test_an_approval_clicked_while_slack_answers_500_is_applied_once_it_is_back(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        rid = service.request(
            AMIRA, "pharmacy-db", "read", timedelta(minutes=30), "fix stuck order sets"
        ).id
        # Slack delivers Ben's click, but its Web API fails: who clicked cannot be looked up.
        slack.fake.fail(1000, 500)
        assert slack.click(APPROVE_ACTION, str(rid), "U0BEN").status_code == 200
        slack.settle()
        assert service.get(rid).state == RequestState.PENDING
        said = [str(call.args) for call in slack.fake.calls]
        assert not any("unexpected error" in text for text in said), said  # nothing to retry
        assert any(call.method == "users.info" and call.status == 500 for call in slack.fake.calls)

        # Slack answers again; the inbox's next try (a sweep, whichever process runs it).
        slack.fake.fail(0)
        later = datetime.now(UTC) + timedelta(minutes=1)
        assert len(sweep_at(service, slack, later)) == 1
        assert sweep_at(service, slack, later) == []  # done, once
        assert service.get(rid).state == RequestState.ACTIVE
        assert audit_actions(service).count("request.approved") == 1


def test_acknowledged_work_waiting_past_a_minute_is_logged_once_and_its_end_once(
    service: AccessService, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """No process is doing the work (no worker runs): the inbox's heartbeat says so."""
    inbox = Intake(service.db, clock, hand_off=True)
    caplog.set_level(logging.WARNING, logger="app.slack.intake")
    with closing(inbox):
        assert inbox.record(KEY, b"payload=%7B%7D", {})
        clock.advance(Intake.BACKLOG_ALERT - timedelta(seconds=1))
        inbox.watch_backlog()
        assert "inbox_backlog" not in caplog.text  # not yet a minute
        clock.advance(timedelta(seconds=1))
        inbox.watch_backlog()
        clock.advance(timedelta(seconds=30))
        inbox.watch_backlog()  # still waiting: not said again
        (claimed,) = inbox.claim_due(new_after=timedelta(0))  # a worker at last
        pending, _, _, owner = claimed
        pending.jobs = [lambda: None]
        assert inbox.run(pending, owner)
        inbox.watch_backlog()
    said = [
        (r.levelname, r.getMessage()) for r in caplog.records if "inbox_backlog" in r.getMessage()
    ]
    assert [level for level, _ in said] == ["ERROR", "WARNING"], said
    assert "event=inbox_backlog count=1 oldest_seconds=60" in said[0][1]
    assert "event=inbox_backlog_cleared delayed_seconds=90" in said[1][1]


def test_work_running_under_a_live_lease_is_not_a_backlog(
    service: AccessService, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A long piece of work (a lockdown, a slow target) renews its lease: not an alert."""
    inbox = Intake(service.db, clock)
    caplog.set_level(logging.WARNING, logger="app.slack.intake")
    with closing(inbox):
        assert inbox.record(KEY, b"payload=%7B%7D", {})
        for _ in range(30):  # five minutes of work, its lease renewed every 3 s (heartbeats)
            clock.advance(Intake.LEASE / 3)
            inbox._beat()
            inbox.watch_backlog()
    assert "inbox_backlog" not in caplog.text


class TestAnExtendWhoseReplySlackRefuses(SlackOnSqlite):
    def test_the_access_is_extended_once_and_not_again_by_a_retry(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        """The Extend click's work extends, then its reply to the clicker meets Slack's 429s:
        the reply is given up (logged), never the work done again (it extended once per try)."""
        rid = approved(service)
        before = service.get(rid).expires_at
        assert before is not None
        slack.fake.rate_limit("chat.postEphemeral", times=1000, retry_after=0)
        assert slack.click(HOME_EXTEND, str(rid), "U0AMIRA", channel="D0AMIRA").status_code == 200
        slack.settle()
        for minutes in (2, 4, 8):  # the inbox's sweeps, in any process, later on
            later = datetime.now(UTC) + timedelta(minutes=minutes)
            assert sweep_at(service, slack, later) == []  # nothing left to do again
        assert service.get(rid).expires_at == before + timedelta(minutes=30)

    def test_a_try_again_after_the_extension_committed_does_not_extend_again(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        """The first try extended (its step, `applied`, is on the inbox row) and then failed;
        the try again tells Amira the new end and extends nothing."""
        rid = approved(service)
        once = service.extend(rid, AMIRA, HOME_EXTEND_BY).expires_at  # the first try's
        payload = {
            "type": "block_actions",
            "team": {"id": TEAM},
            "user": {"id": "U0AMIRA", "team_id": TEAM},
            "channel": {"id": "D0AMIRA"},
            "container": {"type": "message", "channel_id": "D0AMIRA", "message_ts": "1.2"},
            "actions": [{"type": "button", "action_id": HOME_EXTEND, "value": str(rid)}],
        }
        now = datetime.now(UTC)
        with service.db.transaction() as session:
            session.execute(
                sa.text(
                    "INSERT INTO seen_requests (signature, seen_until, body, headers, state, "
                    "received_at, lease_until, claimed_by, attempts, outcome) VALUES (:key, "
                    ":until, :body, :headers, 'working', :now, :now, NULL, 1, 'applied')"
                ),
                {
                    "key": KEY,
                    "until": now + timedelta(minutes=5),
                    "body": urlencode({"payload": json.dumps(payload)}),
                    "headers": json.dumps({"content-type": "application/x-www-form-urlencoded"}),
                    "now": now,
                },
            )
        assert sweep_at(service, slack, now + timedelta(seconds=1)) == [KEY]
        assert service.get(rid).expires_at == once
        told = [c.args.get("text", "") for c in slack.fake.calls_to("chat.postEphemeral")]
        assert any(f"#{rid} now ends at" in text for text in told), told
