"""The policy as a running WardKey loads it: the manifest's own checks (`app.policy`, pure) and,
for every target, its adapter's (`app.adapters.registry`): settings of the shape its kind
takes, no credential in them, and no plaintext or unverified connection unless the target is
marked `insecure: true` (a test system, warned about by `policy_warnings`).

`wardkey policy check`, start-up and policy reload load the policy from here; `app.policy`
itself imports no adapter (DESIGN: checks that need an adapter's settings model are composed
above it).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.adapters.registry import connection_problems, settings_problems
from app.groups import with_directory_groups
from app.oncall import with_sources
from app.policy import Policy, PolicyError, PolicyIssue
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


@dataclass(frozen=True)
class _GroupConnection:
    """A directory group's own connection, read by the registry as a target of its kind."""

    kind: str
    settings: Mapping[str, Any]
    secrets: Mapping[str, str]
    insecure: bool
    roles: Mapping[str, Any]


def _own_connections(policy: Policy) -> Iterator[tuple[Location, _GroupConnection]]:
    for name, group in policy.directory_groups().items():
        source = group.source
        if source.target is None and source.settings:
            spec = _GroupConnection(
                group.kind, source.settings, source.secrets, source.insecure, {}
            )
            yield ("groups", name, group.kind), spec


def group_problems(policy: Policy) -> list[PolicyIssue]:
    """What a directory group's own connection settings get wrong, as for a target: their
    shape, a credential in them, and a plaintext or unverified connection unless the group
    says `insecure: true`."""
    found: list[PolicyIssue] = []
    for loc, spec in _own_connections(policy):
        for where, message in settings_problems(spec):
            found.append(PolicyIssue((*loc, "settings", *where), message))
        for problem in connection_problems(spec):
            if not (problem.excusable and spec.insecure):
                found.append(PolicyIssue((*loc, *problem.loc), problem.error))
    return found


def _checked(policy: Policy, source: str) -> Policy:
    problems = group_problems(policy)
    if problems:
        raise PolicyError(source, problems)
    return with_directory_groups(with_sources(policy))


def load_policy(path: str | Path) -> Policy:
    """`app.policy.load_policy`, with each target checked by its adapter too, the rotas
    that name a source read from it (app.oncall) and the groups from the directory (app.groups)."""
    return _checked(load_manifest(path, target_checks=[target_problems]), str(path))


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """`app.policy.parse_policy`, with each target checked by its adapter too, and the rotas
    that name a source read from it (app.oncall)."""
    return _checked(parse_manifest(text, source, target_checks=[target_problems]), source)


def policy_warnings(policy: Policy) -> list[PolicyIssue]:
    """What a valid policy allows but should not stay so: each insecure connection a target, a
    directory group, a rota's source, a ticket system or the identity provider marked
    `insecure: true` accepts (and the flag where nothing needs it)."""
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
    for loc, spec in _own_connections(policy):
        if spec.insecure:
            excused = [p for p in connection_problems(spec) if p.excusable]
            found += [PolicyIssue((*loc, *p.loc), p.warning) for p in excused]
            if not excused:
                found.append(PolicyIssue((*loc, "insecure"), "nothing here needs it; remove it"))
    for name, rota in policy.oncall.items():
        if rota.source is None:
            continue
        roster, pagerduty = rota.source.roster, rota.source.pagerduty
        if roster is not None:
            kind, insecure, url = "roster", roster.insecure, roster.url or ""
        elif pagerduty is not None:
            kind, insecure, url = "pagerduty", pagerduty.insecure, pagerduty.api_url
        elif rota.source.opsgenie is not None:
            opsgenie = rota.source.opsgenie
            kind, insecure, url = "opsgenie", opsgenie.insecure, opsgenie.api_url
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
    provider = policy.identity_provider
    if provider is not None and provider.insecure:
        provider_at: tuple[str, ...] = ("identity_provider", "insecure")
        if provider.issuer.startswith("http://"):
            found.append(
                PolicyIssue(
                    provider_at,
                    "approvers' sign-ins (codes and ID tokens) cross plain http:// "
                    f"({provider.issuer[:60]})",
                )
            )
        else:
            found.append(PolicyIssue(provider_at, "nothing here needs it; remove it"))
    found += ticket_system_warnings(policy)
    return found


def ticket_system_warnings(policy: Policy) -> list[PolicyIssue]:
    """A ticket system marked `insecure: true`: tickets (and its credentials) cross plain
    http://, or nothing there needs the flag."""
    found: list[PolicyIssue] = []
    for name, system in policy.ticket_systems.items():
        if system.servicenow is not None:
            servicenow = system.servicenow
            kind, insecure, url = "servicenow", servicenow.insecure, servicenow.instance_url
        elif system.jira is not None:
            kind, insecure, url = "jira", system.jira.insecure, system.jira.url
        else:
            continue
        if not insecure:
            continue
        where = ("ticket_systems", name, kind, "insecure")
        if url.startswith("http://"):
            found.append(
                PolicyIssue(where, f"tickets and credentials cross plain http:// ({url[:60]})")
            )
        else:
            found.append(PolicyIssue(where, "nothing here needs it; remove it"))
    return found
