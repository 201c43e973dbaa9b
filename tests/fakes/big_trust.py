"""A trust with many staff and one signed-webhook console: the stage for the multi-worker test
and `bench/expiry.py`, where thousands of grants end at once."""

from __future__ import annotations

from pathlib import Path

import yaml

from app.policy import Person

CONSOLE = "epr"
ROLE = "ward-admin"
ENTITLEMENT = "WARD_ADMIN"
KEY_VARIABLE = "EPR_KEY"
APPROVER = Person(slack_user_id="U0BOSS", email="boss@trust.nhs.uk")


def staff(n: int) -> Person:
    return Person(slack_user_id=f"U{n:06d}", email=f"user{n:06d}@trust.nhs.uk")


def account_of(n: int) -> str:
    """The console account of `staff(n)` (the policy maps people by the part before the @)."""
    return f"user{n:06d}"


def write_big_trust(path: Path, console_url: str, people: int) -> None:
    paths = {
        name: {"risk": risk, "approvers": [{"group": "leads"}], "max_duration": "1d"}
        for name, risk in (("clinical", "low"), ("admin", "medium"), ("engineering", "high"))
    }
    paths["breakglass"] = {
        "risk": "critical",
        "max_duration": "1h",
        "reviewers": [{"group": "leads"}],
        "review_within": "1d",
    }
    policy = {
        "version": 1,
        "timezone": "Europe/London",
        "channels": {"security_alerts": "C0SECURITY", "manager_reviews": "C0MANAGERS"},
        "admins": "admins",
        "groups": {
            "admins": [APPROVER.email],
            "leads": [APPROVER.email],
            "staff": [staff(n).email for n in range(people)],
        },
        "paths": paths,
        "targets": {
            CONSOLE: {
                "kind": "webhook",
                "settings": {"url": console_url},
                "insecure": True,  # the stand-in console: plain http on this machine
                "secrets": {"signing_key": KEY_VARIABLE},
                "account": {"template": "{local}"},
                "roles": {
                    ROLE: {"path": "clinical", "entitlement": ENTITLEMENT, "eligible": ["staff"]}
                },
            }
        },
    }
    path.write_text(yaml.safe_dump(policy))
