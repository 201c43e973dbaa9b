"""WardKey as a trust installs it: `python -m build` makes the sdist and, from it, the wheel; the
wheel goes into a fresh virtual environment outside the checkout with its real dependencies
(from PyPI or pip's cache), and the commands the container and the units run work from there,
in a working directory outside the checkout. This catches a migration, template or data file
that the source tree has and the package does not."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.demo.slack_fake import FakeSlack
from tests.conftest import HERE, IN_CI

ROOT = HERE.parent
# Nothing only the developers need may come with `pip install wardkey`.
DEV_ONLY = {
    "pytest",
    "pytest-xdist",
    "hypothesis",
    "ruff",
    "mypy",
    "types-pyyaml",
    "fhir-resources",
    "trustme",
    "websockets",
    "build",
    "kubernetes-validate",
}


@dataclass
class Installed:
    wheel: Path
    sdist: Path
    venv: Path
    work: Path  # a working directory outside the checkout

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def env(self, **more: str) -> dict[str, str]:
        keep = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SLACK_", "WARDKEY_", "DATABASE_URL", "PYTHON", "VIRTUAL_ENV"))
        }
        return {**keep, "PATH": f"{self.venv / 'bin'}:{keep.get('PATH', '')}", **more}

    def run(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.bin("wardkey"), *args],
            cwd=self.work,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def tools_missing(what: str) -> None:
    """Fail in CI, where the packaging must be proved; skip with the reason elsewhere."""
    reason = f"{what}; install the dev extras (pip install -e '.[dev]') or run .ci/run"
    if IN_CI:
        pytest.fail(f"CI must build and install the package: {reason}", pytrace=False)
    pytest.skip(reason)


def _timed(label: str, timings: dict[str, float], command: list[str], **kw: object) -> str:
    began = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, **kw)  # type: ignore[call-overload]
    timings[label] = time.monotonic() - began
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}"
    return str(done.stdout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    try:
        import build  # noqa: F401
    except ImportError:
        tools_missing("the `build` package is not installed")
    base = tmp_path_factory.mktemp("packaging")
    assert not base.resolve().is_relative_to(ROOT.resolve()), "the install must be elsewhere"
    dist, venv, work = base / "dist", base / "venv", base / "work"
    work.mkdir()
    timings: dict[str, float] = {}
    # The sdist, then the wheel built from the sdist (what `python -m build` does by default),
    # so a file the sdist leaves out is missing from the wheel too.
    _timed("build", timings, [sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)])
    (wheel,) = dist.glob("wardkey-*.whl")
    (sdist,) = dist.glob("wardkey-*.tar.gz")
    # A venv with no pip of its own; this pip installs into it, with its cache.
    _timed("venv", timings, [sys.executable, "-m", "venv", "--without-pip", str(venv)])
    _timed(
        "install",
        timings,
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            str(wheel),
        ],
    )
    print("\npackaging: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    return Installed(wheel, sdist, venv, work)


def test_the_wheel_carries_the_migrations_and_data_and_nothing_of_the_tests(
    installed: Installed,
) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    migrations = sorted((ROOT / "app" / "store" / "migrations").rglob("*.py"))
    assert migrations
    for path in [*migrations, ROOT / "app/store/migrations/script.py.mako"]:
        assert path.relative_to(ROOT).as_posix() in names, path
    assert "app/demo/demo_policy.yaml" in names
    assert "app/demo/clinical_roster.csv" in names
    assert not [n for n in names if n.startswith("tests/")]
    assert any(n.endswith(".dist-info/entry_points.txt") for n in names)
    (license_file,) = [n for n in names if n.rsplit("/", 1)[-1] == "LICENSE"]
    assert "Apache License" in zipfile.ZipFile(installed.wheel).read(license_file).decode()

    with tarfile.open(installed.sdist) as archive:
        sdist = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    for needed in [
        "LICENSE",
        "README.md",
        "manifests/policy.example.yaml",
        "manifests/slack-app.yaml",
        "deploy/docker/Dockerfile",
        "deploy/kubernetes/base/kustomization.yaml",
        "deploy/systemd/wardkey-web.service",
        "tests/data/ward_policy.yaml",
        "app/store/migrations/script.py.mako",
    ]:
        assert needed in sdist, needed


def test_the_base_install_has_no_dev_dependencies(installed: Installed) -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", installed.bin("python"), "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
    )
    names = {
        p["name"].lower().replace("_", "-").replace(".", "-") for p in json.loads(listed.stdout)
    }
    assert {"slack-bolt", "sqlalchemy", "alembic", "psycopg", "waitress"} <= names
    assert not names & DEV_ONLY, names & DEV_ONLY
    # ...and the package it runs is the installed one, not the checkout.
    where = subprocess.run(
        [installed.bin("python"), "-c", "import app; print(app.__file__)"],
        cwd=installed.work,
        env=installed.env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(installed.venv), where


def test_db_upgrade_and_the_demo_run_from_the_wheel(installed: Installed) -> None:
    version = installed.run("--version")
    assert version.returncode == 0 and version.stdout.startswith("wardkey "), version
    database = installed.work / "wardkey.db"
    began = time.monotonic()
    upgraded = installed.run("db", "upgrade", DATABASE_URL=f"sqlite:///{database}")
    upgrade_seconds = time.monotonic() - began
    assert upgraded.returncode == 0, upgraded.stderr
    assert "is up to date" in upgraded.stdout
    heads = [p.stem.split("_")[0] for p in (ROOT / "app/store/migrations/versions").glob("*.py")]
    with sqlite3.connect(database) as conn:
        (revision,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert revision == max(heads), (revision, heads)
    assert {"access_requests", "audit_events", "outbox"} <= tables

    began = time.monotonic()
    demo = installed.run("demo")
    demo_seconds = time.monotonic() - began
    assert demo.returncode == 0, demo.stderr
    assert "EPR console: gave amira WARD_ADMIN" in demo.stdout
    assert "Audit trail: OK" in demo.stdout
    print(f"\nfrom the wheel: db upgrade {upgrade_seconds:.1f}s, demo {demo_seconds:.1f}s")


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    fake = FakeSlack().start()
    yield fake
    fake.stop()


def test_the_containers_commands_run_from_the_wheel(
    installed: Installed, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    """What the image runs (deploy/docker/Dockerfile): `serve --no-scheduler` answers the
    image's HEALTHCHECK (`python -m app.healthcheck`), a `worker` schedules its sweeps, and the
    health check fails once serve is gone."""
    from tests.processes import free_port

    database = f"sqlite:///{tmp_path / 'wardkey.db'}"
    assert installed.run("db", "upgrade", DATABASE_URL=database).returncode == 0
    port = free_port()
    env = installed.env(
        DATABASE_URL=database,
        WARDKEY_POLICY=str(HERE / "data" / "ward_policy.yaml"),
        PHARMACY_DB_PASSWORD="not-used-here",
        DIRECTORY_PASSWORD="not-used-here",
        SLACK_BOT_TOKEN=fake_slack.token,
        SLACK_SIGNING_SECRET="s" * 32,
        SLACK_API_URL=fake_slack.api_url,
        PORT=str(port),
    )
    logs = {name: tmp_path / f"{name}.log" for name in ("serve", "worker")}
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, args in (("serve", ["serve", "--no-scheduler"]), ("worker", ["worker"])):
            with logs[name].open("wb") as out:
                processes[name] = subprocess.Popen(
                    [installed.bin("wardkey"), *args],
                    cwd=installed.work,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert processes["serve"].poll() is None, logs["serve"].read_text()
            assert time.monotonic() < deadline, logs["serve"].read_text()
            time.sleep(0.1)
        health = subprocess.run(
            [installed.bin("python"), "-m", "app.healthcheck"],
            cwd=installed.work,
            env=env,
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert health.returncode == 0, health.stderr
        assert "answered 200" in health.stdout
        while "event=sweeps_scheduled" not in logs["worker"].read_text():
            assert processes["worker"].poll() is None, logs["worker"].read_text()
            assert time.monotonic() < deadline, logs["worker"].read_text()
            time.sleep(0.1)
    finally:
        for process in processes.values():
            process.terminate()
            process.wait(timeout=10)
    gone = subprocess.run(
        [installed.bin("python"), "-m", "app.healthcheck"],
        env=env,
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert gone.returncode == 1
    assert "did not answer" in gone.stderr
    for name, log in logs.items():
        assert "Traceback" not in log.read_text(), (name, log.read_text())
