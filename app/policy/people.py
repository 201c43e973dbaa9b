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
