"""`wardkey …` (also `python -m app …`): the operator's commands."""

from __future__ import annotations

import argparse
import io
import logging
import os
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from apscheduler.schedulers.base import BaseScheduler
from slack_bolt import App
from slack_bolt.error import BoltError
from sqlalchemy.engine import URL

from app import __version__, audit
from app.clock import SystemClock
from app.config import Settings
from app.policy import Person, Policy, PolicyError, format_duration, load_policy
from app.policy.checks import policy_warnings
from app.policy.rules import approvers_at
from app.runtime import MISSING, Runtime, StartupError, database, load_runtime
from app.scheduler import guarded, schedule
from app.store import Database, upgrade
from app.store.db import is_database_error, normalise_url, unreachable
from app.web import CATCHING_UP, Readiness, WardKeyWSGI


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
        stream=sys.stderr,
    )
    # APScheduler logs two lines per run of each job, and the expiry sweep runs every second.
    logging.getLogger("apscheduler.executors").setLevel(logging.WARNING)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        code: int = args.run(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`wardkey audit export | head -3`): stop quietly, as other
        # command-line tools do, and say by the exit code that the output was cut short.
        _quiet_stdout()
        return BROKEN_PIPE
    return code


BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a tool that a closed pipe stopped


def _quiet_stdout() -> None:
    """Point standard output at /dev/null, so Python's flush at exit finds no closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass  # not a real file (a test's capture): nothing will be flushed at exit


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wardkey", description="Just-in-time privileged access for hospital teams."
    )
    parser.add_argument("--version", action="version", version=f"wardkey {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    policy = commands.add_parser(
        "policy", help="check a policy manifest, or print its JSON Schema"
    ).add_subparsers(metavar="ACTION")
    check = policy.add_parser(
        "check",
        help="validate a manifest and print a summary",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit codes:\n"
        "  0  the manifest is valid (and with --slack, everyone it names is a usable account)\n"
        "  1  problems found: each is listed with its place and line\n"
        "  2  --slack could not ask Slack (token, address, scopes)",
    )
    check.add_argument("file", type=Path, help="the policy manifest (YAML) to check")
    check.add_argument(
        "--slack",
        action="store_true",
        help="also look up every person the policy names in Slack (SLACK_BOT_TOKEN, "
        "SLACK_API_URL) and report the unknown, deactivated, guest and bot accounts",
    )
    check.set_defaults(run=_policy_check)
    schema = policy.add_parser(
        "schema",
        help="print the manifest's JSON Schema, for editors that check policy.yaml as you type",
    )
    schema.add_argument("--output", type=Path, help="file to write (default: standard output)")
    schema.set_defaults(run=_policy_schema)

    db = commands.add_parser("db", help="the database schema").add_subparsers(metavar="ACTION")
    db.add_parser("upgrade", help="apply migrations to DATABASE_URL").set_defaults(run=_db_upgrade)

    trail = commands.add_parser("audit", help="the audit trail").add_subparsers(metavar="ACTION")
    verify = trail.add_parser("verify", help="recompute the hash chain; name the first break")
    verify.add_argument(
        "--checkpoint",
        type=Path,
        help="a checkpoint file from `audit checkpoint`, or the directory of scheduled ones "
        "(the valid one with the highest sequence number is used; default "
        "WARDKEY_CHECKPOINT_DIR): finds a cut-off tail; signatures are checked with "
        "WARDKEY_CHECKPOINT_KEY",
    )
    verify.set_defaults(run=_audit_verify)
    export = trail.add_parser(
        "export", help="write events for a SIEM (jsonl), a spreadsheet (csv) or FHIR (fhir)"
    )
    export.add_argument(
        "--format",
        choices=list(audit.FORMATS),
        default="jsonl",
        help="jsonl: one event per line; csv: a header and one row per event; fhir: FHIR R4 "
        "AuditEvent resources as NDJSON",
    )
    export.add_argument("--since", type=_instant, help="only events at or after (ISO 8601)")
    export.add_argument("--output", type=Path, help="file to write (default: standard output)")
    export.set_defaults(run=_audit_export)
    checkpoint = trail.add_parser(
        "checkpoint", help="print the chain head (sequence and hash) to keep off this machine"
    )
    checkpoint.add_argument("--output", type=Path, help="file to write (default: standard output)")
    checkpoint.set_defaults(run=_audit_checkpoint)
    serve = commands.add_parser("serve", help="the HTTP app for Slack, with the scheduler")
    serve.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("PORT", "3000")),
        help="TCP port to listen on (default: $PORT, else 3000)",
    )
    serve.add_argument(
        "--host", default="0.0.0.0", help="address to listen on (default: every interface)"
    )
    serve.add_argument(
        "--threads", type=int, default=8, help="threads answering HTTP requests (default: 8)"
    )
    serve.add_argument(
        "--no-scheduler", action="store_true", help="run the sweeps elsewhere (wardkey worker)"
    )
    serve.set_defaults(run=_serve)
    socket = commands.add_parser("socket", help="the app over Socket Mode (no public URL)")
    socket.add_argument(
        "--no-scheduler", action="store_true", help="run the sweeps elsewhere (wardkey worker)"
    )
    socket.set_defaults(run=_socket)
    commands.add_parser(
        "worker", help="the sweeps and the work handed over by serve, without a web server"
    ).set_defaults(run=_worker)

    revoke = commands.add_parser("revoke", help="failed revokes").add_subparsers(metavar="ACTION")
    resolve = revoke.add_parser(
        "resolve", help="an admin confirms a failed revoke's access is gone from the target"
    )
    resolve.add_argument("request_id", type=int, help="the request's number (#N)")
    resolve.add_argument("note", help="what you checked or did on the target")
    resolve.add_argument("--by", required=True, metavar="EMAIL", help="your e-mail (an admin)")
    resolve.set_defaults(run=_revoke_resolve)

    report = commands.add_parser("report", help="governance reports").add_subparsers(
        metavar="REPORT"
    )
    standing = report.add_parser(
        "standing",
        help="who holds access on each target without an active grant (standing privilege)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit codes:\n"
        "  0  every target was read (now, or with --no-look within the last two hours)\n"
        "  3  some targets were not checked: they are named, with their last full read;\n"
        "     the report says nothing about them\n"
        "  2  cannot start (settings, policy, database)",
    )
    standing.add_argument(
        "--no-look",
        action="store_true",
        help="print what the last look found, without reading the targets now",
    )
    standing.add_argument(
        "--format",
        choices=["text", "csv"],
        default="text",
        help="text: per target and entitlement, with the targets read and not checked; csv: "
        "one row per account (targets not checked go to standard error)",
    )
    standing.set_defaults(run=_report_standing)

    demo = commands.add_parser(
        "demo", help="one night shift end to end, with a local fake Slack; prints the transcript"
    )
    demo.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="keep the demo's database and policy in DIR, and print the commands to explore them",
    )
    demo.set_defaults(run=_demo)
    return parser


def _demo(args: argparse.Namespace) -> int:
    from app.devtools.demo import DemoFailed, run_demo

    # The transcript is the output; the app's own log lines would only get in its way. The
    # levels are put back afterwards, for callers that run the demo inside their own process.
    quieted = {"": logging.ERROR, "waitress": logging.CRITICAL}
    before = {name: logging.getLogger(name).level for name in quieted}
    for name, level in quieted.items():
        logging.getLogger(name).setLevel(level)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    try:
        run_demo(sys.stdout, args.keep)
    except DemoFailed as exc:
        print(f"wardkey demo: the scenario went wrong: {exc}", file=sys.stderr)
        return 1
    finally:
        for name, level in before.items():
            logging.getLogger(name).setLevel(level)
    if args.keep is not None:
        _say_what_was_kept(args.keep.resolve(), sys.stdout)
    return 0


DEMO_DATABASE = "wardkey-demo.db"  # the name app/devtools/demo.py gives it
DEMO_POLICY = "policy.yaml"


def _say_what_was_kept(folder: Path, out: TextIO) -> None:
    """Where the kept demo is, and the exact commands that look at it."""
    from importlib import resources

    policy = folder / DEMO_POLICY
    text = resources.files("app.devtools").joinpath("demo_policy.yaml").read_text("utf-8")
    policy.write_text(text, encoding="utf-8")
    database = folder / DEMO_DATABASE
    url = f"sqlite:///{database}"
    q = shlex.quote
    print(
        f"""
