"""docs/controls.md names, for each control, the tests that prove it and the code that does it:
both must exist, so the mapping an auditor reads cannot silently rot."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import HERE

ROOT = HERE.parent
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::([\w:]+)`")
CODE = re.compile(r"`([^`]+)`")


def defined_tests(path: Path) -> set[str]:
    """`test_x` and `TestClass::test_x` for every test in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            found.add(node.name)
        if isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name.startswith("test_"):
                    found.add(f"{node.name}::{item.name}")
    return found


def test_every_test_named_in_the_controls_mapping_exists() -> None:
    text = (ROOT / "docs" / "controls.md").read_text(encoding="utf-8")
    references = REFERENCE.findall(text)
    assert len(references) >= 19  # at least one per control
    missing = [
        f"{file}::{name}"
        for file, name in references
        if not (ROOT / file).exists() or name not in defined_tests(ROOT / file)
    ]
    assert missing == [], missing


def test_every_control_names_its_frameworks_and_a_test() -> None:
    rows = [
        line
        for line in (ROOT / "docs" / "controls.md").read_text(encoding="utf-8").splitlines()
        if re.match(r"^\| \d+ \|", line)
    ]
    # Numbered 1, 2, 3… in order, so a row dropped by mistake shows (there are 23 today).
    numbers = [int(row.split("|")[1]) for row in rows]
    assert numbers == list(range(1, len(rows) + 1)) and len(rows) >= 23
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 5, row
        assert re.search(r"CSF|800-53|800-207|NHI\d", cells[3]), row
        assert REFERENCE.search(cells[4]), row


def defined_names(path: Path) -> set[str]:
    """Every function, method and class defined in a module, or in any module of a package."""
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
    found: set[str] = set()
    for file in files:
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                found.add(node.name)
    return found


def test_the_code_each_control_names_exists() -> None:
    """The "Where" column: each `app/…` file or package named exists, and each plain name
    written after it (`app/x.py` `function`) is defined there, so code that moved shows here
    and not first to an auditor who goes looking."""
    rows = [
        line
        for line in (ROOT / "docs" / "controls.md").read_text(encoding="utf-8").splitlines()
        if re.match(r"^\| \d+ \|", line)
    ]
    wrong: list[str] = []
    for row in rows:
        number, where = row.strip("|").split("|")[0].strip(), row.strip("|").split("|")[2]
        for part in where.split(";"):
            named = CODE.findall(part)
            if not named or not named[0].startswith("app/"):
                continue  # a command or a class attribute, not a place in the code
            place = ROOT / named[0].rstrip("/")
            if not place.exists():
                wrong.append(f"control {number}: {named[0]} does not exist")
                continue
            defined = defined_names(place)
            wrong += [
                f"control {number}: {name} is not defined in {named[0]}"
                for name in named[1:]
                if re.fullmatch(r"\w+", name) and name not in defined
            ]
    assert wrong == [], wrong
