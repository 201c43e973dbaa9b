"""`wardkey` loads what a command runs, when it runs it: the help, `policy check`, `policy schema`
and a start-up problem answer without loading Slack, the store or the scheduler (a `wardkey
--help` that took three seconds was one of them). Each group module imports only
app/cli/common.py at its top; its commands import the rest (app/cli/configured.py for a set-up
WardKey). Pinned by what a fresh process has imported, never by how long it took."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app import audit
from app.cli.audit import EXPORT_FORMATS
from tests.conftest import HERE

WARD_POLICY = HERE / "data" / "ward_policy.yaml"

# Slack, the store and its migrations, the scheduler and the web server: what only a running
# WardKey (serve, socket, worker) or a command that opens the database needs.
SLACK_STORE_SCHEDULER = (
    "slack_bolt",
    "slack_sdk",
    "sqlalchemy",
    "alembic",
    "apscheduler",
    "waitress",
    "app.runtime",
    "app.store",
    "app.notify",
    "app.listeners",
    "app.access",
    "app.web",
)
# ...and what checking a policy needs: its model (pydantic, YAML) and every adapter's settings
# (ldap3, psycopg, httpx), and the settings from the environment.
POLICY_AND_SETTINGS = (
    "pydantic",
    "pydantic_settings",
    "yaml",
    "ldap3",
    "psycopg",
    "httpx",
    "app.policy",
    "app.policy_targets",
    "app.adapters",
    "app.config",
)

# Runs in a fresh interpreter: the modules it has imported after building the parser or running
# one command, as JSON on the last line of standard output.
PROBE = """
import contextlib, io, json, sys
from app.cli import build_parser, main
argv = json.loads(sys.argv[1])
if argv is None:
    build_parser()
else:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        print(main(argv), file=sys.__stderr__)
print(json.dumps(sorted(sys.modules)))
"""


def imported(argv: list[str] | None, tmp_path: Path) -> tuple[set[str], str]:
    """Every module a fresh `wardkey` has imported once `argv` ran (None: the parser built),
    and what it wrote to standard error (the exit code)."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLACK_", "WARDKEY_", "DATABASE_URL"))
    }
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argv)],
        env={**clean, "PYTHONPATH": str(HERE.parent)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.splitlines()[-1])), result.stderr.strip()


def loaded(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    """Which of `packages` (or anything inside them) were imported."""
    return sorted(p for p in packages if any(m == p or m.startswith(p + ".") for m in modules))


class TestWhatACommandLoads:
    def test_building_the_parser_loads_only_the_command_line(self, tmp_path: Path) -> None:
        modules, _ = imported(None, tmp_path)
        assert loaded(modules, SLACK_STORE_SCHEDULER + POLICY_AND_SETTINGS) == []
        wardkey = {m for m in modules if m.startswith("app.") and not m.startswith("app.cli.")}
        assert wardkey <= {"app.cli", "app.clock", "app.startup", "app.wording"}

    @pytest.mark.parametrize(
        "argv",
        [["policy", "check", str(WARD_POLICY)], ["policy", "schema"]],
        ids=["policy check", "policy schema"],
    )
    def test_policy_commands_load_neither_slack_nor_the_store(
        self, argv: list[str], tmp_path: Path
    ) -> None:
        modules, code = imported(argv, tmp_path)
        assert code == "0"
        assert loaded(modules, SLACK_STORE_SCHEDULER) == []

    @pytest.mark.parametrize("command", ["serve", "socket", "worker"])
    def test_a_missing_setting_is_said_before_slack_is_loaded(
        self, command: str, tmp_path: Path
    ) -> None:
        modules, code = imported([command], tmp_path)
        assert code == "2"  # SLACK_BOT_TOKEN, the policy file and the database
        # The start-up checks read the policy (and its adapters) and the database's schema.
        assert loaded(modules, SLACK_STORE_SCHEDULER) == ["alembic", "app.store", "sqlalchemy"]

    def test_the_export_formats_in_the_help_are_the_audit_trails(self) -> None:
        assert EXPORT_FORMATS == audit.FORMATS
