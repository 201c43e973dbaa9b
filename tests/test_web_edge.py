"""The HTTP edge as a stranger on the internet meets it: `/slack/events` refuses what Slack did
not sign before it costs memory or log space, and `/readyz` answers even when the database
does not."""

from __future__ import annotations

import io
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from slack_sdk.signature import SignatureVerifier

from app.access import AccessService
from app.clock import ManualClock
from app.demo.slack_driver import serving
from app.demo.slack_fake import FakeSlack
from app.lifecycle.deps import CoreDeps
from app.listeners import slack_app
from app.policy import Policy
from app.slack.app import web_client
from app.store import Database, upgrade
from app.web import WardKeyWSGI
from tests.conftest import HERE, sqlite_copy
from tests.fakes.memory_adapter import MemoryTarget
from tests.processes import free_port
from tests.slack_harness import SIGNING_SECRET, WARD_USERS

MiB = 1024 * 1024
# Something only an attacker's body holds: if it shows up in a log, the body was logged.
MARKER = "ATTACKER-BODY-MARKER"


class CountingBody:
    """A request body that counts what the app reads of it."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        n = self.left if size < 0 else min(size, self.left)
        self.left -= n
        self.read_bytes += n
        return b"x" * n


def call(app: WardKeyWSGI, environ: dict[str, Any]) -> tuple[str, bytes]:
    answer: list[str] = []

    def start_response(status: str, _headers: list[tuple[str, str]], *_: Any) -> None:
        answer.append(status)

    body = b"".join(app(environ, start_response))
    return answer[0], body


def environ(body: Any, **headers: str) -> dict[str, Any]:
    env: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/slack/events",
        "CONTENT_TYPE": "application/x-www-form-urlencoded",
        "wsgi.input": body,
    }
    env.update(headers)
    return env


def stamp(clock: ManualClock, ago: timedelta = timedelta(0)) -> str:
    return str(int((clock.now() - ago).timestamp()))


def signed(body: str, ts: str) -> str:
    return SignatureVerifier(SIGNING_SECRET).generate_signature(timestamp=ts, body=body)


@pytest.fixture
def db(tmp_path: Path, sqlite_template: Path) -> Iterator[Database]:
    yield from sqlite_copy(tmp_path, sqlite_template)


@pytest.fixture
def edge(db: Database, policy: Policy, clock: ManualClock) -> Iterator[WardKeyWSGI]:
    """The app as `wardkey serve` builds it (a real Bolt app), on the test's clock."""
    fake = FakeSlack().start()
    for user in WARD_USERS:
        fake.add_user(user)
    service = AccessService(CoreDeps(db, policy, {"pharmacy-db": MemoryTarget()}, clock))
    bolt = slack_app(service, web_client(fake.token, fake.api_url), SIGNING_SECRET)
    wsgi = WardKeyWSGI(bolt, db, SIGNING_SECRET, clock=clock, max_body_bytes=MiB)
    try:
        yield wsgi
    finally:
        wsgi.close()
        fake.stop()


class TestBodiesAreBounded:
    def test_a_huge_post_is_refused_from_its_length_before_a_byte_is_read(
        self, edge: WardKeyWSGI, clock: ManualClock
    ) -> None:
        body = CountingBody(3 * MiB)
        status, text = call(
            edge,
            environ(
                body,
                CONTENT_LENGTH=str(300 * MiB),
                HTTP_X_SLACK_REQUEST_TIMESTAMP=stamp(clock),
                HTTP_X_SLACK_SIGNATURE="v0=" + "0" * 64,
            ),
        )
        assert status.startswith("413")
        assert body.read_bytes == 0
        assert b"too large" in text

    def test_a_body_with_no_length_is_refused_unread(
        self, edge: WardKeyWSGI, clock: ManualClock
    ) -> None:
        body = CountingBody(3 * MiB)
        status, _ = call(
            edge,
            environ(
                body,
                HTTP_X_SLACK_REQUEST_TIMESTAMP=stamp(clock),
                HTTP_X_SLACK_SIGNATURE="v0=" + "0" * 64,
            ),
        )
        assert status.startswith("411")
        assert body.read_bytes == 0

    def test_a_body_longer_than_its_length_is_read_only_to_its_length(
        self, edge: WardKeyWSGI, clock: ManualClock
    ) -> None:
        body = CountingBody(3 * MiB)
        status, _ = call(
            edge,
            environ(
                body,
                CONTENT_LENGTH="100",
                HTTP_X_SLACK_REQUEST_TIMESTAMP=stamp(clock),
                HTTP_X_SLACK_SIGNATURE="v0=" + "0" * 64,
            ),
        )
        assert status.startswith("401")
        assert body.read_bytes == 100


