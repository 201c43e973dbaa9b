"""No dead code under app/: vulture finds nothing there that app/, bench/ or tests/ never use,
beyond what [tool.vulture] in pyproject.toml names as called by a framework (with why)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import HERE

ROOT = HERE.parent


def test_vulture_finds_no_dead_code_in_app() -> None:
    beside = Path(sys.executable).with_name("vulture")
    command = str(beside) if beside.exists() else shutil.which("vulture")
    assert command, "vulture is not installed: pip install -e '.[dev]'"
    done = subprocess.run([command], cwd=ROOT, capture_output=True, text=True, timeout=120)
    # (Its findings in tests/ are fixtures and the like, which pytest calls by name.)
    dead = [line for line in done.stdout.splitlines() if line.startswith("app/")]
    assert dead == [], "\n".join(dead)
    assert not done.stderr, done.stderr