── Kept ──────────────────────────────────────────────────────────────────
   Database: {database} (SQLite)
   Policy:   {policy} (the demo's; the stand-in EPR console it names has stopped)
   Explore them (from any folder):
     export DATABASE_URL={q(url)} WARDKEY_POLICY={q(str(policy))}
     wardkey audit verify
     wardkey audit export --format csv
     wardkey policy check {q(str(policy))}
     sqlite3 {q(str(database))} 'SELECT id, state, requester, target, role FROM access_requests'
""".rstrip("\n")
        + "\n",
        file=out,
    )


def _instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not an ISO 8601 time, e.g. 2026-11-01T00:00Z"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _starting(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Start-up problems become one line saying what to set, not a traceback."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except StartupError as exc:
            print(f"wardkey: {exc}", file=sys.stderr)
            return 2
        except BoltError as exc:
            print(f"wardkey: Slack refused to start the app: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:
            if not is_database_error(exc):
                raise
            # One line, within the connect time-out, not a traceback or a hang.
            print(f"wardkey: {database_unreachable(Settings().database_url, exc)}", file=sys.stderr)
            return 2

    return wrapped


def _policy() -> Policy:
    settings = Settings()
    try:
        return load_policy(settings.wardkey_policy)
    except (PolicyError, OSError) as exc:
        raise StartupError(
            f"WARDKEY_POLICY: cannot load {settings.wardkey_policy}: {exc}"
        ) from None


@_starting
def _revoke_resolve(args: argparse.Namespace) -> int:
    from app.service import AccessService, ServiceError

    # No adapter is called: the person says the access is gone; the audit trail keeps their word.
    service = AccessService(_database(), _policy(), {})
    try:
        view = service.resolve_revoke_failure(args.request_id, Person(email=args.by), args.note)
    except ServiceError as exc:
        print(f"wardkey: {exc.message}", file=sys.stderr)
        return 1
    print(f"#{view.id} {view.target}:{view.role} is now {view.state.value}, resolved by {args.by}")
    return 0


@_starting
def _report_standing(args: argparse.Namespace) -> int:
    """Per target and entitlement, the accounts holding access with no active grant: read from
    the targets now (and recorded, as the hourly check does), or as last recorded. Never says
    clean for a target it did not read: those are named, with their last full read."""
    from app.adapters.registry import AdapterConfigError, build_adapters
    from app.service import AccessService
    from app.service.standing import STANDING_EVERY, write_csv

    policy = _policy()
    try:
        adapters = {} if args.no_look else build_adapters(policy)
    except AdapterConfigError as exc:
        raise StartupError(str(exc)) from None
    clock = getattr(args, "clock", None) or SystemClock()
    service = AccessService(_database(), policy, adapters, clock)
    why_not: dict[str, str] = {}
    if not args.no_look:
        looked = service.find_standing()
        for target in policy.targets:
            if target not in adapters:
                why_not[target] = "WardKey has no way to read this kind of target"
            elif target in looked.unreadable:
                why_not[target] = f"could not read it now ({looked.unreadable[target]})"
    last = service.standing_looks()
    now = clock.now()
    for target, at in last.items():
        if target not in why_not and (at is None or now - at > 2 * STANDING_EVERY):
            # --no-look: a look older than two hourly checks is no evidence of now
            why_not[target] = "no recent look" if at is not None else "never read"
    holders = service.standing_holders()
    zone = policy.zone

    def when(at: datetime | None) -> str:
        return f"{at.astimezone(zone):%Y-%m-%d %H:%M}" if at is not None else "never"

    unchecked = [
        f"{target}: not checked: {why}; last full read {when(last.get(target))}"
        for target, why in sorted(why_not.items())
    ]
    checked = sorted(t for t in policy.targets if t not in why_not)
    if args.format == "csv":
        write_csv(holders, sys.stdout)
        for line in unchecked:  # standard output stays CSV; the exit code says it is partial
            print(f"wardkey: {line}", file=sys.stderr)
        return STANDING_PARTIAL if unchecked else 0
    current = None
    for h in holders:
        if (h.target, h.entitlement) != current:
            current = (h.target, h.entitlement)
            print(f"{h.target}  {h.entitlement}")
        print(
            f"    {h.account:<32} since {h.first_seen.astimezone(zone):%Y-%m-%d %H:%M}, "
            f"seen {h.last_seen.astimezone(zone):%Y-%m-%d %H:%M}"
        )
    if holders:
        print(f"{len(holders)} account(s) hold access without a WardKey grant.")
    elif not unchecked:
        print("No standing access: every account holding access on a target has a grant.")
    elif checked:
        print(f"No standing access on the targets checked ({', '.join(checked)}).")
    if checked:
        print(
            "Targets read: "
            + ", ".join(f"{t} ({when(last.get(t))})" for t in checked)
            + f" (times in {policy.timezone})"
        )
    if unchecked:
        print(f"NOT CHECKED: {_count(len(unchecked), 'target')}; nothing is known of them:")
        for line in unchecked:
            print(f"    {line}")
    return STANDING_PARTIAL if unchecked else 0


STANDING_PARTIAL = 3  # as audit verify: nothing more was found, but not everything was checked


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


CONNECTION_LIMIT = 500  # well under the usual 1,024 open files per process
IDLE_CONNECTION_SECONDS = 15


@_starting
def _serve(args: argparse.Namespace) -> int:
    from waitress import serve

    from app.web import METRICS_OFF

    runtime = _ready("slack_bot_token", "slack_signing_secret")
    settings = runtime.settings
    wsgi = WardKeyWSGI(
        _bolt(runtime),
        runtime.service.db,
        settings.slack_signing_secret or "",
        settings.wardkey_metrics_token,
        intake_work=settings.wardkey_intake_work,
        metrics_public=settings.wardkey_metrics_public,
        max_body_bytes=settings.wardkey_max_body_bytes,
    )
    if not settings.wardkey_metrics_token and not settings.wardkey_metrics_public:
        logging.getLogger("app.web").warning("event=metrics_off %s", METRICS_OFF)
    _say_intake_work(settings.wardkey_intake_work)
    # Catch-up runs beside the server: /healthz answers at once, /readyz says "catching up".
    scheduler = None if args.no_scheduler else _background_sweeps(runtime, wsgi.readiness)
    try:
        # waitress buffers a body before the app sees it: it must refuse big ones itself.
        serve(
            wsgi,
            host=args.host,
            port=args.port,
            threads=args.threads,
            ident="wardkey",
            max_request_body_size=settings.wardkey_max_body_bytes,
            # A client that sends half a request holds a connection, not a thread: allow many
            # (waitress's 100 let 110 slow clients shut out Slack and /healthz) and drop the
            # idle ones sooner. Behind a buffering proxy this never comes up (see README).
            connection_limit=CONNECTION_LIMIT,
            channel_timeout=IDLE_CONNECTION_SECONDS,
        )
    finally:
        if scheduler is not None:
            scheduler.shutdown(wait=False)
    return 0


@_starting
def _socket(args: argparse.Namespace) -> int:
    from app.slack.intake import Intake
    from app.slack.socket_intake import RecordingSocketModeHandler

    runtime = _ready("slack_bot_token", "slack_app_token")
    app = _bolt(runtime, socket_mode=True)
    scheduler = None if args.no_scheduler else _background_sweeps(runtime)
    work = runtime.settings.wardkey_intake_work
    inbox = Intake(runtime.service.db, runtime.service.clock, hand_off=work == "worker")
    _say_intake_work(work)
    try:
        # Each envelope is recorded in the inbox before it is acknowledged, as over HTTP.
        RecordingSocketModeHandler(app, runtime.settings.slack_app_token or "", inbox).start()  # type: ignore[no-untyped-call]
    finally:
        if scheduler is not None:
            scheduler.shutdown(wait=False)
    return 0


def _ready(*needed: str) -> Runtime:
    """The runtime, once everything it needs is there; else every problem, one line each, so
    an operator fixes them in one go rather than one per start."""
    settings = Settings()
    problems = [MISSING[name] for name in needed if not getattr(settings, name)]
    if bool(settings.wardkey_checkpoint_dir) != bool(settings.wardkey_checkpoint_key):
        problems.append(
            "WARDKEY_CHECKPOINT_DIR and WARDKEY_CHECKPOINT_KEY go together: set both to write "
            "signed audit checkpoints, or neither"
        )
    problems += _policy_problems(settings)
    database = database_problem(settings)
    if database is not None:
        problems.append(database)
    if len(problems) == 1:
        raise StartupError(problems[0])
    if problems:
        raise StartupError(
            f"{len(problems)} things to fix before WardKey can start:\n"
            + "\n".join(f"wardkey: {p}" for p in problems)
        )
    runtime = load_runtime(settings)
    runtime.watch_policy()  # SIGHUP or an edit reloads the policy, checked first
    return runtime


def _policy_problems(settings: Settings) -> list[str]:
    """The policy file: there, valid, and every secret its targets name set."""
    from app.adapters.registry import AdapterConfigError, build_adapters

    place = settings.wardkey_policy
    if not os.path.exists(place):
        return [
            f"WARDKEY_POLICY: no policy file at {place}; start from manifests/policy.example.yaml"
        ]
    try:
        policy = load_policy(place)
    except PolicyError as exc:
        return [
            f"WARDKEY_POLICY: {place} has {_count(len(exc.issues), 'problem')}, the first: "
            f"{exc.issues[0]}; run `wardkey policy check {place}`"
        ]
    found = []
    registry = logging.getLogger("app.adapters.registry")
    quiet, registry.disabled = registry.disabled, True  # start-up logs these once, later
    try:
        for name, target in policy.targets.items():
            try:
                build_adapters(policy.model_copy(update={"targets": {name: target}}))
            except AdapterConfigError as exc:
                found.append(str(exc))
    finally:
        registry.disabled = quiet
    return found


def _bolt(runtime: Runtime, socket_mode: bool = False) -> App:
    """The Bolt app, which asks Slack who its token is (auth.test) first: if Slack does not
    answer, one line saying where WardKey asked and what to check."""
    sdk = logging.getLogger("slack_sdk.web.base_client")
    level = sdk.level
    sdk.setLevel(logging.CRITICAL)  # its line per failed try would bury the one below
    try:
        return runtime.bolt(socket_mode=socket_mode)
    except OSError as exc:  # urllib's URLError, a time-out, a refused connection
        url = runtime.client.base_url + "auth.test"
        reason = getattr(exc, "reason", None) or exc
        raise StartupError(
            f"Slack did not answer at {url} ({reason}); check SLACK_API_URL (unset, it is "
            "Slack's own https://slack.com/api/) and that this machine can reach it: a "
            "firewall, or a proxy to set in HTTPS_PROXY"
        ) from None
    finally:
        sdk.setLevel(level)


def _say_intake_work(work: str) -> None:
    """Say once, at start, who does the work after the acks."""
    if work == "worker":
        logging.getLogger("app.slack.intake").info(
            "event=intake_work where=worker what=this process records and acknowledges; run "
            "`wardkey worker` to do the work (with the sweeps on, a request no worker takes "
            "within 10 s is done here)"
        )


@_starting
def _worker(_args: argparse.Namespace) -> int:
    from apscheduler.schedulers.blocking import BlockingScheduler

    runtime = _ready("slack_bot_token")
    runtime.redelivery().follow()  # takes each request serve hands over, as it comes
    _start_sweeps(runtime, BlockingScheduler(timezone="UTC"))
    return 0


def _background_sweeps(runtime: Runtime, readiness: Readiness | None = None) -> BaseScheduler:
    from apscheduler.schedulers.background import BackgroundScheduler

    return _start_sweeps(runtime, BackgroundScheduler(timezone="UTC"), readiness)


def _start_sweeps(
    runtime: Runtime, scheduler: BaseScheduler, readiness: Readiness | None = None
) -> BaseScheduler:
    """Tick, and catch up (reconcile, then expire) as the first job, beside the ticks and the
    server, so nothing waits for it; `readiness` says "catching up" until it is done. A
    blocking scheduler runs here."""
    sweeps = runtime.sweeps()
    settings = runtime.settings
    schedule(
        scheduler,
        sweeps,
        settings.wardkey_sweep_seconds,
        expiry_seconds=settings.wardkey_expiry_sweep_seconds,
        checkpoint_seconds=settings.wardkey_checkpoint_seconds,
        takeover_seconds=settings.wardkey_takeover_seconds,
        probe_seconds=settings.wardkey_probe_seconds,
    )
    if readiness is not None:
        readiness.waiting_for(CATCHING_UP)
    catch_up = guarded(sweeps, "catch_up", sweeps.catch_up)

    def catch_up_then_ready() -> None:
        try:
            catch_up()
        finally:  # failed or not, the sweeps that tick now do the same work
            if readiness is not None:
                readiness.done(CATCHING_UP)

    scheduler.add_job(catch_up_then_ready, id="catch_up", misfire_grace_time=None)
    scheduler.start()
    return scheduler


def _database() -> Database:
    """The database of a set-up WardKey, or a StartupError saying what to run first. A SQLite
    file that is not there is never created here (only `db upgrade` creates one)."""
    settings = Settings()
    problem = database_problem(settings)
    if problem is not None:
        raise StartupError(problem)
    return database(settings)


def database_problem(settings: Settings, *, creating: bool = False) -> str | None:
    """What keeps WardKey from using DATABASE_URL, in one line, or None. `creating`: for
    `db upgrade`, which may create the database's tables (and a SQLite file)."""
    from sqlalchemy import inspect, text

    url = normalise_url(settings.database_url)
    where = url.render_as_string()
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        path = Path(url.database or "")
        if not creating and not path.exists():
            return (
                f"DATABASE_URL: there is no database at {path.absolute()}; create it with "
                "`wardkey db upgrade`, or point DATABASE_URL at yours"
            )
        if creating and not path.parent.exists():
            return f"DATABASE_URL: there is no folder {path.parent} for the database {path.name}"
    db = database(settings)
    try:
        with db.engine.connect() as conn:
            if creating:
                conn.execute(text("SELECT 1"))
                return None
            if not inspect(conn).has_table("alembic_version"):
                return (
                    f"DATABASE_URL: the database at {where} has no WardKey tables; create them "
                    "with `wardkey db upgrade`"
                )
            found = set(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
    except Exception as exc:
        if not is_database_error(exc):
            raise
        return database_unreachable(url, exc)
    finally:
        db.dispose()
    return _schema_behind(where, url, found)


def _schema_behind(where: str, url: URL, found: set[str]) -> str | None:
    from alembic.script import ScriptDirectory

    from app.store.migrate import alembic_config

    scripts = ScriptDirectory.from_config(alembic_config(url))
    head = scripts.get_current_head()
    if found == {head}:
        return None
    known = {revision.revision for revision in scripts.walk_revisions()}
    if found - known:
        return (
            f"DATABASE_URL: the database at {where} was set up by a newer WardKey (schema "
            f"{', '.join(sorted(found - known))}); run that version"
        )
    return (
        f"DATABASE_URL: the database at {where} has an older schema "
        f"({', '.join(sorted(found)) or 'none'}, this WardKey needs {head}); run `wardkey db "
        "upgrade`"
    )


def database_unreachable(url: str | URL, exc: BaseException) -> str:
    """One line for an operator: which database, what went wrong, what to do."""
    parsed = normalise_url(url)
    said = str(getattr(exc, "orig", None) or exc)
    server = f"the PostgreSQL server at {parsed.host or 'localhost'}:{parsed.port or 5432}"
    missing = re.search(r'database "([^"]+)" does not exist', said)
    if missing:
        name = missing.group(1)
        return (
            f"DATABASE_URL: {server} has no database '{name}'; create it (createdb {name}, or "
            f"CREATE DATABASE {name}) or correct the name in DATABASE_URL"
        )
    refused = re.search(r'(password authentication failed|role "[^"]+" does not exist)', said)
    if refused:
        return (
            f"DATABASE_URL: {server} refused the login for user '{parsed.username}' "
            f"({refused.group(1)}); check the user and password in DATABASE_URL"
        )
    return f"DATABASE_URL: {unreachable(parsed, exc)}"


def _policy_check(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.file)
    except PolicyError as exc:
        print(f"{exc.source}: {len(exc.issues)} problem(s)", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        if not exc.complete:
            print(
                "Names, caps and approval rules are checked once these are fixed.", file=sys.stderr
            )
        return 1
    for issue in policy_warnings(policy):
        print(f"warning: {issue}", file=sys.stderr)
    print("OK")
    print_summary(policy, sys.stdout)
    if args.slack:
        return _people_in_slack(policy, args.file)
    return 0


def _people_in_slack(policy: Policy, file: Path) -> int:
    """`policy check --slack`: everyone the policy names, looked up in Slack; each unusable
    account at its place in the file. 0: all usable; 1: some are not; 2: Slack not asked."""
    from app.policy.loader import LineIndex
    from app.cli.policy_slack import SlackCheckError, check_people
    from app.slack.app import web_client
    from app.slack.people import Workspace

    settings = Settings()
    if not settings.slack_bot_token:
        print(f"wardkey: {MISSING['slack_bot_token']}", file=sys.stderr)
        return 2
    client = web_client(settings.slack_bot_token, settings.slack_api_url)
    workspace = Workspace.configured(settings.slack_team_ids, settings.slack_enterprise_id)
    sdk = logging.getLogger("slack_sdk")
    level = sdk.level
    sdk.setLevel(logging.CRITICAL)  # a line per retried call would bury the answer
    try:
        found = check_people(policy, client, workspace)
    except SlackCheckError as exc:
        print(f"wardkey: {exc}", file=sys.stderr)
        return 2
    finally:
        sdk.setLevel(level)
    lines = LineIndex.of(file.read_text(encoding="utf-8"))
    people = _count(found.looked_up, "account")
    if not found.problems and not found.nobody_left:
        print(f"Slack: all {people} the policy names are active people of this workspace.")
        return 0
    print(f"Slack: {people} looked up; {len(found.problems)} cannot use WardKey (below).")
    print(
        f"{file}: {_count(len(found.problems), 'account')} WardKey cannot act for", file=sys.stderr
    )
    for problem in found.problems:
        for place in problem.places:
            where = ".".join(str(part) for part in place.loc)
            print(
                f"  {where}: {problem.member} {problem.problem} (line {lines.key_line(place.loc)})",
                file=sys.stderr,
            )
    for loc, paths in found.nobody_left.items():
        kind = "group" if loc[0] == "groups" else "rota"
        relies = f"; {', '.join(paths)} would find no approver from it" if paths else ""
        print(
            f"  {'.'.join(map(str, loc))}: nobody in this {kind} can act in Slack{relies} "
            f"(line {lines.key_line(loc)})",
            file=sys.stderr,
        )
    return 1


def _policy_schema(args: argparse.Namespace) -> int:
    import json

    from app.policy.model import policy_schema

    text = json.dumps(policy_schema(), indent=2, ensure_ascii=False) + "\n"
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        args.output.write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"wardkey: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
        return 2
    return 0


def print_summary(policy: Policy, out: TextIO) -> None:
    now = SystemClock().now()
    print(f"{policy.organisation or 'Policy'} ({policy.timezone})", file=out)
    print(
        f"  {len(policy.groups)} groups, {len(policy.oncall)} rotas, {len(policy.targets)} "
        f"targets, {sum(len(t.roles) for t in policy.targets.values())} roles, "
        f"{len(policy.identities)} service accounts, {len(policy.vendors)} vendors",
        file=out,
    )
    print("  paths:", file=out)
    for name, path in policy.paths.items():
        who = ", ".join(
            f"group {s.group}" if s.group else f"rota {s.rota}"
            for s in (path.approvers or path.reviewers)
        )
        rule = (
            f"reviewed by {who} within {format_duration(path.review_within)}"
            if path.review_within
            else f"{path.approvals} of {who}"
        )
        ticket = ", ticket" if path.ticket_required else ""
        print(
            f"    {name:<12} {path.risk:<8} max {format_duration(path.max_duration):<6} "
            f"{rule}{ticket}",
            file=out,
        )
    print("  targets:", file=out)
    for name, target in policy.targets.items():
        roles = ", ".join(
            f"{r}→{role.path}{' (break-glass)' if role.break_glass else ''}"
            for r, role in target.roles.items()
        )
        print(f"    {name:<20} {target.kind:<8} {roles}", file=out)
    if policy.oncall:
        print("  on call now:", file=out)
        for name in policy.paths:
            people = approvers_at(policy, name, now)
            if people and any(s.rota for s in policy.paths[name].approvers):
                print(f"    {name:<12} {', '.join(people)}", file=out)
    for name, vendor in policy.vendors.items():
        print(f"  vendor {name}: {vendor.company}, contract ends {vendor.contract_end}", file=out)


@_starting
def _db_upgrade(_args: argparse.Namespace) -> int:
    settings = Settings()
    # Fails in seconds, in one line, where the migration tool would wait for ever.
    problem = database_problem(settings, creating=True)
    if problem is not None:
        raise StartupError(problem)
    upgrade(settings.database_url)
    print(f"database at {Database(settings.database_url).url.render_as_string()} is up to date")
    return 0


@_starting
def _audit_verify(args: argparse.Namespace) -> int:
    """Exit 0 when everything checked holds, 1 when tampering is found (chain, tail or a
    checkpoint file), 3 when nothing is found but a cut tail cannot be ruled out (no or stale
    checkpoint), 2 when it cannot start."""
    from datetime import timedelta

    settings = Settings()
    place = args.checkpoint
    if place is None and settings.wardkey_checkpoint_dir:
        place = Path(settings.wardkey_checkpoint_dir)  # the scheduled ones, where configured
    key = settings.wardkey_checkpoint_key
    # Tests put a ManualClock on the parsed arguments; from the command line it is the system's.
    clock = getattr(args, "clock", None) or SystemClock()
    try:
        report = audit.check_trail(
            _database(),
            checkpoints=place,
            key=key.encode() if key else None,
            clock=clock,
            every=timedelta(seconds=settings.wardkey_checkpoint_seconds),
        )
    except audit.CheckpointSetupError as exc:
        print(f"wardkey: {exc}", file=sys.stderr)
        return 2
    print(report.text())
    return report.exit_code


@_starting
def _audit_export(args: argparse.Namespace) -> int:
    db = _database()
    try:
        if args.output is None:
            count = audit.export(db, sys.stdout, args.format, since=args.since)
        else:
            with args.output.open("w", encoding="utf-8", newline="") as out:
                count = audit.export(db, out, args.format, since=args.since)
    except audit.ExportError as exc:  # a corrupt event: say which, and that verify names it
        print(f"wardkey: {exc}", file=sys.stderr)
        return 1
    print(f"exported {count} events", file=sys.stderr)
    return 0


@_starting
def _audit_checkpoint(args: argparse.Namespace) -> int:
    key = Settings().wardkey_checkpoint_key
    clock = getattr(args, "clock", None) or SystemClock()
    checkpoint = audit.current_checkpoint(_database(), key.encode() if key else None, clock)
    if checkpoint is None:
        print("the audit trail is empty; nothing to checkpoint", file=sys.stderr)
        return 1
    text = checkpoint.to_json() + "\n"
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        args.output.write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"wardkey: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
        return 2
    return 0
