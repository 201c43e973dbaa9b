"""The import graph DESIGN.md draws: the contracts in pyproject.toml ([tool.importlinter]) hold,
and every package under app/ is one import-linter can see."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.conftest import HERE

ROOT = HERE.parent
# Alembic loads its folder by path; it is not a package of the app.
MIGRATIONS = ROOT / "app" / "store" / "migrations"
NOT_PACKAGES = {MIGRATIONS, MIGRATIONS / "versions"}


def lint_imports() -> str:
    beside = Path(sys.executable).with_name("lint-imports")
    command = str(beside) if beside.exists() else shutil.which("lint-imports")
    assert command, "lint-imports is not installed: pip install -e '.[dev]'"
    done = subprocess.run(
        [command, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_every_import_contract_is_kept() -> None:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
        "contracts"
    ]
    out = lint_imports()
    for contract in contracts:
        assert f"{contract['name']} KEPT" in out, out
    assert f"Contracts: {len(contracts)} kept, 0 broken." in out, out


def test_every_folder_of_code_under_app_is_a_package() -> None:
    """A folder without __init__.py is a namespace package, which import-linter does not see:
    imports through it would escape every contract (app/notify was one)."""
    folders = {path.parent for path in (ROOT / "app").rglob("*.py")} - NOT_PACKAGES
    missing = sorted(
        str(folder.relative_to(ROOT)) for folder in folders if not (folder / "__init__.py").exists()
    )
    assert missing == []
