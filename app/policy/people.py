"""Who someone is: a Slack account and/or an e-mail, and every other account of the same person."""

from __future__ import annotations

from dataclasses import dataclass

from app.policy.model import Policy


@dataclass(frozen=True)
class Person:
    """A human as the service sees them. At least one of the two identifiers is set."""

    slack_user_id: str | None = None
    email: str | None = None
    team_id: str | None = None

    def __post_init__(self) -> None:
        if not self.slack_user_id and not self.email:
            raise ValueError("a person needs a Slack user ID or an e-mail address")
        if self.email is not None:
            object.__setattr__(self, "email", self.email.strip().lower())

    @property
    def label(self) -> str:
        return self.email or self.slack_user_id or "?"


def identifiers(policy: Policy, person: Person) -> frozenset[str]:
    """Every identifier that denotes this person: their own plus the policy's aliases."""
    own = {i for i in (person.slack_user_id, person.email) if i}
    found = set(own)
    for primary, aliases in policy.people.items():
        group = {primary, *aliases.accounts}
        if group & own:
            found |= group
    return frozenset(found)


def person_key(policy: Policy, person: Person) -> str:
    """One stable key per person: the policy's primary entry if aliased, else e-mail, else ID."""
    own = {i for i in (person.slack_user_id, person.email) if i}
    for primary, aliases in policy.people.items():
        if own & {primary, *aliases.accounts}:
            return primary
    return person.email or person.slack_user_id or ""


def same_person(policy: Policy, a: Person, b: Person) -> bool:
    return bool(identifiers(policy, a) & identifiers(policy, b))


@dataclass(frozen=True)
class Mention:
    """One place the policy names a person: `loc` as in a PolicyIssue."""

    member: str
    loc: tuple[str | int, ...]


def mentions(policy: Policy) -> list[Mention]:
    """Every place the policy names a person (Slack user ID or e-mail), in manifest order."""
    found: list[Mention] = []
    for primary, aliases in policy.people.items():
        found.append(Mention(primary, ("people", primary)))
        for i, account in enumerate(aliases.accounts):
            found.append(Mention(account, ("people", primary, "accounts", i)))
    for name in policy.groups:
        for i, member in enumerate(policy.listed(name)):
            found.append(Mention(member, ("groups", name, i)))
    for name, rota in policy.oncall.items():
        for i, member in enumerate(rota.members):
            found.append(Mention(member, ("oncall", name, "members", i)))
        for i, override in enumerate(rota.overrides):
            cover = ("oncall", name, "overrides", i, "member")
            found.append(Mention(override.member, cover))
    for name, target in policy.targets.items():
        for member in target.account.overrides:
            loc = ("targets", name, "account", "overrides", member)
            found.append(Mention(member, loc))
    for name, identity in policy.identities.items():
        found.append(Mention(identity.owner, ("identities", name, "owner")))
    for name, vendor in policy.vendors.items():
        for i, person in enumerate(vendor.people):
            found.append(Mention(person, ("vendors", name, "people", i)))
        found.append(Mention(vendor.sponsor, ("vendors", name, "sponsor")))
    return found


def approver_paths(policy: Policy, group: str | None = None, rota: str | None = None) -> list[str]:
    """The paths whose approvers or reviewers come from this group or rota."""
    return [
        name
        for name, path in policy.paths.items()
        if any(
            (group is not None and s.group == group) or (rota is not None and s.rota == rota)
            for s in (*path.approvers, *path.reviewers)
        )
    ]
