"""Reading a directory group: Active Directory / OpenLDAP with ldap3 (app.adapters.ldap) or
Microsoft Entra ID through Microsoft Graph (app.adapters.entra).

A read gives the identifier the policy matches each person by (a Slack user ID where the
directory holds one, else the e-mail, lower-cased) of everyone in the group whose account is
enabled, and apart those whose account is disabled. Every failure is a `GroupUnreadable`
whose message says what went wrong without any secret.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pydantic import ValidationError

from app.adapters.base import AdapterError
from app.adapters.entra import EntraAdapter, EntraSettings, Throttled
from app.adapters.ldap import DirectoryEntry, LdapAdapter, LdapSettings
from app.policy.model import DirectoryGroup, EntraGroup, LdapGroup, Policy

log = logging.getLogger(__name__)
# Active Directory's userAccountControl flag for a disabled account (ADS_UF_ACCOUNTDISABLE).
ACCOUNTDISABLE = 0x2
_OBJECT_ID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_NOT_SET = {"", "false", "0", "no"}


class GroupUnreadable(Exception):
    """The group could not be read; the message is safe to log and show to security.
    `retry_after`: how long the directory asked us to wait (Graph's Retry-After)."""

    def __init__(self, message: str, retry_after: timedelta | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Membership:
    """One good read of a group."""

    members: frozenset[str]  # identifiers of the enabled people in it
    people: int  # how many enabled people
    disabled: frozenset[str] = frozenset()  # identifiers of people in it whose account is off
    unmapped: tuple[str, ...] = field(default=())  # people with no e-mail or Slack ID (DN/id)


def where_from(group: DirectoryGroup) -> str:
    """The group in a person's words: 'LDAP cn=ward7,ou=groups,…', 'Entra ID group 1b2c…'."""
    if group.ldap is not None:
        return f"LDAP group {group.ldap.group}"
    assert group.entra is not None
    return f"Entra ID group {group.entra.group}"


def _connection(
    name: str, source: LdapGroup | EntraGroup, policy: Policy
) -> tuple[Mapping[str, Any], Mapping[str, str]]:
    """The target's settings and secrets (the one named, or the only one of the kind), or the
    group's own."""
    target = policy.directory_target(name)
    if target is not None:
        return policy.targets[target].settings, policy.targets[target].secrets
    return source.settings, source.secrets


def _secret(secrets: Mapping[str, str], key: str, env: Mapping[str, str]) -> str:
    variable = secrets.get(key)
    if variable is None:
        raise GroupUnreadable(f"no {key} is named under secrets")
    value = env.get(variable, "")
    if not value:
        raise GroupUnreadable(f"{variable} is not set")
    return value


class GroupReader:
    """Reads one directory group; keeps its adapter (and so Graph's token) between reads."""

    def __init__(
        self,
        name: str,
        group: DirectoryGroup,
        policy: Policy,
        env: Mapping[str, str],
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = name
        self.group = group
        self.policy = policy
        self.env = env
        self.sleep = sleep
        self._entra: EntraAdapter | None = None
        self._group_id: str | None = None

    def read(self) -> Membership:
        try:
            if self.group.ldap is not None:
                return self._read_ldap(self.group.ldap)
            assert self.group.entra is not None
            return self._read_entra(self.group.entra)
        except Throttled as exc:
            raise GroupUnreadable(str(exc), timedelta(seconds=exc.retry_after)) from None
        except AdapterError as exc:
            raise GroupUnreadable(str(exc)) from None

    # ------------------------------------------------------------------------ LDAP

    def _read_ldap(self, source: LdapGroup) -> Membership:
        settings, secrets = _connection(self.name, source, self.policy)
        try:
            parsed = LdapSettings.model_validate(settings)
        except ValidationError as exc:
            raise GroupUnreadable(f"connection settings: {exc.errors()[0]['msg']}") from None
        adapter = LdapAdapter(parsed, _secret(secrets, "bind_password", self.env))
        if source.membership == "memberOf":
            entries = adapter.people_with_member_of(source.group)
        else:
            entries = adapter.group_people(source.group, nested=source.nested)
        found = _Found()
        for entry in entries:
            ids = _ldap_ids(entry, source)
            if not ids:
                found.unmapped.append(entry.dn)
            elif _ldap_disabled(entry, source):
                found.disabled |= ids
            else:
                found.members |= ids
                found.people += 1
        return found.membership()

    # ----------------------------------------------------------------------- Entra

    def _read_entra(self, source: EntraGroup) -> Membership:
        if self._entra is None:
            settings, secrets = _connection(self.name, source, self.policy)
            try:
                parsed = EntraSettings.model_validate(settings)
            except ValidationError as exc:
                raise GroupUnreadable(f"connection settings: {exc.errors()[0]['msg']}") from None
            secret = _secret(secrets, "client_secret", self.env)
            self._entra = EntraAdapter(parsed, secret, sleep=self.sleep)
        if self._group_id is None:  # a name is looked up once, then its ID is read
            is_id = re.fullmatch(_OBJECT_ID, source.group) is not None
            self._group_id = source.group if is_id else self._entra.group_named(source.group)
        users = self._entra.group_people(
            self._group_id, ["mail", "userPrincipalName", "accountEnabled"]
        )
        found = _Found()
        for user in users:
            email = str(user.get(source.email_attribute) or "").strip().lower()
            if not email:
                found.unmapped.append(str(user.get("id", "?")))
            elif user.get("accountEnabled") is False:
                found.disabled.add(email)
            else:
                found.members.add(email)
                found.people += 1
        return found.membership()


@dataclass
class _Found:
    members: set[str] = field(default_factory=set)
    disabled: set[str] = field(default_factory=set)
    unmapped: list[str] = field(default_factory=list)
    people: int = 0

    def membership(self) -> Membership:
        # Someone listed twice, once disabled, is disabled: never eligible through the other.
        return Membership(
            frozenset(self.members - self.disabled),
            self.people,
            frozenset(self.disabled),
            tuple(self.unmapped),
        )


def _first(entry: DirectoryEntry, attribute: str) -> str:
    for name, values in entry.attributes.items():
        if name.lower() == attribute.lower() and values:
            return values[0].strip()
    return ""


def _ldap_ids(entry: DirectoryEntry, source: LdapGroup) -> set[str]:
    """One identifier per person (so nobody gets two cards): the Slack user ID the directory
    holds, else the e-mail; none when it has neither."""
    if source.slack_attribute:
        slack = _first(entry, source.slack_attribute).upper()
        if slack:
            return {slack}
    email = _first(entry, source.email_attribute).lower()
    return {email} if "@" in email else set()


def _ldap_disabled(entry: DirectoryEntry, source: LdapGroup) -> bool:
    control = _first(entry, "userAccountControl")
    if control.lstrip("-").isdigit() and int(control) & ACCOUNTDISABLE:
        return True
    if source.disabled_attribute:
        return _first(entry, source.disabled_attribute).lower() not in _NOT_SET
    return False
