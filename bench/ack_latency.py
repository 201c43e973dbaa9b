"""How fast `wardkey serve` acknowledges Slack, next to a bare Bolt app that only acks.

Starts, as separate processes served the same way (waitress, same thread count):
  - bare:    a Bolt app whose `/jit` listener only calls ack(), on the HTTP thread as WardKey's
             listeners run (the floor for Bolt + waitress);
  - wardkey: `wardkey serve` on SQLite, and on PostgreSQL when reachable, in each intake mode
             asked for: `local` (serve does the work after its acks and runs the sweeps) and
             `worker` (`serve --no-scheduler` records and acks; a `wardkey worker` process
             does the work and runs the sweeps; it lowers its own priority as shipped,
             WARDKEY_WORKER_NICE=10, unless --worker-nice says otherwise); and, asked for
             by name, `record` (as `worker` with no worker running: the ack path alone, to
             tell its cost from that of sharing the cores with the work).
All talk to the local fake Slack Web API. Then sends N correctly signed `/jit request …`
commands from distinct eligible people (so every one creates a real request, sends approver
cards and writes the audit trail after the ack), C at a time (a closed loop: the app
saturated) or, with --rate, at a steady rate (an open loop), and prints p50/p95/p99 of the time
to the ack for each, the ratio of WardKey to the bare app measured in the same run (first and
last, the lower p99 of the two), what the acks cost (CPU per ack of each process, from /proc),
and the time from each command to its first approver card (so a faster ack cannot hide slower
work). Each app is measured once the machine is quiet (a second at 85% idle, up to 90 s), so
what ran before it is not measured with it.

    python bench/ack_latency.py [--requests 1000] [--concurrency 50] [--rate N] [--no-postgres]
        [--modes local,worker] [--worker-nice N] [--profile DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import secrets
import signal
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

from app.cli.serve import HTTP_THREADS
from app.demo.slack_fake import FakeSlack, SlackUser
from app.demo.webhook_target import WebhookTarget

POSTGRES_SERVER = os.environ.get(
    "WARDKEY_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BENCH_DATABASE = "wardkey_bench_ack"
SECRET = secrets.token_hex(16)

BARE_APP = textwrap.dedent(
    """
    import os, sys
    from slack_bolt import App
    from slack_sdk import WebClient
    from waitress import serve
    client = WebClient(token=os.environ["SLACK_BOT_TOKEN"], base_url=os.environ["SLACK_API_URL"])
    from slack_bolt.adapter.wsgi import SlackRequestHandler
    # As WardKey builds its app (app/slack/app.py): the listener on the HTTP thread.
    app = App(
        client=client,
        signing_secret=os.environ["SLACK_SIGNING_SECRET"],
        process_before_response=True,
    )
    @app.command("/jit")
    def jit(ack):
        ack()
    port, threads = int(sys.argv[1]), int(sys.argv[2])
    serve(SlackRequestHandler(app), host="127.0.0.1", port=port, threads=threads)
    """
)


# Keep-alive connections; prints [user, sent at (time.monotonic, the same clock in every
# process on this machine), seconds to the ack] per request as JSON. Any answer but 200 is an
# error. A closed loop (rate 0): each connection sends its next request as soon as its last
# ack arrives, so the app is saturated. An open loop (`rate` a second): requests are due at
# that steady rate whatever the app does, each sent on the first free connection and timed
# from when it was due, so a wait for a connection counts as the ack's.
LOAD_CLIENT = textwrap.dedent(
    """
    import asyncio, json, sys, time
    spec = json.load(sys.stdin)
    todo = [(user, raw.encode()) for user, raw in spec["raw"]]
    latencies = []
    async def exchange(reader, writer, user, request, due):
        writer.write(request)
        head = await reader.readuntil(b"\\r\\n\\r\\n")
        lines = head.decode().split("\\r\\n")
        length = next(
            int(line.split(":", 1)[1]) for line in lines
            if line.lower().startswith("content-length:")
        )
        await reader.readexactly(length)
        latencies.append([user, due, time.monotonic() - due])
        if lines[0].split()[1] != "200":
            sys.exit(f"answer {lines[0]!r}")
    async def connection():
        reader, writer = await asyncio.open_connection(spec["host"], spec["port"])
        while todo:
            user, request = todo.pop()
            await exchange(reader, writer, user, request, time.monotonic())
        writer.close()
    async def one(free, user, request, due):
        reader, writer = await free.get()
        await exchange(reader, writer, user, request, due)
        free.put_nowait((reader, writer))
    async def open_loop(rate):
        free = asyncio.Queue()
        for _ in range(spec["concurrency"]):
            free.put_nowait(await asyncio.open_connection(spec["host"], spec["port"]))
        began, sent = time.monotonic(), []
        for i, (user, request) in enumerate(todo):
            due = began + i / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            sent.append(asyncio.create_task(one(free, user, request, due)))
        await asyncio.gather(*sent)
    async def main():
        if spec["rate"]:
            await open_loop(spec["rate"])
        else:
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
def process(
    args: list[str], env: dict[str, str], port: int
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
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
        yield url, proc
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


def process_cpu(pid: int) -> float:
    """CPU seconds (user and system) process `pid` has used so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds every core has spent busy so far (not idle, not waiting on I/O)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class Usage:
    """What one measured burst of commands cost: wall time, and CPU time of the process
    that acks, of the worker (if any) and of the whole machine (the load client and
    PostgreSQL included)."""

    seconds: float = 0.0
    acking_cpu: float = 0.0
    worker_cpu: float = 0.0
    machine_cpu: float = 0.0


def measure(
    url: str,
    fake: FakeSlack,
    users: range,
    concurrency: int,
    text: str | None = None,
    pids: tuple[int, int | None] | None = None,
    usage: Usage | None = None,
    rate: float = 0.0,
) -> list[tuple[int, float, float]]:
    """(user, sent at, seconds to the ack) of each signed command, `concurrency` in flight;
    what the burst cost goes in `usage` (`pids`: the process that acks, and the worker).

    The requests are signed beforehand and sent by a small asyncio client in a process of its
    own, so neither the client's work nor the fakes serving the app's calls after the ack (in
    this process) take the interpreter from the timing."""
    verifier = SignatureVerifier(SECRET)
    host, port = url.removeprefix("http://").split(":")
    raw = []
    for user in users:
        body = command_body(user, fake, text)
        ts = str(int(time.time()))
        head = (
            f"POST /slack/events HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"X-Slack-Request-Timestamp: {ts}\r\n"
            f"X-Slack-Signature: {verifier.generate_signature(timestamp=ts, body=body)}\r\n"
            f"Content-Length: {len(body.encode())}\r\n\r\n"
        )
        raw.append((user, head + body))
    spec = json.dumps(
        {"host": host, "port": int(port), "concurrency": concurrency, "raw": raw, "rate": rate}
    )
    acking, work = pids or (None, None)
    began, machine_began = time.monotonic(), machine_busy()
    acking_began, worker_began = _cpu(acking), _cpu(work)
    done = subprocess.run(
        [sys.executable, "-c", LOAD_CLIENT], input=spec, capture_output=True, text=True, check=False
    )
    if usage is not None:
        usage.seconds = time.monotonic() - began
        usage.acking_cpu = _cpu(acking) - acking_began
        usage.worker_cpu = _cpu(work) - worker_began
        usage.machine_cpu = machine_busy() - machine_began
    if done.returncode != 0:
        raise SystemExit(f"load client failed: {done.stderr[-500:]}")
    return [(int(u), float(at), float(took)) for u, at, took in json.loads(done.stdout)]


def _cpu(pid: int | None) -> float:
    return 0.0 if pid is None else process_cpu(pid)


# The card names the requester ("Person 12"), or their e-mail when Slack has no name.
CARD = re.compile(r"^Access request #\d+: .* for (?:Person |p)(\d+)\b")


def settle(fake: FakeSlack, since: int, users: range, timeout: float = 900) -> dict[int, float]:
    """Wait for an approver card of every request (the app's work after the acks is done);
    returns when each user's first card was posted (time.monotonic)."""
    deadline = time.monotonic() + timeout
    first: dict[int, float] = {}
    seen = since
    while True:
        calls = fake.calls[seen:]
        seen += len(calls)
        for call in calls:
            found = CARD.match(str(call.args.get("text", ""))) if call.status == 200 else None
            if found and int(found.group(1)) in users:
                first.setdefault(int(found.group(1)), call.at)
        if len(first) >= len(users):
            return first
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(first)} of {len(users)} requests have a card")
        time.sleep(0.2)


def cpu_idle(seconds: float = 1.0) -> float | None:
    """The share of the machine's CPU time spent idle over `seconds` (None: no /proc/stat)."""

    def sample() -> tuple[int, int] | None:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        return fields[3] + fields[4], sum(fields)  # idle + iowait, all

    first = sample()
    time.sleep(seconds)
    second = sample()
    if first is None or second is None or second[1] == first[1]:
        return None
    return (second[0] - first[0]) / (second[1] - first[1])


def wait_for_quiet(limit_seconds: float = 90, idle: float = 0.85) -> float:
    """Wait until the machine is mostly idle for a second, so what ran before (the last run's
    PostgreSQL work, a worker still finishing) is not measured with the next app; returns
    how long that took."""
    began = time.monotonic()
    while time.monotonic() - began < limit_seconds:
        share = cpu_idle()
        if share is None or share >= idle:
            break
    return time.monotonic() - began


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] * 1000


