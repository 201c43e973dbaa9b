"""Semantic checks of a policy: rules that relate one part of the manifest to another.

Each check yields a `PolicyIssue` at the exact field it concerns, so `wardkey policy check` can
list every problem at once. What a target's settings need from its adapter (their shape, no
credential, no plaintext connection) is not known here: callers above the policy pass those
checks in as `target_checks` (app/policy_targets.py), so this package imports no adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import combinations

from app.policy.durations import format_duration
from app.policy.errors import did_you_mean
from app.policy.model import (
    BREAK_GLASS_PATH,
    REQUIRED_PATHS,
    WEEKDAYS,
    DirectoryGroup,
    Policy,
    RotaSource,
    Target,
)
from app.policy.rota import override_window
from app.wording import plural

Location = tuple[str | int, ...]

# A check of one target that needs more than the policy knows: each problem as (its place
# under the target, e.g. ("settings", "url"), message).
TargetCheck = Callable[[Target], Iterable[tuple[Location, str]]]

# Setting names that hold a secret; their values belong in `secrets:` as env var names.
_SECRET_WORDS = ("password", "secret", "token", "api_key", "apikey", "private_key", "passphrase")
# A rota with a source ignores these: given at all (even at its default), they are refused.
_LISTED_ROTA_ONLY = (
    "members",
    "rotation",
    "starts",
    "overrides",
    "on_call",
    "handoff",
    "handoff_day",
)


@dataclass(frozen=True)
class PolicyIssue:
    loc: Location
    message: str
    line: int | None = None

    @property
    def where(self) -> str:
        return ".".join(str(part) for part in self.loc) or "(top level)"

    def __str__(self) -> str:
        if not self.loc and self.line:  # the file as text (YAML syntax): the line is the place
            return f"line {self.line}: {self.message}"
        suffix = f" (line {self.line})" if self.line else ""
        return f"{self.where}: {self.message}{suffix}"


def semantic_issues(policy: Policy, target_checks: Sequence[TargetCheck] = ()) -> list[PolicyIssue]:
    return [
        *_paths(policy),
        *_people_and_groups(policy),
        *_rotas(policy),
        *_targets(policy, target_checks),
        *_identities(policy),
        *_vendors(policy),
        *_step_up(policy),
        *_break_glass_budgets(policy),
    ]


def _step_up(policy: Policy) -> Iterator[PolicyIssue]:
    """Paths that need step-up need an identity provider to sign in with."""
    provider = policy.identity_provider
    for name, path in policy.paths.items():
        if not path.step_up:
            continue
        if name == BREAK_GLASS_PATH:
            yield PolicyIssue(
                ("paths", name, "step_up"), "break-glass is never approved, so it has no step-up"
            )
        elif provider is None:
            yield PolicyIssue(
                ("paths", name, "step_up"),
                "step-up needs an identity_provider at the top level to sign in with",
            )
    if provider is not None:
        loc: Location = ("identity_provider", "issuer")
        if provider.issuer.startswith("http://") and not provider.insecure:
            yield PolicyIssue(
                loc,
                f"{provider.issuer} is plain http://: sign-ins and tokens would cross the "
                "network readable; use https:// (insecure: true only for a test system)",
            )
        if provider.issuer.endswith("/.well-known/openid-configuration"):
            yield PolicyIssue(
                loc, "give the issuer itself, without /.well-known/openid-configuration"
            )


def _paths(policy: Policy) -> Iterator[PolicyIssue]:
    for name in REQUIRED_PATHS:
        if name not in policy.paths:
            yield PolicyIssue(("paths",), f"missing the '{name}' path")
    for name, path in policy.paths.items():
        loc: Location = ("paths", name)
        for i, source in enumerate(path.approvers):
            yield from _source(policy, (*loc, "approvers", i), source.group, source.rota)
        for i, source in enumerate(path.reviewers):
            yield from _source(policy, (*loc, "reviewers", i), source.group, source.rota)
        if name == BREAK_GLASS_PATH:
            if path.approvers:
                yield PolicyIssue(
                    (*loc, "approvers"), "break-glass is never approved first; use reviewers"
                )
            if not path.reviewers:
                yield PolicyIssue((*loc, "reviewers"), "break-glass needs reviewers")
            if path.review_within is None:
                yield PolicyIssue((*loc, "review_within"), "break-glass needs a review deadline")
            continue
        if not path.approvers:
            yield PolicyIssue((*loc, "approvers"), "a path needs at least one approver source")
        if path.reviewers or path.review_within:
            yield PolicyIssue((*loc, "reviewers"), "only the breakglass path has reviewers")
        if path.max_total_duration is not None and path.max_total_duration < path.max_duration:
            yield PolicyIssue((*loc, "max_total_duration"), "must be at least max_duration")
        if path.approval_sla and path.pending_timeout and path.approval_sla > path.pending_timeout:
            yield PolicyIssue(
                (*loc, "approval_sla"), "is longer than pending_timeout, so it would never escalate"
            )
        yield from _satisfiable(policy, name)
    yield from _ticket_systems(policy)


def _source(
    policy: Policy, loc: Location, group: str | None, rota: str | None
) -> Iterator[PolicyIssue]:
    if group is not None and group not in policy.groups:
        yield PolicyIssue((*loc, "group"), _unknown("group", group, policy.groups))
    if rota is not None and rota not in policy.oncall:
        yield PolicyIssue((*loc, "rota"), _unknown("rota", rota, policy.oncall))


def _satisfiable(policy: Policy, name: str) -> Iterator[PolicyIssue]:
    """Fewer distinct possible approvers than approvals needed, once the requester is excluded."""
    path = policy.paths[name]
    group_people: set[str] = set()
    rota_people: set[str] = set()
    on_call_count = 0
    for source in path.approvers:
        if source.group in policy.groups:
            if source.group in policy.directory_groups():
                return  # who is in it is known only when the directory is read
            group_people |= set(policy.listed(source.group))
        elif source.rota in policy.oncall:
            rota = policy.oncall[source.rota]
            if rota.source is not None:
                return  # who the source names is known only when it is read
            rota_people |= set(rota.members)
            on_call_count += min(rota.on_call, len(set(rota.members)))
    possible = len(group_people) + on_call_count
    requesters = {
        member
        for target in policy.targets.values()
        for role in target.roles.values()
        if role.path == name
        for group in role.eligible
        for member in policy.listed(group)
    }
    requester_may_approve = bool(requesters & (group_people | rota_people))
    available = possible - (1 if requester_may_approve else 0)
    if available < path.approvals:
        yield PolicyIssue(
            ("paths", name, "approvals"),
            f"needs {plural(path.approvals, 'approval')} but at most "
            f"{plural(max(available, 0), 'distinct approver')} can be available once the "
            "requester is excluded",
        )


def _people_and_groups(policy: Policy) -> Iterator[PolicyIssue]:
    if policy.admins not in policy.groups:
        yield PolicyIssue(("admins",), _unknown("group", policy.admins, policy.groups))
    if policy.security_admins is not None and policy.security_admins not in policy.groups:
        yield PolicyIssue(
            ("security_admins",), _unknown("group", policy.security_admins, policy.groups)
        )
    owner: dict[str, str] = {}
    for primary, aliases in policy.people.items():
        for account in (primary, *aliases.accounts):
            if account in owner and owner[account] != primary:
                yield PolicyIssue(
                    ("people", primary, "accounts"),
                    f"'{account}' is already an account of {owner[account]}",
                )
            owner[account] = primary
    for name, members in policy.groups.items():
        if not isinstance(members, list):
            yield from _directory_group(policy, name, members)
            continue
        if not members:
            yield PolicyIssue(("groups", name), "group has no members")
        if len(set(members)) != len(members):
            yield PolicyIssue(("groups", name), "lists the same member twice")


def _directory_group(policy: Policy, name: str, group: DirectoryGroup) -> Iterator[PolicyIssue]:
    """A directory group names a target of its own kind, or brings its own connection."""
    source = group.source
    loc: Location = ("groups", name, group.kind)
    if source.target is not None:
        target = policy.targets.get(source.target)
        if target is None:
            yield PolicyIssue((*loc, "target"), _unknown("target", source.target, policy.targets))
        elif target.kind != group.kind:
            yield PolicyIssue(
                (*loc, "target"),
                f"'{source.target}' is a {target.kind} target; name an {group.kind} target",
            )
    elif not source.settings and policy.directory_target(name) is None:
        kinds = sorted(n for n, t in policy.targets.items() if t.kind == group.kind)
        hint = f" (the policy's {group.kind} targets: {', '.join(kinds)})" if kinds else ""
        yield PolicyIssue(
            loc,
            f"say how to read it: 'target' naming an {group.kind} target{hint}, or "
            "your own 'settings' and 'secrets'",
        )
    if group.stale_after < group.refresh_every:
        yield PolicyIssue(
            ("groups", name, "stale_after"),
            "is shorter than refresh_every, so the group would go stale between reads",
        )


def _source_urls(loc: Location, source: RotaSource) -> Iterator[PolicyIssue]:
    """A source is read over HTTPS unless the policy says it is a test system."""
    if source.roster is not None and source.roster.url is not None:
        url, insecure, field = source.roster.url, source.roster.insecure, ("roster", "url")
    elif source.pagerduty is not None:
        pagerduty = source.pagerduty
        url, insecure, field = pagerduty.api_url, pagerduty.insecure, ("pagerduty", "api_url")
    elif source.opsgenie is not None:
        opsgenie = source.opsgenie
        url, insecure, field = opsgenie.api_url, opsgenie.insecure, ("opsgenie", "api_url")
    else:
        return
    if not url.startswith("https://") and not (insecure and url.startswith("http://")):
        yield PolicyIssue(
            (*loc, "source", *field),
            f"'{url[:60]}' is not an https:// URL (insecure: true allows http:// on a test system)",
        )


def _rotas(policy: Policy) -> Iterator[PolicyIssue]:
    zone = policy.zone
    for name, rota in policy.oncall.items():
        loc: Location = ("oncall", name)
        if rota.source is not None:
            yield from _source_urls(loc, rota.source)
            for field in _LISTED_ROTA_ONLY:
                if field in rota.model_fields_set:
                    yield PolicyIssue(
                        (*loc, field),
                        f"a rota with a source takes no '{field}': its source says who is on call",
                    )
            if rota.escalation is not None and rota.escalation not in policy.groups:
                yield PolicyIssue(
                    (*loc, "escalation"), _unknown("group", rota.escalation, policy.groups)
                )
            continue
        for field in ("rotation", "starts"):
            if getattr(rota, field) is None:
                yield PolicyIssue((*loc, field), f"'{field}' is required (or give a 'source')")
        if not rota.members:
            yield PolicyIssue((*loc, "members"), "rota has no members")
            continue
        if len(set(rota.members)) != len(rota.members):
            yield PolicyIssue((*loc, "members"), "lists the same member twice")
        if rota.on_call > len(rota.members):
            yield PolicyIssue(
                (*loc, "on_call"),
                f"{rota.on_call} on call at once but only {len(rota.members)} members",
            )
        if (
            rota.rotation == "weekly"
            and rota.starts
            and rota.starts.weekday() != WEEKDAYS.index(rota.handoff_day)
        ):
            yield PolicyIssue(
                (*loc, "starts"),
                f"{rota.starts} is a {WEEKDAYS[rota.starts.weekday()]}, but hand-off is on "
                f"{rota.handoff_day}s",
            )
        if rota.escalation is not None and rota.escalation not in policy.groups:
            yield PolicyIssue(
                (*loc, "escalation"), _unknown("group", rota.escalation, policy.groups)
            )
        for i, override in enumerate(rota.overrides):
            if override.replaces is None and rota.on_call > 1:
                yield PolicyIssue(
                    (*loc, "overrides", i, "replaces"),
                    "say whom this override replaces: more than one person is on call at once",
                )
            if override.replaces is not None and override.replaces not in rota.members:
                yield PolicyIssue(
                    (*loc, "overrides", i, "replaces"),
                    f"'{override.replaces}' is not a member of this rota",
                )
        for (i, a), (j, b) in combinations(enumerate(rota.overrides), 2):
            if a.replaces != b.replaces:
                continue
            a_start, a_end = override_window(a, zone)
            b_start, b_end = override_window(b, zone)
            if a_start < b_end and b_start < a_end:
                yield PolicyIssue(
                    (*loc, "overrides", j), f"overlaps override {i} for the same person"
                )


def _targets(policy: Policy, target_checks: Sequence[TargetCheck]) -> Iterator[PolicyIssue]:
    for name, target in policy.targets.items():
        loc: Location = ("targets", name)
        for check in target_checks:
            for where, message in check(target):
                yield PolicyIssue((*loc, *where), message)
        for key, value in target.settings.items():
            if any(word in key.lower() for word in _SECRET_WORDS) and isinstance(value, str):
                yield PolicyIssue(
                    (*loc, "settings", key),
                    "looks like an inline secret; put the name of the environment variable "
                    f"that holds it under secrets (secrets: {{{key}: SOME_ENV_VAR}})",
                )
        for role_name, role in target.roles.items():
            role_loc: Location = (*loc, "roles", role_name)
            if role.path == BREAK_GLASS_PATH:
                yield PolicyIssue(
                    (*role_loc, "path"),
                    "break-glass is a route, not a role's path: set break_glass: true instead",
                )
                continue
            if role.path not in policy.paths:
                yield PolicyIssue((*role_loc, "path"), _unknown("path", role.path, policy.paths))
                continue
            for i, group in enumerate(role.eligible):
                if group not in policy.groups:
                    yield PolicyIssue(
                        (*role_loc, "eligible", i), _unknown("group", group, policy.groups)
                    )
            cap = policy.paths[role.path].max_duration
            if role.max_duration is not None and role.max_duration > cap:
                yield PolicyIssue(
                    (*role_loc, "max_duration"),
                    f"is above the {role.path} path's cap of {format_duration(cap)}",
                )


def _identities(policy: Policy) -> Iterator[PolicyIssue]:
    for name, identity in policy.identities.items():
        loc: Location = ("identities", name)
        target = policy.targets.get(identity.target)
        if target is None:
            yield PolicyIssue((*loc, "target"), _unknown("target", identity.target, policy.targets))
            continue
        role = target.roles.get(identity.role)
        if role is None:
            yield PolicyIssue(
                (*loc, "role"),
                f"{identity.target} has no role '{identity.role}'"
                + did_you_mean(identity.role, target.roles),
            )
            continue
        path = policy.paths.get(role.path)
        if path is not None and identity.max_duration > path.max_duration:
            yield PolicyIssue(
                (*loc, "max_duration"),
                f"is above the {role.path} path's cap of {format_duration(path.max_duration)}",
            )


def _vendors(policy: Policy) -> Iterator[PolicyIssue]:
    seen: dict[str, str] = {}
    for name, vendor in policy.vendors.items():
        loc: Location = ("vendors", name)
        if vendor.sponsor in vendor.people:
            yield PolicyIssue((*loc, "sponsor"), "a vendor's sponsor must be a member of staff")
        for person in vendor.people:
            if person in seen and seen[person] != name:
                yield PolicyIssue(
                    (*loc, "people"), f"'{person}' is already listed under vendor {seen[person]}"
                )
            seen[person] = name


def _ticket_systems(policy: Policy) -> Iterator[PolicyIssue]:
    """Each path's ticket names a declared system; systems are reached over HTTPS."""
    for name, declared in policy.ticket_systems.items():
        if declared.servicenow is not None:
            servicenow = declared.servicenow
            url, insecure = servicenow.instance_url, servicenow.insecure
            field: tuple[str, str] = ("servicenow", "instance_url")
        elif declared.jira is not None:
            url, insecure, field = declared.jira.url, declared.jira.insecure, ("jira", "url")
        else:
            continue
        if not url.startswith("https://") and not (insecure and url.startswith("http://")):
            yield PolicyIssue(
                ("ticket_systems", name, *field),
                f"'{url[:60]}' is not an https:// URL (insecure: true allows http:// on a "
                "test system)",
            )
    for name, path in policy.paths.items():
        if path.ticket is None:
            continue
        loc: Location = ("paths", name, "ticket")
        system = policy.ticket_systems.get(path.ticket.system)
        if system is None:
            yield PolicyIssue(
                (*loc, "system"),
                _unknown("ticket system", path.ticket.system, policy.ticket_systems),
            )
            continue
        if path.ticket.assigned == "requester_or_group" and system.jira is not None:
            yield PolicyIssue(
                (*loc, "assigned"),
                "Jira issues have no assignment group; use requester or any",
            )
        if name == BREAK_GLASS_PATH:
            yield PolicyIssue(loc, "break-glass never waits on a ticket system")


