"""`wardkey db upgrade`: the database schema."""

from __future__ import annotations

import argparse

from app.cli.common import Commands, starting
from app.startup import StartupError


def add_commands(commands: Commands) -> None:
    db = commands.add_parser("db", help="the database schema").add_subparsers(metavar="ACTION")
    db.add_parser("upgrade", help="apply migrations to DATABASE_URL").set_defaults(run=_upgrade)


@starting
def _upgrade(_args: argparse.Namespace) -> int:
    from app.cli.configured import database_problem
    from app.config import Settings
    from app.store import Database, upgrade

    settings = Settings()
    # Fails in seconds, in one line, where the migration tool would wait for ever.
    problem = database_problem(settings, creating=True)
    if problem is not None:
        raise StartupError(problem)
    upgrade(settings.database_url)
    print(f"database at {Database(settings.database_url).url.render_as_string()} is up to date")
    return 0