def postgres_database(name: str) -> str | None:
    """A fresh database for one run (each run's requests are new to it)."""
    try:
        engine = sa.create_engine(POSTGRES_SERVER, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
        engine.dispose()
    except sa.exc.OperationalError as exc:
        print(f"PostgreSQL not reachable ({type(exc).__name__}); skipping it")
        return None
    return str(sa.make_url(POSTGRES_SERVER).set(database=name).render_as_string(False))


@contextlib.contextmanager
def worker(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """`wardkey worker`, running once it has scheduled its sweeps."""
    log = tempfile.NamedTemporaryFile(suffix=".log")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while b"event=intake_following" not in Path(log.name).read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"worker did not start: {Path(log.name).read_text()[-2000:]}")
            time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


@contextlib.contextmanager
def profiling(procs: dict[str, int], profile: Path | None) -> Iterator[None]:
    """While the block runs, sample every thread of each process while it is on the CPU with
    py-spy (pip install py-spy) and write collapsed stacks to profile/<name>.txt."""
    if profile is None:
        yield
        return
    sampler = ["py-spy", "record", "--threads", "--gil", "--nonblocking", "--rate", "500", "-f"]
    spies = [
        subprocess.Popen(
            [*sampler, "raw", "--pid", str(pid), "--output", str(profile / f"{name}.txt")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in procs.items()
    ]
    time.sleep(1)  # attached
    try:
        yield
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for spy in spies:
            spy.wait(timeout=60)


Run = tuple[str, list[tuple[int, float, float]], list[float], Usage]


def run_wardkey(
    name: str,
    env: dict[str, str],
    fake: FakeSlack,
    users: range,
    concurrency: int,
    profile: Path | None,
    worker_nice: int | None = None,
    with_worker: bool = True,
    rate: float = 0.0,
    threads: int = HTTP_THREADS,
) -> Run:
    """Acks of `wardkey serve` (with a worker in worker mode), and command-to-card times
    (none without a worker: `record` mode measures the acks alone)."""
    subprocess.run([sys.executable, "-m", "app", "db", "upgrade"], env=env, check=True)
    port = free_port()
    slug = re.sub(r"[^a-z]+", "-", name.lower()).strip("-")
    serve = [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with contextlib.ExitStack() as stack:
        procs = {}
        worker_pid = None
        if env.get("WARDKEY_INTAKE_WORK") == "worker" and with_worker:
            work = [sys.executable, "-m", "app", "worker"]
            if worker_nice is not None:
                env = {**env, "WARDKEY_WORKER_NICE": str(worker_nice)}
            worker_pid = procs[f"{slug}-worker"] = stack.enter_context(worker(work, env)).pid
        if env.get("WARDKEY_INTAKE_WORK") == "worker":
            # As deployed with workers: the sweeps run there too, none in serve.
            serve.append("--no-scheduler")
        url, served = stack.enter_context(process([*serve, "--threads", str(threads)], env, port))
        procs[slug] = served.pid
        measure(url, fake, range(200), concurrency, text="help")  # warm up
        since = len(fake.calls)
        # Profiled until the work after the acks (cards, audit) is done: what it costs is
        # what the acks compete with on a shared machine.
        usage = Usage()
        with profiling(procs, profile):
            acks = measure(
                url, fake, users, concurrency, pids=(served.pid, worker_pid), usage=usage, rate=rate
            )
            if not with_worker:
                return name, acks, [], usage  # recorded, and nothing takes the work
            cards = settle(fake, since, users)
    sent = {user: at for user, at, _ in acks}
    return name, acks, [cards[user] - sent[user] for user in users], usage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument(
        "--threads",
        type=int,
        default=HTTP_THREADS,
        help=f"waitress threads, the bare app's and serve's (default: serve's, {HTTP_THREADS})",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0,
        help="commands a second, sent on a steady schedule whatever the app does (an open "
        "loop, on up to --concurrency connections); 0, the default: a closed loop, each "
        "connection sending its next command when its last is acked (the app saturated)",
    )
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument(
        "--modes",
        default="local,worker",
        help="intake modes to run wardkey in, comma-separated: local (serve does the work "
        "after its acks), worker (serve records and acks, a wardkey worker does the work), "
        "record (as worker, with no worker running: the ack path alone, for diagnosis)",
    )
    parser.add_argument(
        "--worker-nice",
        type=int,
        default=None,
        help="WARDKEY_WORKER_NICE for the worker (unset: as shipped, 10, so serve's acks come "
        "first on a machine the two share; 0: the same priority as serve)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="run each wardkey process under py-spy (pip install py-spy) and write its "
        "samples (collapsed stacks, every thread) to DIR",
    )
    parser.add_argument(
        "--slack-latency-ms",
        type=float,
        default=0,
        help="how long the fake Slack Web API takes to answer (0: at once, the most work per "
        "second after the acks; Slack's own API takes about 100-300 ms)",
    )
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)

    key = secrets.token_hex(32)
    console = WebhookTarget(key.encode(), name="epr").start()
    fake = FakeSlack(latency=args.slack_latency_ms / 1000).start()
    for i in range(args.requests * len(modes) * 2):
        fake.add_user(SlackUser(f"U0P{i}", f"p{i}@bench.nhs.uk", f"Person {i}", "Analyst"))
    for i in (1, 2):
        fake.add_user(SlackUser(f"U0L{i}", f"lead{i}@bench.nhs.uk", f"Lead {i}", "Lead"))
    work = Path(tempfile.mkdtemp(prefix="wardkey-bench-"))
    (work / "policy.yaml").write_text(policy(args.requests * len(modes) * 2, console.url))
    env = {
        **os.environ,
        "SLACK_BOT_TOKEN": fake.token,
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_API_URL": fake.api_url,
        "WARDKEY_POLICY": str(work / "policy.yaml"),
        "BENCH_EPR_KEY": key,
    }
    runs: list[tuple[str, dict[str, str]]] = []
    for mode in modes:
        if not args.no_sqlite:
            database = f"sqlite:///{work / f'wardkey-{mode}.db'}"
            runs.append((f"wardkey {mode}, SQLite", {"DATABASE_URL": database}))
        if not args.no_postgres and (pg := postgres_database(f"{BENCH_DATABASE}_{mode}")):
            runs.append((f"wardkey {mode}, PostgreSQL", {"DATABASE_URL": pg}))
        for _, extra in runs[-2:]:
            # `record`: serve records and acks as in worker mode, and no worker runs.
            extra.setdefault("WARDKEY_INTAKE_WORK", "worker" if mode == "record" else mode)

    concurrency = args.concurrency

    def run_bare(name: str) -> Run:
        port = free_port()
        bare = [sys.executable, "-c", BARE_APP, str(port), str(args.threads)]
        with process(bare, env, port) as (url, proc):
            measure(url, fake, range(200), concurrency, text="help")  # warm up
            waited["before " + name] = wait_for_quiet()
            usage = Usage()
            acks = measure(
                url,
                fake,
                range(args.requests),
                concurrency,
                pids=(proc.pid, None),
                usage=usage,
                rate=args.rate,
            )
            return name, acks, [], usage

    # The bare app is measured first and last, each time on a quiet machine: its tail moves
    # with whatever ran just before, and the ratios are taken against the lower of its two
    # p99s, the stricter.
    waited: dict[str, float] = {}
    results: list[Run] = [run_bare("bare Bolt (ack only)")]
    for i, (name, extra) in enumerate(runs):
        users = range(i * args.requests, (i + 1) * args.requests)
        run_env = {**env, **extra}
        waited["before " + name] = wait_for_quiet()
        with_worker = not name.startswith("wardkey record")
        results.append(
            run_wardkey(
                name,
                run_env,
                fake,
                users,
                concurrency,
                args.profile,
                args.worker_nice,
                with_worker,
                args.rate,
                args.threads,
            )
        )
    results.append(run_bare("bare Bolt, again"))
    report(args, results, waited)
    console.stop()
    fake.stop()


def report(args: argparse.Namespace, results: list[Run], waited: dict[str, float]) -> None:
    print()
    load = (
        f"{args.rate:g} a second on up to {args.concurrency} connections (open loop)"
        if args.rate
        else f"{args.concurrency} at a time (closed loop)"
    )
    print(
        f"{args.requests} signed /jit request commands, {load}, {os.cpu_count()} cores, "
        f"waitress {args.threads} threads, fake Slack Web API answering in "
        f"{args.slack_latency_ms:g} ms"
    )
    print("waited for a quiet machine (s): " + ", ".join(f"{v:.1f} {k}" for k, v in waited.items()))
    bares = [results[0], results[-1]]
    bare_p99 = min(pct([took for _, _, took in acks], 99) for _, acks, _, _ in bares)
    print("time to the ack (ratios against the lower of the bare app's two p99s):")
    print(f"{'app':<30}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}{'p99 ratio':>11}")
    for name, acks, _, _ in results:
        values = [took for _, _, took in acks]
        p99 = pct(values, 99)
        print(
            f"{name:<30}{pct(values, 50):>9.1f}{pct(values, 95):>9.1f}{p99:>9.1f}"
            f"{max(values) * 1000:>9.1f}{p99 / bare_p99:>10.2f}x"
        )
    # In a closed loop (no --rate) each connection sends its next command when the last is
    # acked, so the acks' times follow from how many the app gets through a second, and that
    # from what each costs where it queues (an app's CPU per ack is the interpreter's).
    print("CPU per ack while the commands were sent (serve: the process that acks; worker:")
    print("the work after the acks; machine: all of it, the load client and PostgreSQL too):")
    print(f"{'app':<30}{'acks/s':>9}{'serve ms':>10}{'worker ms':>11}{'machine ms':>12}")
    for name, acks, _, usage in results:
        print(
            f"{name:<30}{len(acks) / usage.seconds:>9.0f}"
            f"{usage.acking_cpu * 1000 / len(acks):>10.2f}"
            f"{usage.worker_cpu * 1000 / len(acks):>11.2f}"
            f"{usage.machine_cpu * 1000 / len(acks):>12.2f}"
        )
    print("time from the command to its first approver card (the work after the ack):")
    print(f"{'app':<30}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}{'all done s':>11}")
    for name, acks, e2e, _ in results[1:-1]:
        if not e2e:
            continue  # `record` mode: no work was done
        first_sent = min(at for _, at, _ in acks)
        last_card = max(at + took for (_, at, _), took in zip(sorted(acks), e2e, strict=True))
        print(
            f"{name:<30}{pct(e2e, 50):>9.1f}{pct(e2e, 95):>9.1f}{pct(e2e, 99):>9.1f}"
            f"{max(e2e) * 1000:>9.1f}{last_card - first_sent:>11.2f}"
        )


if __name__ == "__main__":
    main()
