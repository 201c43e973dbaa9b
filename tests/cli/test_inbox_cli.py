"""`wardkey inbox list` and `wardkey inbox give-up`: an operator sees the acknowledged requests
whose work is not done, and an admin can end one that can never be done, on the record."""

from __future__ import annotations

from contextlib import closing
from urllib.parse import urlencode

import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from app import audit
from app.slack.intake import Intake, Pending
from app.store import AuditEvent, Database
from app.store.models import SeenRequest
from tests.cli.test_cli_serve import base_env, run

__all__ = ["base_env"]  # the fixture, shared with the serve tests

STUCK = "v0=" + "e" * 64
RUNNING = "v0=" + "f" * 64
NOTE = "the form's ward no longer exists; told Amira by phone"


def test_an_admin_gives_up_a_stuck_request_on_the_record(base_env: dict[str, str]) -> None:
    db = Database(base_env["DATABASE_URL"])
    inbox = Intake(db)
    command = urlencode(
        {"command": "/jit", "text": "request pharmacy-db:read 30m ward 12", "user_id": "U0AMIRA"}
    )

    def failing() -> None:
        raise OperationalError("UPDATE", {}, ConnectionError("server closed the connection"))

    with closing(inbox):
        assert inbox.record(STUCK, command, {})
        assert not inbox.run(Pending(key=STUCK, jobs=[failing]), inbox.owner)  # waits for a try
        assert inbox.record(RUNNING, "payload=%7B%22type%22%3A%22block_actions%22%7D", {})

    listed = run(["inbox", "list"], base_env)
    assert listed.returncode == 0, listed.stderr
    lines = {line.split("  ")[0]: line.split("  ") for line in listed.stdout.splitlines()}
    assert lines[STUCK][1] == "/jit request by U0AMIRA" and lines[STUCK][3] == "1 try"
    assert lines[RUNNING][1] == "block_actions by ?" and lines[RUNNING][3] == "being done now"
    assert "2 acknowledged requests not yet done" in listed.stdout
    assert "ward 12" not in listed.stdout  # what the person wrote stays in the inbox

    refused = run(["inbox", "give-up", STUCK, NOTE, "--by", "ben@ward.nhs.uk"], base_env)
    assert refused.returncode == 1 and "only a WardKey admin" in refused.stderr
    busy = run(["inbox", "give-up", RUNNING, NOTE, "--by", "gita@ward.nhs.uk"], base_env)
    assert busy.returncode == 1 and "doing it right now" in busy.stderr
    done = run(["inbox", "give-up", STUCK, NOTE, "--by", "gita@ward.nhs.uk"], base_env)
    assert done.returncode == 0, done.stderr
    assert "given up: /jit request by U0AMIRA, after 1 try;" in done.stdout

    with db.read() as session:
        row = session.get(SeenRequest, STUCK)
        assert row is not None and row.state == "done" and row.body is None
        assert row.outcome == f"given up: {NOTE}"
        event = session.scalars(
            sa.select(AuditEvent).where(AuditEvent.action == "inbox.given_up")
        ).one()
    assert "gita@ward.nhs.uk" in event.body and NOTE in event.body
    assert audit.verify(db).ok
    again = run(["inbox", "give-up", STUCK, NOTE, "--by", "gita@ward.nhs.uk"], base_env)
    assert again.returncode == 1  # done: nothing to give up
    db.dispose()
