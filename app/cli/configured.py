"""What commands need of a set-up WardKey, each checked with one line saying what is wrong: the
policy WARDKEY_POLICY names (`configured_policy`), the database (`open_database`,
`database_problem`) and, for the long-running processes, the whole runtime (`ready`).

Imported by a command when it runs, never by a group module's top (`app.cli.common`)."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import URL

from app.config import Settings
from app.startup import MISSING, StartupError
from app.store import Database
from app.store.db import configured_database, is_database_error, normalise_url, unreachable
from app.wording import plural

if TYPE_CHECKING:
    from app.policy import Policy
    from app.runtime import Runtime


def configured_policy() -> Policy:
    """The policy WARDKEY_POLICY names, checked, or a StartupError saying what is wrong."""
    from app.policy import PolicyError
    from app.policy_targets import load_policy  # and every adapter, which checks its target

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
    from app.runtime import load_runtime  # everything: Slack, the features, every adapter

    runtime = load_runtime(settings)
    runtime.watch_policy()  # SIGHUP or an edit reloads the policy, checked first
    return runtime


def _policy_problems(settings: Settings) -> list[str]:
    """The policy file: there, valid, and every secret its targets name set."""
    from app.adapters.registry import AdapterConfigError, build_adapters
    from app.policy import PolicyError
    from app.policy_targets import load_policy

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
    return configured_database(settings)


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
    db = configured_database(settings)
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
