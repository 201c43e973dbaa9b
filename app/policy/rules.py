"""Pure policy decisions: who may request what, on which path, for how long, and who approves.

No I/O and no clock of its own: every function that depends on time takes the instant.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from app.policy.model import BREAK_GLASS_PATH, AccessPath, ApproverSource, Policy, Vendor
from app.policy.people import Person, identifiers
from app.policy.rota import on_call_at


class PolicyRefusal(Exception):
    """The policy says no; the message is written for the person who asked."""


@dataclass(frozen=True)
class RequestPlan:
    """What a request for `target:role` means under the policy, for this person, now."""

    target: str
    role: str
    path: str
    entitlement: str
    account: str
    cap: timedelta
    approvals_needed: int
    ticket_required: bool
    identity: str | None = None


def group_members(policy: Policy, group: str) -> list[str]:
    """Who is in the group now (a directory group: as last read; nobody once stale)."""
    return policy.members_of(group)


def is_member(policy: Policy, person: Person, members: Iterable[str]) -> bool:
    return bool(identifiers(policy, person) & set(members))


def resolve_sources(policy: Policy, sources: Iterable[ApproverSource], at: datetime) -> list[str]:
    """The people named by groups and rotas at `at`, in policy order, without repeats."""
    found: dict[str, None] = {}
    for source in sources:
        if source.group is not None:
            found.update(dict.fromkeys(group_members(policy, source.group)))
        elif source.rota is not None and source.rota in policy.oncall:
            rota = policy.oncall[source.rota]
            people = (
                policy.on_call_from_source(source.rota, at)
                if rota.source is not None
                else on_call_at(rota, at, policy.zone)
            )
            found.update(dict.fromkeys(people))
    return list(found)


def approvers_at(policy: Policy, path: str, at: datetime) -> list[str]:
    """Who may approve a request on `path` at `at`; empty means nobody (fail closed)."""
    spec = policy.paths.get(path)
    return [] if spec is None else resolve_sources(policy, spec.approvers, at)


def escalation_members(policy: Policy, path: str) -> list[str]:
    """The escalation groups of the rotas that approve `path`."""
    spec = policy.paths.get(path)
    found: dict[str, None] = {}
    for source in spec.approvers if spec else []:
        rota = policy.oncall.get(source.rota or "")
        if rota is not None and rota.escalation:
            found.update(dict.fromkeys(group_members(policy, rota.escalation)))
    return list(found)


def is_approver(policy: Policy, path: str, person: Person, at: datetime) -> bool:
    return is_member(policy, person, approvers_at(policy, path, at))


def reviewers(policy: Policy, at: datetime) -> list[str]:
    return resolve_sources(policy, policy.paths[BREAK_GLASS_PATH].reviewers, at)


def is_reviewer(policy: Policy, person: Person, at: datetime) -> bool:
    return is_member(policy, person, reviewers(policy, at))


def is_admin(policy: Policy, person: Person) -> bool:
    return is_member(policy, person, group_members(policy, policy.admins))


def security_admins(policy: Policy) -> list[str]:
    """Who may lock a target down: the `security_admins` group, or the admins without one."""
    return group_members(policy, policy.security_admins or policy.admins)


def is_security_admin(policy: Policy, person: Person) -> bool:
    return is_member(policy, person, security_admins(policy))


def vendor_of(policy: Policy, person: Person) -> Vendor | None:
    ids = identifiers(policy, person)
    return next((v for v in policy.vendors.values() if ids & set(v.people)), None)


def vendor_identifiers(policy: Policy, vendor: Vendor) -> frozenset[str]:
    """Every identifier of the vendor's people, with their other accounts."""
    found = set(vendor.people)
    for primary, aliases in policy.people.items():
        group = {primary, *aliases.accounts}
        if group & found:
            found |= group
    return frozenset(found)


def contract_end_instant(policy: Policy, vendor: Vendor) -> datetime:
    """A contract ends at the end of its last day, in the policy time zone."""
    last = datetime.combine(vendor.contract_end, time(0), tzinfo=policy.zone)
    return (last + timedelta(days=1)).astimezone(UTC)


def path_for(policy: Policy, target: str, role: str, *, break_glass: bool = False) -> str:
    if break_glass:
        return BREAK_GLASS_PATH
    return policy.targets[target].roles[role].path


def account_for(policy: Policy, target: str, person: Person, identity: str | None = None) -> str:
    """The account on `target` that gets the access: the identity's, or the person's own."""
    if identity is not None:
        return policy.identities[identity].account
    mapping = policy.targets[target].account
    for known in identifiers(policy, person):
        if known in mapping.overrides:
            return mapping.overrides[known]
    needs_email = "{email}" in mapping.template or "{local}" in mapping.template
    if needs_email and not person.email:
        raise PolicyRefusal(
            f"{target} needs your e-mail address to find your account, and Slack did not give it."
        )
    email = person.email or ""
    return mapping.template.format(
        email=email, local=email.split("@", 1)[0], slack_id=person.slack_user_id or ""
    )


