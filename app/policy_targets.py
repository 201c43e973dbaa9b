"""The policy as a running WardKey loads it: the manifest's own checks (`app.policy`, pure) and,
for every target, its adapter's (`app.adapters.registry`): settings of the shape its kind
takes, no credential in them, and no plaintext or unverified connection unless the target is
marked `insecure: true` (a test system, warned about by `policy_warnings`).

`wardkey policy check`, start-up and policy reload load the policy from here; `app.policy`
itself imports no adapter (DESIGN: checks that need an adapter's settings model are composed
above it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from app.adapters.registry import connection_problems, settings_problems
from app.oncall import with_sources
from app.policy import Policy, PolicyIssue
from app.policy import load_policy as load_manifest
from app.policy import parse_policy as parse_manifest
from app.policy.checks import Location
from app.policy.model import Target


def target_problems(target: Target) -> Iterator[tuple[Location, str]]:
    """What the target's adapter refuses in its settings, each at its place under the target."""
    for where, message in settings_problems(target):
        yield ("settings", *where), message
    for problem in connection_problems(target):
        if not (problem.excusable and target.insecure):
            yield problem.loc, problem.error


def load_policy(path: str | Path) -> Policy:
    """`app.policy.load_policy`, with each target checked by its adapter too, and the rotas
    that name a source read from it (app.oncall)."""
    return with_sources(load_manifest(path, target_checks=[target_problems]))


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """`app.policy.parse_policy`, with each target checked by its adapter too, and the rotas
    that name a source read from it (app.oncall)."""
    return with_sources(parse_manifest(text, source, target_checks=[target_problems]))


def policy_warnings(policy: Policy) -> list[PolicyIssue]:
    """What a valid policy allows but should not stay so: each insecure connection a target or
    a rota's source marked `insecure: true` accepts (and the flag where nothing needs it)."""
    found: list[PolicyIssue] = []
    for name, target in policy.targets.items():
        if not target.insecure:
            continue
        excused = [p for p in connection_problems(target) if p.excusable]
        found += [PolicyIssue(("targets", name, *p.loc), p.warning) for p in excused]
        if not excused:
            found.append(
                PolicyIssue(("targets", name, "insecure"), "nothing here needs it; remove it")
            )
    for name, rota in policy.oncall.items():
        if rota.source is None:
            continue
        roster, pagerduty = rota.source.roster, rota.source.pagerduty
        if roster is not None:
            kind, insecure, url = "roster", roster.insecure, roster.url or ""
        elif pagerduty is not None:
            kind, insecure, url = "pagerduty", pagerduty.insecure, pagerduty.api_url
        else:
            continue
        if not insecure:
            continue
        where = ("oncall", name, "source", kind, "insecure")
        if url.startswith("http://"):
            found.append(
                PolicyIssue(where, f"who is on call is read over plain http:// ({url[:60]})")
            )
        else:
            found.append(PolicyIssue(where, "nothing here needs it; remove it"))
    return found
