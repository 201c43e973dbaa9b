"""Run the real app over HTTP against the fake Slack Web API, and talk to it as Slack does
(through `app.demo.slack_driver`, which the demo uses too)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.access import AccessService
from app.demo.slack_driver import SlackDriver, TrackingExecutor, serving
from app.demo.slack_fake import FakeSlack, SlackUser
from app.directory import Workspace
from app.listeners import slack_app
from app.slack.app import web_client
from app.store import Database
from app.web import WardKeyWSGI
from tests.conftest import sqlite_copy

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
TEAM = "T0WARD"

# The ward's people as Slack knows them (see tests/conftest.py for who they are).
WARD_USERS = [
    SlackUser("U0AMIRA", "amira@ward.nhs.uk", "Amira Khan", "Clinical systems analyst"),
    SlackUser("U0BEN", "ben@ward.nhs.uk", "Ben Hughes", "Clinical systems lead"),
    SlackUser("U0CHLOE", "chloe@ward.nhs.uk", "Chloe Evans", "Clinical systems analyst"),
    SlackUser("U0DEV", "dev@ward.nhs.uk", "Dev Patel", "Infrastructure engineer"),
    SlackUser("U0ERIN", "erin@ward.nhs.uk", "Erin Walsh", "Infrastructure lead"),
    SlackUser("U0FARID", "farid@ward.nhs.uk", "Farid Rahman", "Infrastructure lead"),
    SlackUser("U0GITA", "gita@ward.nhs.uk", "Gita Rao", "Head of IT operations"),
    SlackUser("U0HANA", "hana@ward.nhs.uk", "Hana Novak", "Duty manager"),
    SlackUser("U0VAL", "val@vendor.example", "Val Stone", "Medisoft engineer (vendor)"),
    SlackUser("U0GONE", "gone@ward.nhs.uk", "Left Trust", "", deleted=True),
    SlackUser("U0GUEST", "guest@ward.nhs.uk", "Guest User", "", is_restricted=True),
]


RunningApp = SlackDriver

# What Amira asks for in most stories: clinical, so Ben (on call tonight) and the managers
# get the cards.
REQUEST = "pharmacy-db:read 30m fix stuck order set on ward 12"


def run_app(service: AccessService, workspace: Workspace | None = None) -> Iterator[RunningApp]:
    """The app as `wardkey serve` runs it; `workspace` as SLACK_TEAM_IDS / SLACK_ENTERPRISE_ID
    set it (None: the bot token's own workspace, T0WARD)."""
    fake = FakeSlack().start()
    for user in WARD_USERS:
        fake.add_user(user)
    client = web_client(fake.token, fake.api_url)
    listeners = TrackingExecutor(max_workers=8)
    dialogs = TrackingExecutor(max_workers=2)
    bolt = slack_app(service, client, SIGNING_SECRET, listeners, dialogs, workspace)
    http = httpx.Client(timeout=10)
    wsgi = WardKeyWSGI(bolt, service.db, SIGNING_SECRET)
    try:
        with serving(wsgi) as url:
            yield RunningApp(url, fake, http, SIGNING_SECRET, TEAM, (listeners, dialogs))
    finally:
        http.close()
        for pool in (dialogs, listeners):  # let work after the ack finish before the fake goes
            pool.shutdown(wait=True)
        wsgi.close()  # its inbox heartbeat would write to the next test's tables
        fake.stop()


def ask(slack: RunningApp, text: str = REQUEST, user: str = "U0AMIRA") -> int:
    """`/jit request TEXT` (Amira's, unless told): the request's number, once every card is
    posted and remembered."""
    before = len(slack.fake.calls_to("response_url"))
    response = slack.command("/jit", f"request {text}", user)
    assert response.status_code == 200
    reply = slack.replies(before + 1)[-1]
    assert reply.startswith("Request #"), reply
    slack.settle()  # every card posted and remembered before anyone clicks
    return int(reply.split("#")[1].split(" ")[0])


class SlackOnSqlite:
    """For test classes that drive the Slack app: a SQLite database of their own (the
    service's PostgreSQL behaviour has its own tests) and the app running against it."""

    @pytest.fixture
    def db(self, tmp_path: Path, sqlite_template: Path) -> Iterator[Database]:
        yield from sqlite_copy(tmp_path, sqlite_template)

    @pytest.fixture
    def slack(self, service: AccessService) -> Iterator[RunningApp]:
        yield from run_app(service)
