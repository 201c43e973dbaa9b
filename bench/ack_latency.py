"""How fast `wardkey serve` acknowledges Slack, next to a bare Bolt app that only acks.

Starts, as separate processes served the same way (waitress, same thread count):
  - bare:    a Bolt app whose `/jit` listener only calls ack() (the floor for Bolt + waitress);
  - wardkey: `wardkey serve` on SQLite, and on PostgreSQL when reachable.
Both talk to the local fake Slack Web API. Then sends N correctly signed `/jit request …`
commands, C at a time, from distinct eligible people (so every one creates a real request, sends
approver cards and writes the audit trail after the ack) and prints p50/p95/p99 of the time to
the ack for each, and the ratio of WardKey to the bare app measured in the same run.

    python bench/ack_latency.py [--requests 1000] [--concurrency 50] [--no-postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import sqlalchemy as sa
from slack_sdk.signature import SignatureVerifier

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.devtools.slack_fake import FakeSlack, SlackUser
from app.devtools.webhook_target import WebhookTarget

POSTGRES_SERVER = os.environ.get(
    "WARDKEY_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BENCH_DATABASE = "wardkey_bench_ack"
THREADS = 8
SECRET = secrets.token_hex(16)

BARE_APP = textwrap.dedent(
    """
    import os, sys
    from slack_bolt import App
    from slack_sdk import WebClient
    from waitress import serve
    client = WebClient(token=os.environ["SLACK_BOT_TOKEN"], base_url=os.environ["SLACK_API_URL"])
    app = App(client=client, signing_secret=os.environ["SLACK_SIGNING_SECRET"])
    @app.command("/jit")
    def jit(ack):
        ack()
    def wsgi(environ, start_response):
        from slack_bolt.adapter.wsgi import SlackRequestHandler
        return SlackRequestHandler(app)(environ, start_response)
    serve(wsgi, host="127.0.0.1", port=int(sys.argv[1]), threads=int(sys.argv[2]))
    """
)


# Keep-alive connections, one per request in flight, each sending its next request as soon as
# the previous ack arrives; prints the latencies (s) as JSON. Any answer but 200 is an error.
LOAD_CLIENT = textwrap.dedent(
    """
    import asyncio, json, sys, time
    spec = json.load(sys.stdin)
    todo = [r.encode() for r in spec["raw"]]
    latencies = []
    async def connection():
        reader, writer = await asyncio.open_connection(spec["host"], spec["port"])
        while todo:
            request = todo.pop()
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\\r\\n\\r\\n")
            lines = head.decode().split("\\r\\n")
            length = next(
                int(line.split(":", 1)[1]) for line in lines
                if line.lower().startswith("content-length:")
            )
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if lines[0].split()[1] != "200":
                sys.exit(f"answer {lines[0]!r}")
        writer.close()
    async def main():
        await asyncio.gather(*(connection() for _ in range(spec["concurrency"])))
    asyncio.run(main())
    print(json.dumps(latencies))
    """
)


def policy(people: int, console_url: str) -> str:
    members = ", ".join(f"p{i}@bench.nhs.uk" for i in range(people))
    return textwrap.dedent(
        f"""
        version: 1
        timezone: Europe/London
        channels: {{security_alerts: C0SEC, manager_reviews: C0MGR}}
        admins: admins
        groups:
          admins: [lead1@bench.nhs.uk]
          staff: [{members}]
          leads: [lead1@bench.nhs.uk, lead2@bench.nhs.uk]
        paths:
          clinical: {{risk: low, approvers: [{{group: leads}}], max_duration: 2h}}
          admin: {{risk: medium, approvers: [{{group: leads}}], max_duration: 2h}}
          engineering: {{risk: high, approvers: [{{group: leads}}], approvals: 2,
                         max_duration: 2h}}
          breakglass: {{risk: critical, max_duration: 1h, reviewers: [{{group: leads}}],
                      review_within: 24h}}
        targets:
          epr:
            kind: webhook
            settings: {{url: "{console_url}"}}
            insecure: true  # the stand-in console: plain http on this machine
            secrets: {{signing_key: BENCH_EPR_KEY}}
            account: {{template: "{{local}}"}}
            roles:
              ward-admin: {{path: clinical, entitlement: WARD_ADMIN, eligible: [staff]}}
        """
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str], port: int) -> Iterator[str]:
    # The log goes to a file: a pipe nobody reads fills up, and then every thread that logs
    # (waitress's "task queue depth" warning in the accept loop, for one) would stall.
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.post(f"{url}/slack/events", content=b"").status_code in (200, 401):
                    break
            if proc.poll() is not None:
                log.seek(0)
                raise SystemExit(f"{args} exited: {log.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                raise SystemExit(f"{args} did not start")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def command_body(user: int, fake: FakeSlack, text: str | None) -> str:
    return urlencode(
        {
            "team_id": "T0WARD",
            "user_id": f"U0P{user}",
            "command": "/jit",
            "text": text
            or f"request epr:ward-admin 30m rebuild ward list {user} after night merge",
            "response_url": fake.response_url("cmd"),
            "trigger_id": f"t-{user}",
            "channel_id": "C0OPS",
        }
    )


def measure(
    url: str, fake: FakeSlack, requests: int, concurrency: int, text: str | None = None
) -> list[float]:
    """Seconds from sending each signed command to its ack, `concurrency` in flight at once.

    The requests are signed beforehand and sent by a small asyncio client in a process of its
    own, so neither the client's work nor the fakes serving the app's calls after the ack (in
    this process) take the interpreter from the timing."""
    verifier = SignatureVerifier(SECRET)
    host, port = url.removeprefix("http://").split(":")
    raw = []
    for user in range(requests):
        body = command_body(user, fake, text)
        ts = str(int(time.time()))
        head = (
            f"POST /slack/events HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"X-Slack-Request-Timestamp: {ts}\r\n"
            f"X-Slack-Signature: {verifier.generate_signature(timestamp=ts, body=body)}\r\n"
            f"Content-Length: {len(body.encode())}\r\n\r\n"
        )
        raw.append(head + body)
    spec = json.dumps({"host": host, "port": int(port), "concurrency": concurrency, "raw": raw})
    done = subprocess.run(
        [sys.executable, "-c", LOAD_CLIENT], input=spec, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"load client failed: {done.stderr[-500:]}")
    return [float(x) for x in json.loads(done.stdout)]


def settle(fake: FakeSlack, cards: int, timeout: float = 900) -> None:
    """Wait for the approver cards of every request: the app's work after the acks is done."""
    deadline = time.monotonic() + timeout
    while len(fake.calls_to("chat.postMessage")) < cards:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(fake.calls_to('chat.postMessage'))} of {cards} cards")
        time.sleep(0.5)


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] * 1000


