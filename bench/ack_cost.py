"""What one ack costs the interpreter, layer by layer, next to a bare Bolt app that only acks.

bench/ack_latency.py measures acks through HTTP under load, where the figures move with the
machine from run to run. This drives each layer in this one process, one signed `/jit request`
at a time (no HTTP server, no other load), and prints the CPU time per ack of:
  - bare Bolt:          a Bolt app whose `/jit` listener only calls ack() (the floor);
  - WardKey's Bolt app: the same request through WardKey's app (its middleware, `/jit`'s
                        dispatch and the request listener, which parse and check it), as
                        `serve` dispatches it, without the inbox;
  - `serve`'s ack:      the whole of it (app/web.py: signature, replay check, the inbox's write
                        and hand-over on PostgreSQL, then the app above), as in worker mode;
  - the inbox alone:    Intake.record of one request, on PostgreSQL.
Every ack here writes alone, so the inbox's cost is its most per ack: under load the writer
records several requests, and hands over earlier ones, per statement.

    python bench/ack_cost.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import io
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_sdk import WebClient
from slack_sdk.signature import SignatureVerifier

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.demo.slack_fake import FakeSlack, SlackUser
from app.demo.webhook_target import WebhookTarget
from bench.ack_latency import command_body, policy, postgres_database

SECRET = secrets.token_hex(16)
Wsgi = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def environ(user: int, fake: FakeSlack) -> dict[str, Any]:
    """A signed `/jit request` from person `user`, as waitress hands it to the app."""
    body = command_body(user, fake, None).encode()
    stamp = str(int(time.time()))
    signature = SignatureVerifier(SECRET).generate_signature(timestamp=stamp, body=body)
    return {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/slack/events",
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "CONTENT_TYPE": "application/x-www-form-urlencoded",
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_X_SLACK_REQUEST_TIMESTAMP": stamp,
        "HTTP_X_SLACK_SIGNATURE": signature,
    }


def cpu_per_ack(app: Wsgi, requests: list[dict[str, Any]]) -> float:
    """CPU ms per request (every thread of this process: the inbox's writer too)."""

    def start_response(status: str, headers: list[tuple[str, str]], *_: Any) -> None:
        if not status.startswith("200"):
            raise SystemExit(f"answered {status}")

    began = time.process_time()
    for one in requests:
        b"".join(app(one, start_response))
    return (time.process_time() - began) / len(requests) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    n = args.requests
    database = postgres_database("wardkey_bench_ack_cost")
    if database is None:
        raise SystemExit("this bench needs PostgreSQL (WARDKEY_BENCH_POSTGRES_URL)")
    key = secrets.token_hex(32)
    console = WebhookTarget(key.encode(), name="epr").start()
    fake = FakeSlack().start()
    people = 4 * n + 400
    for i in range(people):
        fake.add_user(SlackUser(f"U0P{i}", f"p{i}@bench.nhs.uk", f"Person {i}", "Analyst"))
    for i in (1, 2):
        fake.add_user(SlackUser(f"U0L{i}", f"lead{i}@bench.nhs.uk", f"Lead {i}", "Lead"))
    work = Path(tempfile.mkdtemp(prefix="wardkey-bench-"))
    (work / "policy.yaml").write_text(policy(people, console.url))
    os.environ.update(
        {
            "SLACK_BOT_TOKEN": fake.token,
            "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": fake.api_url,
            "WARDKEY_POLICY": str(work / "policy.yaml"),
            "BENCH_EPR_KEY": key,
            "DATABASE_URL": database,
            "WARDKEY_INTAKE_WORK": "worker",  # serve records, acks and hands the work on
        }
    )
    upgrade = [sys.executable, "-m", "app", "db", "upgrade"]
    subprocess.run(upgrade, check=True, capture_output=True)

    from app.cli.configured import ready
    from app.slack import intake
    from app.web import WardKeyWSGI

    bare = App(
        client=WebClient(token=fake.token, base_url=fake.api_url + "/"),
        signing_secret=SECRET,
        process_before_response=True,  # as WardKey builds its own (app/slack/app.py)
    )

    @bare.command("/jit")
    def jit(ack: Any) -> None:
        ack()

    runtime = ready("slack_bot_token", "slack_signing_secret")
    served = WardKeyWSGI(runtime.bolt(), runtime.service.db, SECRET, None, intake_work="worker")

    def wardkey_bolt(one: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        with intake.handling(intake.Pending(key=one["HTTP_X_SLACK_SIGNATURE"])):
            return served.slack(one, start_response)

    layers: list[tuple[str, Wsgi]] = [
        ("bare Bolt (ack only)", SlackRequestHandler(bare)),
        ("WardKey's Bolt app", wardkey_bolt),
        ("serve's ack (PostgreSQL inbox)", served),
    ]
    users = iter(range(people))
    results = []
    for name, app in layers:
        cpu_per_ack(app, [environ(next(users), fake) for _ in range(200)])  # warm up
        results.append((name, cpu_per_ack(app, [environ(next(users), fake) for _ in range(n)])))
    inbox = intake.Intake(runtime.service.db)
    headers = {"content-type": "application/x-www-form-urlencoded"}
    began = time.process_time()
    for _ in range(n):
        inbox.record("v0=" + secrets.token_hex(32), command_body(0, fake, None), headers)
    results.append(("the inbox alone", (time.process_time() - began) / n * 1000))
    inbox.close()
    served.close()

    floor = results[0][1]
    print(f"\n{n} signed /jit request commands, one at a time, in one process")
    print(f"{'layer':<34}{'CPU ms/ack':>12}{'vs bare':>10}")
    for name, cost in results:
        print(f"{name:<34}{cost:>12.3f}{cost / floor:>9.2f}x")
    console.stop()
    fake.stop()


if __name__ == "__main__":
    main()