@dataclass(frozen=True)
class Limits:
    """How long one person may hold `target:role` via a path: the one place every cap is
    put together, for requests, break-glass, grants and extensions alike."""

    per_grant: timedelta  # the role's, the path's and the service account's caps
    in_all: timedelta  # the same, counting extensions (the path's max_total_duration)
    ends_by: datetime | None  # nothing may outlive this: a vendor's contract end

    def cap_from(self, at: datetime) -> timedelta:
        """The longest a grant starting at `at` may run (zero once the contract has ended)."""
        if self.ends_by is None:
            return self.per_grant
        return max(timedelta(0), min(self.per_grant, self.ends_by - at))

    def latest_expiry(self, granted_at: datetime) -> datetime:
        """The latest a grant made at `granted_at` may end, extensions included."""
        latest = granted_at + self.in_all
        return latest if self.ends_by is None else min(latest, self.ends_by)


def limits(
    policy: Policy,
    person: Person,
    target: str,
    role: str,
    path: str,
    identity: str | None = None,
) -> Limits:
    """Every cap on this person holding `target:role` via `path`: the role's own (which also
    bounds extensions), the path's, the service account's and the vendor contract's end."""
    path_spec = policy.paths[path]
    shared = []
    role_cap = policy.targets[target].roles[role].max_duration
    if role_cap is not None:
        shared.append(role_cap)
    if identity is not None:
        shared.append(policy.identities[identity].max_duration)
    vendor = vendor_of(policy, person)
    return Limits(
        per_grant=min([path_spec.max_duration, *shared]),
        in_all=min([path_spec.total_cap, *shared]),
        ends_by=contract_end_instant(policy, vendor) if vendor is not None else None,
    )


def duration_cap(
    policy: Policy,
    person: Person,
    target: str,
    role: str,
    path: str,
    at: datetime,
    identity: str | None = None,
) -> timedelta:
    """The longest a grant starting at `at` may run (see `limits`)."""
    return limits(policy, person, target, role, path, identity).cap_from(at)


def plan_request(
    policy: Policy,
    person: Person,
    target: str,
    role: str,
    at: datetime,
    *,
    break_glass: bool = False,
    identity: str | None = None,
) -> RequestPlan:
    """Everything the policy says about this request, or PolicyRefusal with the reason."""
    if target not in policy.targets:
        raise PolicyRefusal(f"There is no target called '{target}'. Try /jit targets.")
    spec = policy.targets[target]
    if role not in spec.roles:
        known = ", ".join(sorted(spec.roles))
        raise PolicyRefusal(f"{target} has no role '{role}'. Its roles are: {known}.")
    role_spec = spec.roles[role]
    if identity is not None:
        ident = policy.identities.get(identity)
        if ident is None:
            raise PolicyRefusal(f"There is no service account called '{identity}'.")
        if not is_member(policy, person, [ident.owner]):
            raise PolicyRefusal(f"Only the owner of {identity} may request access for it.")
        if (ident.target, ident.role) != (target, role):
            raise PolicyRefusal(f"{identity} may only be elevated to {ident.target}:{ident.role}.")
    elif not any(is_member(policy, person, group_members(policy, g)) for g in role_spec.eligible):
        raise PolicyRefusal(
            f"You are not eligible for {target}:{role}. Ask your manager to add you to one of: "
            f"{', '.join(role_spec.eligible)}."
        )
    vendor = vendor_of(policy, person)
    if vendor is not None and contract_end_instant(policy, vendor) <= at:
        raise PolicyRefusal(
            f"Your {vendor.company} contract ended on {vendor.contract_end:%d %b %Y}; "
            "ask your sponsor to renew it."
        )
    if break_glass and not role_spec.break_glass:
        raise PolicyRefusal(
            f"Break-glass is not allowed for {target}:{role}. Use /jit request instead."
        )
    path = path_for(policy, target, role, break_glass=break_glass)
    path_spec: AccessPath = policy.paths[path]
    return RequestPlan(
        target=target,
        role=role,
        path=path,
        entitlement=role_spec.entitlement,
        account=account_for(policy, target, person, identity),
        cap=duration_cap(policy, person, target, role, path, at, identity),
        approvals_needed=0 if break_glass else path_spec.approvals,
        ticket_required=path_spec.ticket_required or path_spec.ticket is not None,
        identity=identity,
    )


def requestable(policy: Policy, person: Person, at: datetime) -> list[RequestPlan]:
    """Every target role this person may request now (what the modal and /jit targets show)."""
    plans = []
    for target, spec in sorted(policy.targets.items()):
        for role in sorted(spec.roles):
            try:
                plans.append(plan_request(policy, person, target, role, at))
            except PolicyRefusal:
                continue
    return plans


def check_ticket(policy: Policy, path: str, ticket: str | None) -> str | None:
    """The ticket, cleaned, or PolicyRefusal when the path needs one and it is missing or bad."""
    spec = policy.paths[path]
    cleaned = (ticket or "").strip() or None
    if cleaned is None:
        if spec.ticket_required or spec.ticket is not None:
            raise PolicyRefusal(f"The {path} path needs a ticket number, like INC0012345.")
        return None
    if spec.ticket_pattern is not None and not re.fullmatch(spec.ticket_pattern, cleaned):
        raise PolicyRefusal(
            f"'{cleaned}' does not look like a ticket for the {path} path "
            f"(expected {spec.ticket_pattern})."
        )
    return cleaned