class TestOnlySlackIsHeard:
    @pytest.mark.parametrize("bad", ["yesterday", "1e9", "-300", "12.5", "9" * 40, "0x10"])
    def test_a_malformed_timestamp_is_a_400_not_a_server_error(
        self, edge: WardKeyWSGI, bad: str
    ) -> None:
        body = "command=%2Fjit&text=help"
        with serving(edge) as url:
            answer = httpx.post(
                f"{url}/slack/events",
                content=body,
                headers={
                    "X-Slack-Request-Timestamp": bad,
                    "X-Slack-Signature": signed(body, bad),
                    "Content-Type": "application/x-www-form-urlencoded",
                },
            )
        assert answer.status_code == 400
        assert "X-Slack-Request-Timestamp" in answer.text

    def test_a_request_signed_six_minutes_ago_is_refused(
        self, edge: WardKeyWSGI, clock: ManualClock
    ) -> None:
        body = "command=%2Fjit&text=help"
        old = stamp(clock, ago=timedelta(minutes=6))
        status, text = call(
            edge,
            environ(
                io.BytesIO(body.encode()),
                CONTENT_LENGTH=str(len(body)),
                HTTP_X_SLACK_REQUEST_TIMESTAMP=old,
                HTTP_X_SLACK_SIGNATURE=signed(body, old),
            ),
        )
        assert status.startswith("401")
        assert b"too old" in text

    @pytest.mark.parametrize("far", ["999999999999", "0"])
    def test_a_timestamp_far_from_now_is_stale_not_a_server_error(
        self, edge: WardKeyWSGI, far: str
    ) -> None:
        """A whole number of seconds decades away (or past year 9999) is simply too old or
        too new: 401, never a 500 with a traceback for every such request."""
        body = "command=%2Fjit&text=help"
        status, text = call(
            edge,
            environ(
                io.BytesIO(body.encode()),
                CONTENT_LENGTH=str(len(body)),
                HTTP_X_SLACK_REQUEST_TIMESTAMP=far,
                HTTP_X_SLACK_SIGNATURE=signed(body, far),
            ),
        )
        assert status.startswith("401")
        assert b"too old" in text

    def test_a_forged_post_is_refused_in_one_short_log_line_without_its_body(
        self, edge: WardKeyWSGI, clock: ManualClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        body = "command=%2Fjit&text=" + MARKER * 20_000  # 400 KB: under the limit, so read
        now = stamp(clock)
        with serving(edge) as url:
            answers = [
                httpx.post(
                    f"{url}/slack/events",
                    content=body,
                    headers={"X-Slack-Request-Timestamp": now, **extra},
                )
                for extra in ({"X-Slack-Signature": "v0=" + "0" * 64}, {})
            ]
        assert [a.status_code for a in answers] == [401, 401]
        assert not [r for r in caplog.records if MARKER in r.getMessage()]
        refusals = [r.getMessage() for r in caplog.records if r.name == "app.web"]
        assert refusals == [
            f"event=slack_request_refused reason=bad_signature length={len(body)}",
            f"event=slack_request_refused reason=unsigned length={len(body)}",
        ]
        assert max(len(r.getMessage()) for r in caplog.records) < 500

    def test_a_get_is_told_to_post(self, edge: WardKeyWSGI) -> None:
        status, _ = call(edge, {"REQUEST_METHOD": "GET", "PATH_INFO": "/slack/events"})
        assert status.startswith("405")


class TestAHungDatabase:
    @pytest.fixture
    def silent_database(self) -> Iterator[str]:
        """A database server that takes the connection and never says a word (a hung host)."""
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        held: list[socket.socket] = []
        stop = threading.Event()
        self.knocked = threading.Event()

        def accept() -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                held.append(conn)
                self.knocked.set()

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/test"
        finally:
            stop.set()
            listener.close()
            for conn in held:
                conn.close()

    def test_readyz_says_not_ready_when_the_database_hangs(self, silent_database: str) -> None:
        db = Database(silent_database)
        app = WardKeyWSGI(bolt=None, db=db, signing_secret="not-used-here")  # type: ignore[arg-type]
        with serving(app) as url:
            # Well within its own bound, the probe must come back with an answer.
            answer = httpx.get(f"{url}/readyz", timeout=30)
        assert answer.status_code == 503
        assert answer.text == "database unreachable"

    def test_scrapes_hold_one_thread_and_give_up_when_the_database_hangs(
        self, silent_database: str
    ) -> None:
        db = Database(silent_database)
        app = WardKeyWSGI(
            bolt=None,  # type: ignore[arg-type]
            db=db,
            signing_secret="not-used-here",
            metrics_token="scrape-me",
        )
        auth = {"Authorization": "Bearer scrape-me"}
        with serving(app) as url, httpx.Client(headers=auth, timeout=30) as http:
            first: list[httpx.Response] = []
            scrape = threading.Thread(target=lambda: first.append(http.get(f"{url}/metrics")))
            scrape.start()
            assert self.knocked.wait(30), "the first scrape never reached the database"
            # While the first waits on the database, a second is turned away, not queued.
            second = http.get(f"{url}/metrics")
            scrape.join(30)
        assert second.status_code == 503
        assert "another scrape" in second.text
        assert [r.status_code for r in first] == [503]
        assert first[0].text == "database unreachable"


# --------------------------------------------------------------- a real `wardkey serve`


class Served:
    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="class")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`wardkey serve` as an operator starts it, with neither metrics setting."""
    home = tmp_path_factory.mktemp("serve")
    fake = FakeSlack().start()
    for user in WARD_USERS:
        fake.add_user(user)
    url_db = f"sqlite:///{home / 'wardkey.db'}"
    upgrade(url_db)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "WARDKEY_"))}
    env.update(
        DATABASE_URL=url_db,
        WARDKEY_POLICY=str(HERE / "data" / "ward_policy.yaml"),
        PHARMACY_DB_PASSWORD="not-used-here",
        DIRECTORY_PASSWORD="not-used-here",
        SLACK_BOT_TOKEN=fake.token,
        SLACK_SIGNING_SECRET=SIGNING_SECRET,
        SLACK_API_URL=fake.api_url,
    )
    port = free_port()
    log = home / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app",
                "serve",
                "--no-scheduler",
                "--port",
                str(port),
                "--host",
                "127.0.0.1",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{url}/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "serve did not start"
                time.sleep(0.1)
            yield Served(url, log)
        finally:
            process.terminate()
            process.wait(timeout=10)
            fake.stop()


class TestServe:
    def test_a_300_mib_upload_is_turned_away_at_the_door(self, served: Served) -> None:
        port = int(served.url.rsplit(":", 1)[1])
        head = (
            "POST /slack/events HTTP/1.1\r\nHost: wardkey\r\n"
            f"Content-Length: {300 * MiB}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"X-Slack-Request-Timestamp: {int(time.time())}\r\n"
            f"X-Slack-Signature: v0={'0' * 64}\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(head.encode() + b"x" * 65536)
            # Answered without waiting for the other 299.9 MiB (a wait would time out here).
            first = conn.recv(64)
        assert first.startswith(b"HTTP/1.1 413")

    def test_clients_that_send_half_a_request_do_not_shut_out_slack(self, served: Served) -> None:
        """150 connections that send headers and 2 of 1,000 body bytes, then wait: health
        checks and Slack still get through."""
        port = int(served.url.rsplit(":", 1)[1])
        head = (
            b"POST /slack/events HTTP/1.1\r\nHost: wardkey\r\nContent-Length: 1000\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n\r\nab"
        )
        slow = []
        try:
            for _ in range(150):
                conn = socket.create_connection(("127.0.0.1", port), timeout=10)
                conn.sendall(head)
                slow.append(conn)
            assert httpx.get(f"{served.url}/healthz", timeout=5).status_code == 200
            answer = httpx.post(
                f"{served.url}/slack/events",
                content="command=%2Fjit",
                headers={"X-Slack-Request-Timestamp": "soon", "X-Slack-Signature": "v0=00"},
                timeout=5,
            )
            assert answer.status_code == 400
        finally:
            for conn in slow:
                conn.close()

    def test_a_malformed_timestamp_is_a_400_and_no_traceback(self, served: Served) -> None:
        answer = httpx.post(
            f"{served.url}/slack/events",
            content="command=%2Fjit",
            headers={"X-Slack-Request-Timestamp": "soon", "X-Slack-Signature": "v0=00"},
        )
        assert answer.status_code == 400
        assert "Traceback" not in served.output()

    def test_a_forged_post_leaves_no_trace_of_its_body_in_the_log(self, served: Served) -> None:
        body = "command=%2Fjit&text=" + MARKER * 40_000  # 800 KB: under the limit
        answer = httpx.post(
            f"{served.url}/slack/events",
            content=body,
            headers={
                "X-Slack-Request-Timestamp": str(int(time.time())),
                "X-Slack-Signature": "v0=" + "0" * 64,
            },
        )
        assert answer.status_code == 401
        output = served.output()
        assert MARKER not in output
        assert "event=slack_request_refused reason=bad_signature" in output

    def test_metrics_stay_closed_until_a_token_is_set(self, served: Served) -> None:
        answer = httpx.get(f"{served.url}/metrics")
        assert answer.status_code == 403
        assert "WARDKEY_METRICS_TOKEN" in answer.text
        said = [line for line in served.output().splitlines() if "event=metrics_off" in line]
        assert len(said) == 1
