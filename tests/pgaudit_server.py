"""A throwaway PostgreSQL server with pgaudit loaded, for the session-recording tests. Loading a
library needs a restart, so the machine's own server is left alone: this one is made with the
machine's `initdb` in a temporary directory and stopped afterwards. `.ci/run` installs Debian's
pgaudit package for the server version it finds."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import IN_CI


@dataclass(frozen=True)
class AuditedServer:
    port: int
    log: Path  # the server's log, where pgaudit writes its AUDIT lines

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _bindir() -> Path | None:
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3])
    )
    return versions[-1].parent if versions else None


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI must run the pgaudit tests: {reason}", pytrace=False)
    pytest.skip(reason)


@contextlib.contextmanager
def audited_server() -> Iterator[AuditedServer]:
    bindir = _bindir()
    if bindir is None:
        _unavailable("no PostgreSQL server binaries under /usr/lib/postgresql")
        return
    if not (bindir.parent / "lib" / "pgaudit.so").exists():
        _unavailable(
            f"pgaudit is not installed for PostgreSQL {bindir.parts[-2]}: "
            f"apt-get install postgresql-{bindir.parts[-2]}-pgaudit (or run .ci/run)"
        )
        return
    # PostgreSQL refuses to run as root: run it as the postgres account where we are root.
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    home = Path(tempfile.mkdtemp(prefix="wardkey-pgaudit-"))
    if as_postgres:
        shutil.chown(home, "postgres", "postgres")
    data, log = home / "data", home / "server.log"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    options = (
        f"-p {port} -k {home} -c listen_addresses=127.0.0.1 "
        "-c shared_preload_libraries=pgaudit -c fsync=off"
    )
    pg_ctl = [*as_postgres, str(bindir / "pg_ctl"), "-D", str(data)]
    subprocess.run(
        [*as_postgres, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [*pg_ctl, "-l", str(log), "-o", options, "-w", "start"], check=True, capture_output=True
    )
    try:
        yield AuditedServer(port, log)
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], check=False, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
