"""What the IT lead sees when something is not right at the command line: one line saying what
and what to do, and an exit code; never a traceback, never a database created by a mistake."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from app import audit
from app.cli import build_parser, main
from app.demo.slack_fake import FakeSlack
from app.store import Database, upgrade
from tests.conftest import HERE, NIGHT_SHIFT, POSTGRES_URL, TEST_SCHEMA, postgres_unreachable

WARD_POLICY = HERE / "data" / "ward_policy.yaml"


def wardkey(
    args: list[str], env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The whole of standard error, which must be one line and no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLACK_", "WARDKEY_", "DATABASE_URL"))
    }
    return {**clean, "PYTHONPATH": str(HERE.parent), "WARDKEY_POLICY": str(WARD_POLICY)}


@pytest.fixture
def upgraded(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'wardkey.db'}"
    upgrade(url)
    return url


class TestAuditCommands:
    def test_verify_before_db_upgrade_says_so_and_creates_nothing(
        self, env: dict[str, str], tmp_path: Path
    ) -> None:
        result = wardkey(["audit", "verify"], env, cwd=tmp_path)
        assert result.returncode == 2
        assert one_line(result) == (
            f"wardkey: DATABASE_URL: there is no database at {tmp_path / 'wardkey.db'}; create "
            "it with `wardkey db upgrade`, or point DATABASE_URL at yours"
        )
        assert list(tmp_path.iterdir()) == []  # no empty database left behind

        assert wardkey(["db", "upgrade"], env, cwd=tmp_path).returncode == 0
        assert wardkey(["audit", "verify"], env, cwd=tmp_path).returncode == 0

    def test_verify_against_an_older_schema_asks_for_the_upgrade(
        self, env: dict[str, str], tmp_path: Path
    ) -> None:
        url = f"sqlite:///{tmp_path / 'old.db'}"
        upgrade(url, "0008")
        result = wardkey(["audit", "export"], {**env, "DATABASE_URL": url})
        assert result.returncode == 2
        line = one_line(result)
        assert "has an older schema (0008, this WardKey needs" in line
        assert line.endswith("run `wardkey db upgrade`")

    def test_a_missing_checkpoint_is_one_line(self, env: dict[str, str], upgraded: str) -> None:
        result = wardkey(
            ["audit", "verify", "--checkpoint", "/nonexistent"], env | {"DATABASE_URL": upgraded}
        )
        assert result.returncode == 2
        assert one_line(result).startswith("wardkey: no checkpoint at /nonexistent")

    def test_export_into_a_pipe_closed_early_stops_quietly(
        self, env: dict[str, str], upgraded: str
    ) -> None:
        db = Database(upgraded)
        with db.transaction() as session:
            for i in range(3000):  # far more than a pipe holds
                audit.append(
                    session,
                    at=NIGHT_SHIFT + timedelta(seconds=i),
                    action="request.created",
                    actor="amira@ward.nhs.uk",
                    data={"n": i, "reason": "fix stuck order set on ward 12"},
                )
        db.dispose()
        # As `wardkey audit export | head -3`: the reader takes three lines and goes away.
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "audit", "export"],
            env={**env, "DATABASE_URL": upgraded},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None and process.stderr is not None
        lines = [process.stdout.readline() for _ in range(3)]
        process.stdout.close()
        err = process.stderr.read()
        assert process.wait(timeout=60) == 141  # cut short, as a shell reports SIGPIPE
        assert all('"request.created"' in line for line in lines)
        assert err == ""  # no traceback, no "Exception ignored", no "exported N events"


@pytest.mark.postgres
class TestPostgres:
    @pytest.fixture
    def empty_schema(self) -> Iterator[str]:
        schema = f"{TEST_SCHEMA}_cli_empty"
        admin = sa.create_engine(sa.make_url(POSTGRES_URL).set(drivername="postgresql+psycopg"))
        try:
            with admin.begin() as conn:
                conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
                conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
        except sa.exc.OperationalError as exc:
            postgres_unreachable(exc)
        url = sa.make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        admin.dispose()

    def test_a_database_that_does_not_exist_is_named_with_what_to_do(
        self, env: dict[str, str]
    ) -> None:
        url = sa.make_url(POSTGRES_URL).set(database="wardkey_no_such_db")
        result = wardkey(["audit", "verify"], {**env, "DATABASE_URL": url.render_as_string(False)})
        assert result.returncode == 2
        line = one_line(result)
        assert "has no database 'wardkey_no_such_db'" in line
        assert "createdb wardkey_no_such_db" in line

    def test_a_database_without_tables_asks_for_db_upgrade(
        self, env: dict[str, str], empty_schema: str
    ) -> None:
        result = wardkey(["audit", "verify"], {**env, "DATABASE_URL": empty_schema})
        assert result.returncode == 2
        assert one_line(result).endswith(
            "has no WardKey tables; create them with `wardkey db upgrade`"
        )
        assert wardkey(["db", "upgrade"], {**env, "DATABASE_URL": empty_schema}).returncode == 0
        assert wardkey(["audit", "verify"], {**env, "DATABASE_URL": empty_schema}).returncode == 0


class TestServeStartup:
    def test_every_missing_setting_is_reported_at_once(
        self, env: dict[str, str], tmp_path: Path
    ) -> None:
        result = wardkey(["serve"], env, cwd=tmp_path)
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert lines[0] == "wardkey: 5 things to fix before WardKey can start:"
        assert len(lines) == 6 and all(line.startswith("wardkey: ") for line in lines)
        said = "\n".join(lines)
        for what in (
            "SLACK_BOT_TOKEN is not set",
            "SLACK_SIGNING_SECRET is not set",
            "set the environment variable PHARMACY_DB_PASSWORD",
            "set the environment variable DIRECTORY_PASSWORD",
            "DATABASE_URL: there is no database at",
        ):
            assert what in said
        assert list(tmp_path.iterdir()) == []

    def test_slack_not_answering_is_one_line_naming_the_address(
        self, env: dict[str, str], upgraded: str
    ) -> None:
        gone = FakeSlack().start()
        api_url = gone.api_url
        gone.stop()  # nothing listens there any more
        result = wardkey(
            ["serve", "--port", "0"],
            {
                **env,
                "DATABASE_URL": upgraded,
                "SLACK_BOT_TOKEN": "xoxb-1",
                "SLACK_SIGNING_SECRET": "s",
                "SLACK_API_URL": api_url,
                "PHARMACY_DB_PASSWORD": "not-used-here",
                "DIRECTORY_PASSWORD": "not-used-here",
            },
        )
        assert result.returncode == 2
        assert "Traceback" not in result.stderr and "urllib" not in result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith(f"wardkey: Slack did not answer at {api_url}auth.test (")
        assert "check SLACK_API_URL" in last
        assert "slack_sdk" not in result.stderr  # its line per failed try is kept out


def every_parser(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield parser.prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from every_parser(child)


class TestHelp:
    def test_every_command_and_option_says_what_it_is_for(self) -> None:
        undocumented = []
        for prog, parser in every_parser(build_parser()):
            for action in parser._actions:
                if isinstance(action, argparse._SubParsersAction):
                    named = {choice.dest for choice in action._choices_actions}
                    undocumented += [
                        f"{prog} {c.dest}" for c in action._choices_actions if not c.help
                    ]
                    undocumented += [f"{prog} {n}" for n in action.choices if n not in named]
                elif not action.help or action.help == argparse.SUPPRESS:
                    undocumented.append(f"{prog} {'/'.join(action.option_strings) or action.dest}")
        assert undocumented == []

    def test_help_runs_for_every_command(self, capsys: pytest.CaptureFixture[str]) -> None:
        for prog, _ in every_parser(build_parser()):
            with pytest.raises(SystemExit) as done:
                main([*prog.split()[1:], "--help"])
            assert done.value.code == 0
        assert "usage: wardkey" in capsys.readouterr().out


class TestDemoKeep:
    def test_says_where_it_put_things_and_the_commands_work(
        self,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        kept = tmp_path / "kept demo"
        assert main(["demo", "--keep", str(kept)]) == 0
        out = capsys.readouterr().out
        tail = out[out.index("── Kept ─") :]
        database, policy = kept / "wardkey-demo.db", kept / "policy.yaml"
        assert f"Database: {database} (SQLite)" in tail
        assert f"Policy:   {policy}" in tail
        assert database.exists() and policy.exists()
        assert f"export DATABASE_URL='sqlite:///{database}' WARDKEY_POLICY='{policy}'" in tail

        # The printed commands, run as printed.
        monkeypatch.setenv("DATABASE_URL", f"sqlite:///{database}")
        monkeypatch.setenv("WARDKEY_POLICY", str(policy))
        commands = [
            shlex.split(line)[1:]
            for line in tail.splitlines()
            if line.strip().startswith("wardkey ")
        ]
        assert [c[:2] for c in commands] == [
            ["audit", "verify"],
            ["audit", "export"],
            ["policy", "check"],
        ]
        for command in commands:
            assert main(command) == 0, command
        out = capsys.readouterr().out
        assert "OK: " in out  # audit verify
        assert "\nOK\n" in out  # policy check
