"""A minimal trust with one target, for adapter tests that run the whole lifecycle against a
real (or stand-in) target: Amira asks, Ben or Gita approves."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from app.access import AccessService
from app.adapters.base import Adapter
from app.clock import ManualClock
from app.lifecycle.deps import CoreDeps
from app.policy import Person, parse_policy
from app.store import Database
from tests.conftest import NIGHT_SHIFT

AMIRA = Person(slack_user_id="U0AMIRA", email="amira@ward.nhs.uk")
BEN = Person(slack_user_id="U0BEN", email="ben@ward.nhs.uk")

TRUST: dict[str, Any] = {
    "version": 1,
    "timezone": "Europe/London",
    "channels": {"security_alerts": "C0SEC", "manager_reviews": "C0MGR"},
    "admins": "admins",
    "groups": {
        "admins": ["ben@ward.nhs.uk", "gita@ward.nhs.uk"],
        "staff": ["amira@ward.nhs.uk"],
    },
    "paths": {
        "clinical": {"risk": "low", "approvers": [{"group": "admins"}], "max_duration": "2h"},
        "admin": {"risk": "medium", "approvers": [{"group": "admins"}], "max_duration": "2h"},
        "engineering": {"risk": "high", "approvers": [{"group": "admins"}], "max_duration": "2h"},
        "breakglass": {
            "risk": "critical",
            "max_duration": "1h",
            "reviewers": [{"group": "admins"}],
            "review_within": "24h",
        },
    },
}


def one_target_service(
    tmp_path: Path,
    sqlite_template: Path,
    name: str,
    target: dict[str, Any],
    adapter: Adapter,
) -> tuple[AccessService, dict[str, Adapter], ManualClock]:
    """The service over a fresh SQLite copy, with `target` as the trust's only target. The
    adapters mapping is returned so a test can swap in a broken one."""
    policy = parse_policy(yaml.safe_dump({**TRUST, "targets": {name: target}}))
    shutil.copy(sqlite_template, tmp_path / "wardkey.db")
    db = Database(f"sqlite:///{tmp_path / 'wardkey.db'}")
    clock = ManualClock(NIGHT_SHIFT)
    adapters: dict[str, Adapter] = {name: adapter}
    service = AccessService(CoreDeps(db, policy, adapters, clock, pause=lambda _: None))
    return service, adapters, clock


def role(path: str, entitlement: str) -> Mapping[str, Any]:
    return {"path": path, "entitlement": entitlement, "eligible": ["staff"]}
