"""The import graph DESIGN.md draws: the contracts in pyproject.toml ([tool.importlinter]) hold,
every package under app/ is one import-linter can see, no first-level package of app imports its
way back to itself, and nothing outside the request core calls the core's private methods."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp

from app.access import AccessService
from app.breakglass.service import BreakGlass
from app.grants.service import Grants
from app.lifecycle.deps import CoreDeps
from app.lifecycle.reads import Reads
from app.requests.service import Requests
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
    documented methods and app/lifecycle's functions: a private method of the core's classes
    (AccessService, its dependencies and its parts) named on anything but `self` outside the
    modules of those classes, app/requests/tickets.py and app/lifecycle is reported (the jobs,
    flows and listeners beside a part in its feature package are outside it)."""
    parts = (AccessService, CoreDeps, Reads, Grants, Requests, BreakGlass)
    modules = {part.__module__ for part in parts}
    private = {
        name
        for part in parts
        for cls in part.__mro__
        if cls.__module__ in modules
        for name in vars(cls)
        if name.startswith("_") and not name.startswith("__")
    }
    core_files = {ROOT / Path(*module.split(".")).with_suffix(".py") for module in modules} | {
        ROOT / "app" / "requests" / "tickets.py"
    }
    assert all(path.exists() for path in core_files), core_files
    found = []
    for path in sorted((ROOT / "app").rglob("*.py")):
        if path in core_files or ROOT / "app" / "lifecycle" in path.parents:
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


def package_imports() -> dict[str, set[str]]:
    """app.X -> the app.Y it imports (directly, in any module), X != Y."""
    graph = grimp.build_graph("app")
    imports: dict[str, set[str]] = {}
    for module in graph.modules:
        package = ".".join(module.split(".")[:2])
        for imported in graph.find_modules_directly_imported_by(module):
            other = ".".join(imported.split(".")[:2])
            if other != package and other != "app":
                imports.setdefault(package, set()).add(other)
    return imports


def cycles(imports: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one package (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(package: str) -> None:
        index[package] = low[package] = len(index)
        stack.append(package)
        for other in sorted(imports.get(package, ())):
            if other not in index:
                visit(other)
                low[package] = min(low[package], low[other])
            elif other in stack:
                low[package] = min(low[package], index[other])
        if low[package] == index[package]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == package:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for package in sorted(set(imports) | {o for others in imports.values() for o in others}):
        if package not in index:
            visit(package)
    return found


def test_no_package_imports_its_way_back_to_itself() -> None:
    imports = package_imports()
    found = cycles(imports)
    assert found == [], {
        " <-> ".join(component): {
            package: sorted(other for other in imports.get(package, ()) if other in component)
            for package in component
        }
        for component in found
    }


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The check above would pass vacuously if `cycles` missed one."""
    assert cycles(
        {"app.a": {"app.b"}, "app.b": {"app.c"}, "app.c": {"app.a"}, "app.d": {"app.a"}}
    ) == [["app.a", "app.b", "app.c"]]
