"""The import graph DESIGN.md draws: the contracts in pyproject.toml ([tool.importlinter]) hold,
every package under app/ is one import-linter can see, and nothing outside the request core
calls the core's private methods."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from app.service import AccessService
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


def test_nothing_outside_the_core_calls_its_private_methods() -> None:
    """Features, Slack, notify and the scheduler use the request core through its public,
    documented methods and app/lifecycle's functions: a private method of AccessService's
    classes named on anything but `self` outside app/service and app/lifecycle is reported."""
    private = {
        name
        for cls in AccessService.__mro__
        if cls.__module__.startswith("app.service.")
        for name in vars(cls)
        if name.startswith("_") and not name.startswith("__")
    }
    core = {ROOT / "app" / "service", ROOT / "app" / "lifecycle"}
    found = []
    for path in sorted((ROOT / "app").rglob("*.py")):
        if core & set(path.parents):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in private
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    assert private  # the names are read from the classes, not listed here
    assert found == []
