"""A `/jit request` whose process died after the request was made (after its progress was
noted, before the inbox row was finished) is answered on redelivery about that request, with
its Cancel button, and nothing is made twice; without the note the redelivered command met the
request it had made itself and answered "You already have request #N"."""

from __future__ import annotations

import json
from contextlib import closing
from datetime import timedelta
from urllib.parse import urlencode

import sqlalchemy as sa

from app.access import AccessService
from app.directory import Workspace
from app.listeners import slack_app
from app.slack.app import web_client
from app.slack.intake import Intake, Redelivery
from app.store.models import AccessRequest
from tests.slack_harness import TEAM, RunningApp, SlackOnSqlite

ASK = "request pharmacy-db:read 30m month-end stock check on ward 12"


class TestARequestRedelivered(SlackOnSqlite):
    def test_a_redelivered_request_is_answered_about_the_request_it_made(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        assert slack.command("/jit", ASK, "U0AMIRA").status_code == 200
        slack.settle()
        first = [c.args for c in slack.fake.calls_to("response_url")]
        assert len(first) == 1 and "#1" in first[0]["text"]
        # The process died after the request was made: its inbox row, as it was recorded (body and
        # headers) with the progress it noted, is still its own and unfinished.
        body = urlencode(
            {
                "team_id": TEAM,
                "user_id": "U0AMIRA",
                "command": "/jit",
                "text": ASK,
                "response_url": slack.fake.response_url("cmd"),
                "trigger_id": "1.2.3",
            }
        )
        headers = json.dumps({"content-type": "application/x-www-form-urlencoded"})
        with service.db.transaction() as session:
            session.execute(
                sa.text(
                    "UPDATE seen_requests SET state = 'working', lease_until = :gone, "
                    "body = :body, headers = :headers WHERE outcome = 'opened:1'"
                ),
                {
                    "gone": service.clock.now() - timedelta(minutes=1),
                    "body": body,
                    "headers": headers,
                },
            )
        client = web_client(slack.fake.token, slack.fake.api_url)
        intake = Intake(service.db, service.clock)
        workspace = Workspace.configured(TEAM, None)
        redelivery = Redelivery(
            intake, lambda: slack_app(service, client, "", workspace=workspace, redelivery=True)
        )
        with closing(intake):
            assert len(redelivery.redeliver_due()) == 1
        again = [c.args for c in slack.fake.calls_to("response_url")][1:]
        assert len(again) == 1, again
        assert "#1" in again[0]["text"] and "already" not in again[0]["text"], again[0]["text"]
        assert "Cancel" in str(again[0].get("blocks"))
        with service.db.read() as session:
            assert session.scalar(sa.select(sa.func.count()).select_from(AccessRequest)) == 1
