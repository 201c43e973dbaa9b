"""`wardkey demo`: one night shift end to end, with a local fake Slack."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import TextIO

from app.cli.common import Commands


def add_commands(commands: Commands) -> None:
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


def _demo(args: argparse.Namespace) -> int:
    from app.demo.run import DemoFailed, run_demo

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


DEMO_DATABASE = "wardkey-demo.db"  # the name app/demo/run.py gives it
DEMO_POLICY = "policy.yaml"


def _say_what_was_kept(folder: Path, out: TextIO) -> None:
    """Where the kept demo is, and the exact commands that look at it."""
    from app.demo.run import demo_policy_text, write_demo_roster

    policy = folder / DEMO_POLICY
    # The demo's policy as it ran, its rota read from the roster export copied beside it.
    text = demo_policy_text("http://127.0.0.1:1/wardkey", write_demo_roster(folder))
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