def postgres_database() -> str | None:
    try:
        engine = sa.create_engine(POSTGRES_SERVER, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {BENCH_DATABASE} WITH (FORCE)"))
            conn.execute(sa.text(f"CREATE DATABASE {BENCH_DATABASE}"))
        engine.dispose()
    except sa.exc.OperationalError as exc:
        print(f"PostgreSQL not reachable ({type(exc).__name__}); skipping it")
        return None
    return str(sa.make_url(POSTGRES_SERVER).set(database=BENCH_DATABASE).render_as_string(False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument(
        "--slack-latency-ms",
        type=float,
        default=0,
        help="how long the fake Slack Web API takes to answer (0: at once, the most work per "
        "second after the acks; Slack's own API takes about 100-300 ms)",
    )
    args = parser.parse_args()

    key = secrets.token_hex(32)
    console = WebhookTarget(key.encode(), name="epr").start()
    fake = FakeSlack(latency=args.slack_latency_ms / 1000).start()
    for i in range(args.requests):
        fake.add_user(SlackUser(f"U0P{i}", f"p{i}@bench.nhs.uk", f"Person {i}", "Analyst"))
    for i in (1, 2):
        fake.add_user(SlackUser(f"U0L{i}", f"lead{i}@bench.nhs.uk", f"Lead {i}", "Lead"))
    work = Path(tempfile.mkdtemp(prefix="wardkey-bench-"))
    (work / "policy.yaml").write_text(policy(args.requests, console.url))
    env = {
        **os.environ,
        "SLACK_BOT_TOKEN": fake.token,
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_API_URL": fake.api_url,
        "WARDKEY_POLICY": str(work / "policy.yaml"),
        "BENCH_EPR_KEY": key,
    }
    stores = {} if args.no_sqlite else {"SQLite": f"sqlite:///{work / 'wardkey.db'}"}
    if not args.no_postgres and (pg := postgres_database()):
        stores["PostgreSQL"] = pg

    results: list[tuple[str, list[float]]] = []
    concurrency, cards = args.concurrency, 0
    port = free_port()
    bare = [sys.executable, "-c", BARE_APP, str(port), str(THREADS)]
    with process(bare, env, port) as url:
        measure(url, fake, 200, args.concurrency, text="help")  # warm up
        results.append(("bare Bolt (ack only)", measure(url, fake, args.requests, concurrency)))
    for store, database in stores.items():
        store_env = {**env, "DATABASE_URL": database}
        subprocess.run([sys.executable, "-m", "app", "db", "upgrade"], env=store_env, check=True)
        port = free_port()
        serve = [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port)]
        with process([*serve, "--threads", str(THREADS)], store_env, port) as url:
            measure(url, fake, 200, args.concurrency, text="help")  # warm up
            results.append(
                (f"wardkey serve, {store}", measure(url, fake, args.requests, concurrency))
            )
            # Let the work after the acks (cards, audit) finish before the next run starts.
            cards += args.requests * 2
            settle(fake, cards)
    print()
    print(
        f"{args.requests} signed /jit request commands, {args.concurrency} at a time, "
        f"{os.cpu_count()} cores, waitress {THREADS} threads, "
        f"fake Slack Web API answering in {args.slack_latency_ms:g} ms"
    )
    print(f"{'app':<28}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}{'p99 ratio':>11}")
    bare_p99 = pct(results[0][1], 99)
    for name, values in results:
        p99 = pct(values, 99)
        print(
            f"{name:<28}{pct(values, 50):>9.1f}{pct(values, 95):>9.1f}{p99:>9.1f}"
            f"{max(values) * 1000:>9.1f}{p99 / bare_p99:>10.2f}x"
        )
    console.stop()
    fake.stop()


if __name__ == "__main__":
    main()
