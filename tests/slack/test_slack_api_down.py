"""While Slack's Web API fails, who clicked is Slack's last answer about them (kept in the
database, under a day old), so an approval or a break-glass is done at once instead of
waiting for Slack (issue 12: grants do not wait for Slack). Slack's own answer about an
account is never overruled by an older one."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
import sqlalchemy as sa
from slack_sdk.errors import SlackApiError

from app.access import AccessService
from app.clock import ManualClock
from app.demo.slack_fake import FakeSlack
from app.directory import KEPT_PROFILE_USED_FOR, SlackDirectory, SlackProfile, Workspace
from app.kept_profiles import KeptProfiles
from app.requests.messages import APPROVE_ACTION
from app.slack.app import web_client
from app.store.models import KeptSlackProfile, RequestState
from tests.conftest import AMIRA
from tests.slack_harness import TEAM, WARD_USERS, RunningApp, SlackOnSqlite

BEN = next(user for user in WARD_USERS if user.id == "U0BEN")


def directory(fake: FakeSlack, kept: KeptProfiles) -> SlackDirectory:
    """A process's directory: its own memory, the database's kept answers (the workspace is
    learnt at start-up, never in a request)."""
    workspace = Workspace.configured(TEAM, None)
    return SlackDirectory(web_client(fake.token, fake.api_url), workspace, kept=kept)


def test_a_kept_answer_is_used_only_while_slack_fails_and_only_for_a_day(
    service: AccessService, clock: ManualClock, fake: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    kept = KeptProfiles(service.db, clock)
    assert directory(fake, kept).profile("U0BEN").email == "ben@ward.nhs.uk"  # kept now

    fake.fail(1000, 500)  # another process, later, Slack's API failing
    caplog.set_level(logging.WARNING, logger="app.directory")
    assert directory(fake, kept).person("U0BEN").email == "ben@ward.nhs.uk"
    assert "event=slack_profile_kept_used user=U0BEN error=SlackApiError" in caplog.text
    fake.fail(0)
    fake.unreachable = True  # or not answering at all
    assert directory(fake, kept).profile("U0BEN").name == "Ben Hughes"
    fake.unreachable = False

    clock.advance(KEPT_PROFILE_USED_FOR + timedelta(seconds=1))  # a day on: too old to use
    fake.fail(1000, 500)
    with pytest.raises(SlackApiError):
        directory(fake, kept).profile("U0BEN")
    with pytest.raises(SlackApiError):  # and nobody Slack has not answered about before
        directory(fake, kept).profile("U0CHLOE")


def test_slacks_own_answer_is_never_overruled_by_a_kept_one(
    service: AccessService, clock: ManualClock, fake: FakeSlack
) -> None:
    kept = KeptProfiles(service.db, clock)
    directory(fake, kept).profile("U0BEN")
    fake.users.pop("U0BEN")  # Slack now says there is no such account
    with pytest.raises(SlackApiError) as refused:
        directory(fake, kept).profile("U0BEN")
    assert refused.value.response["error"] == "user_not_found"


def test_a_kept_answer_keeps_what_decides_whether_they_may_act(
    service: AccessService, clock: ManualClock, fake: FakeSlack
) -> None:
    kept = KeptProfiles(service.db, clock)
    directory(fake, kept).profile("U0GUEST")
    fake.fail(1000, 500)
    assert directory(fake, kept).profile("U0GUEST").restricted  # still a guest: refused


class TestAnApprovalWhileSlacksApiFails(SlackOnSqlite):
    def test_an_approver_slack_answered_about_recently_is_granted_at_once(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        # Ben used WardKey an hour ago (another process asked Slack about him then).
        KeptProfiles(service.db, service.clock).keep(SlackProfile.from_slack(BEN.to_slack()))
        service.clock.advance(timedelta(hours=1))  # type: ignore[attr-defined]
        rid = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), "fix order sets")
        slack.fake.fail(1000, 500)  # Slack delivers his click; its Web API fails
        assert slack.click(APPROVE_ACTION, str(rid.id), "U0BEN").status_code == 200
        slack.settle()
        assert service.get(rid.id).state == RequestState.ACTIVE  # not waiting for Slack
        assert any(c.method == "users.info" and c.status == 500 for c in slack.fake.calls)


def test_answers_too_old_to_be_used_are_deleted(
    service: AccessService, clock: ManualClock, fake: FakeSlack
) -> None:
    """The table holds no more about staff than it can use: a day's answers."""
    kept = KeptProfiles(service.db, clock)
    directory(fake, kept).profile("U0BEN")
    clock.advance(KEPT_PROFILE_USED_FOR + KeptProfiles.PURGE_EVERY)
    directory(fake, kept).profile("U0CHLOE")  # keeping the next answer clears the old ones
    with service.db.read() as session:
        assert set(session.scalars(sa.select(KeptSlackProfile.user_id))) == {"U0CHLOE"}