def _unknown(kind: str, name: str, known: Iterable[str]) -> str:
    """ "unknown group 'nurse' (did you mean 'nurses'?)", or with what there is."""
    names = sorted(known)
    hint = did_you_mean(name, names)
    if not hint and names and len(names) <= 8:
        hint = f"; the {kind}s are {', '.join(names)}"
    elif not names:
        hint = f"; no {kind}s are defined"
    return f"unknown {kind} '{name}'{hint}"


def _break_glass_budgets(policy: Policy) -> Iterator[PolicyIssue]:
    """Break-glass limits, confirmers and review escalation: on the breakglass path only,
    naming groups and rotas that exist."""
    for name, path in policy.paths.items():
        loc: Location = ("paths", name)
        if name != BREAK_GLASS_PATH:
            for field in ("limits", "review_escalate_to", "review_escalate_channel"):
                if getattr(path, field):
                    yield PolicyIssue((*loc, field), "only the breakglass path has this")
            continue
        for i, source in enumerate(path.review_escalate_to):
            yield from _source(policy, (*loc, "review_escalate_to", i), source.group, source.rota)
        if path.limits is None:
            continue
        for i, source in enumerate(path.limits.confirmers):
            yield from _source(policy, (*loc, "limits", "confirmers", i), source.group, source.rota)
        for group in path.limits.per_group:
            if group not in policy.groups:
                yield PolicyIssue(
                    (*loc, "limits", "per_group", group), _unknown("group", group, policy.groups)
                )
