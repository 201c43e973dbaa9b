"""What the command groups share: start-up problems as one line (`starting`), the database and
policy of a set-up WardKey, and the start-up checks of the long-running processes."""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

from slack_bolt.error import BoltError
from sqlalchemy.engine import URL

from app.clock import Clock, SystemClock
from app.config import Settings
from app.policy import Policy, PolicyError
from app.policy_targets import load_policy
from app.runtime import MISSING, Runtime, StartupError, database, load_runtime
from app.store import Database
from app.store.db import is_database_error, normalise_url, unreachable
from app.wording import plural

# The `wardkey` command's subcommands, to which each group adds its own.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def starting(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
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


# After SIGTERM and the clean-up, how long work still running may go on before the process ends.
STOP_SECONDS = 2.0


def stop_on_sigterm(what: str, stop: Callable[[], None] | None = None) -> None:
    """Kubernetes and systemd stop a process with SIGTERM, which by default ends it on the
    spot. Ended cleanly instead, so the `finally` blocks run (the inbox's last beat, the
    outbox's messages in flight): `stop` is called on a thread of its own (never in the
    handler, which may have interrupted code holding a lock), or, without one, SystemExit is
    raised in the main thread as Ctrl-C would (waitress then finishes the requests it is
    answering). Nothing depends on it: claims lapse and are taken over."""

    def on_sigterm(_signum: int, _frame: object) -> None:
        logging.getLogger("app.cli").warning("event=stopping signal=SIGTERM process=%s", what)
        if stop is None:
            raise SystemExit(0)
        threading.Thread(target=stop, name="stopping", daemon=True).start()

    signal.signal(signal.SIGTERM, on_sigterm)


def end_within(seconds: float) -> None:
    """After a clean stop: work still running on other threads (a sweep's call to a target
    that hangs) has `seconds` to finish, then the process ends anyway, as SIGKILL would have
    ended it; that work's claims lapse and another process takes it over."""

    def end() -> None:
        logging.getLogger("app.cli").warning("event=stopped_with_work_running")
        logging.shutdown()
        os._exit(0)

    timer = threading.Timer(seconds, end)
    timer.daemon = True  # an exit that comes sooner does not wait for it
    timer.start()


def clock_of(args: argparse.Namespace) -> Clock:
    """Tests put a ManualClock on the parsed arguments; from the command line it is the system's."""
    clock: Clock | None = getattr(args, "clock", None)
    return clock or SystemClock()


def write_output(text: str, output: Path | None) -> int:
    """`text` to the --output file, else to standard output; 2 when the file cannot be written."""
    if output is None:
        sys.stdout.write(text)
        return 0
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"wardkey: cannot write {output}: {exc.strerror}", file=sys.stderr)
        return 2
    return 0


def configured_policy() -> Policy:
    """The policy WARDKEY_POLICY names, checked, or a StartupError saying what is wrong."""
    settings = Settings()
    try:
        return load_policy(settings.wardkey_policy)
    except (PolicyError, OSError) as exc:
        raise StartupError(
            f"WARDKEY_POLICY: cannot load {settings.wardkey_policy}: {exc}"
        ) from None


def ready(*needed: str) -> Runtime:
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
            f"WARDKEY_POLICY: {place} has {plural(len(exc.issues), 'problem')}, the first: "
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


def open_database() -> Database:
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
