"""LDAP and Active Directory: an entitlement is a group's DN; access is the person's DN in its
`member` attribute.

The person's DN is found by a configured search whose filter values are escaped (RFC 4515), so
a hostile account name cannot widen the search. With `ttl_membership` on Active Directory the
member is added as `<TTL=seconds,DN>` (the Privileged Access Management feature), so the
directory itself removes it at expiry even if WardKey is down at that moment.
"""

from __future__ import annotations

import contextlib
import math
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, TypeVar

from ldap3 import (
    ALL_ATTRIBUTES,
    BASE,
    MODIFY_ADD,
    MODIFY_DELETE,
    SUBTREE,
    Connection,
    Server,
    Tls,
)
from ldap3.core import exceptions as ldap_errors
from ldap3.utils.conv import escape_filter_chars
from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.adapters.base import (
    AdapterError,
    GrantResult,
    PermanentAdapterError,
    RevokeResult,
    TransientAdapterError,
)

# LDAP result codes (RFC 4511 §4.1.9) that mean "try again later".
_TRANSIENT_RESULTS = {3, 51, 52, 80}  # timeLimitExceeded, busy, unavailable, other
_ALREADY_THERE = {20, 68}  # attributeOrValueExists, entryAlreadyExists
_ALREADY_GONE = {16}  # noSuchAttribute
_LAST_MEMBER = 65  # objectClassViolation: groupOfNames must keep one member
_MAX_TTL_SECONDS = 2**31 - 1
T = TypeVar("T")


class LdapSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(pattern=r"^ldaps?://[^/\s]+/?$", description="ldaps://host or ldap://host")
    start_tls: bool = Field(default=False, description="StartTLS on an ldap:// connection.")
    verify_tls: bool = True
    ca_file: str | None = None
    directory: Literal["openldap", "active_directory"] = "openldap"
    bind_dn: str = Field(min_length=3, description="WardKey's own account in the directory.")
    user_base: str = Field(min_length=3, description="Where people are searched for.")
    account_attribute: str = Field(
        default="uid", pattern=r"^[A-Za-z][A-Za-z0-9-]*$", description="sAMAccountName on AD."
    )
    user_filter: str = Field(
        default="(objectClass=*)", description="Extra condition ANDed with the account match."
    )
    ttl_membership: bool = Field(
        default=False, description="Active Directory only: the directory removes the member."
    )
    timeout_seconds: int = Field(default=10, ge=1, le=60)

    @model_validator(mode="after")
    def _ttl_needs_ad(self) -> LdapSettings:
        if self.ttl_membership and self.directory != "active_directory":
            raise ValueError("ttl_membership needs directory: active_directory")
        if not (self.user_filter.startswith("(") and self.user_filter.endswith(")")):
            raise ValueError("user_filter must be an LDAP filter in parentheses")
        return self


def ttl_member_value(dn: str, until: datetime, now: datetime | None = None) -> str:
    """Active Directory's time-limited link value: `<TTL=seconds,DN>` (rounded up, at least 1)."""
    now = now or datetime.now(UTC)
    seconds = max(1, math.ceil((until - now).total_seconds()))
    return f"<TTL={min(seconds, _MAX_TTL_SECONDS)},{dn}>"


class LdapAdapter:
    def __init__(self, settings: LdapSettings, password: str) -> None:
        self.settings = settings
        self.password = password
        tls = None
        if settings.url.startswith("ldaps://") or settings.start_tls:
            tls = Tls(
                validate=ssl.CERT_REQUIRED if settings.verify_tls else ssl.CERT_NONE,
                ca_certs_file=settings.ca_file,
            )
        self.server = Server(settings.url, tls=tls, connect_timeout=settings.timeout_seconds)

    # ------------------------------------------------------------------ connections

    def _connect(self) -> Connection:
        conn = Connection(
            self.server,
            user=self.settings.bind_dn,
            password=self.password,
            receive_timeout=self.settings.timeout_seconds,
            raise_exceptions=False,
        )
        try:
            conn.open()
            if self.settings.start_tls and not conn.start_tls():
                raise PermanentAdapterError(f"StartTLS refused: {conn.result.get('description')}")
            if not conn.bind():
                code = conn.result.get("result")
                raise self._error("bind", code, conn.result.get("description", ""))
        except ldap_errors.LDAPException as exc:
            _close(conn)
            raise self._connection_error(exc) from None
        return conn

    def _run(self, operation: str, work: Callable[[Connection], T]) -> T:
        conn = self._connect()
        try:
            return work(conn)
        except ldap_errors.LDAPException as exc:
            raise self._connection_error(exc, operation) from None
        finally:
            _close(conn)

    def _connection_error(self, exc: Exception, operation: str = "connect") -> AdapterError:
        if isinstance(exc, ldap_errors.LDAPSSLConfigurationError):
            return PermanentAdapterError(f"{operation}: TLS is misconfigured: {exc}")
        # A certificate that does not verify will not verify on the next try either: someone
        # must fix ca_file or the directory's certificate.
        unverified = "CERTIFICATE_VERIFY_FAILED" in str(exc)
        if unverified or isinstance(exc, ldap_errors.LDAPCertificateError):
            return PermanentAdapterError(
                f"{operation}: the certificate of {self.settings.url} did not verify against "
                f"{self.settings.ca_file or 'the system CAs'}: {exc}"
            )
        return TransientAdapterError(f"{operation}: cannot reach {self.settings.url}: {exc}")

    @staticmethod
    def _error(operation: str, code: int | None, description: str) -> AdapterError:
        message = f"{operation}: the directory answered {description or code}"
        if code in _TRANSIENT_RESULTS:
            return TransientAdapterError(message)
        return PermanentAdapterError(message)

    # --------------------------------------------------------------------- lookups

    def _person_dn(self, conn: Connection, account: str) -> str:
        s = self.settings
        if not account or "\x00" in account:
            raise PermanentAdapterError("an empty account or one with NUL cannot be looked up")
        match = f"({s.account_attribute}={escape_filter_chars(account)})"
        search = f"(&{match}{s.user_filter})"
        if not conn.search(s.user_base, search, SUBTREE, attributes=[], size_limit=2):
            code = conn.result.get("result")
            if code in (0, 4, 32):  # nothing found
                raise PermanentAdapterError(f"no person '{account}' under {s.user_base}")
            raise self._error("find person", code, conn.result.get("description", ""))
        if len(conn.entries) != 1:
            raise PermanentAdapterError(f"'{account}' matches several people; refusing to guess")
        dn: str = conn.entries[0].entry_dn
        return dn

    @staticmethod
    def _is_member(conn: Connection, group: str, dn: str) -> bool:
        if conn.search(group, f"(member={escape_filter_chars(dn)})", BASE, attributes=[]):
            return len(conn.entries) == 1
        code = conn.result.get("result")
        if code == 32:
            raise PermanentAdapterError(f"there is no group '{group}' in the directory")
        if code not in (0,):
            raise LdapAdapter._error("check", code, conn.result.get("description", ""))
        return False

    # --------------------------------------------------------------------- protocol

    def grant(self, account: str, entitlement: str, until: datetime) -> GrantResult:
        def work(conn: Connection) -> GrantResult:
            dn = self._person_dn(conn, account)
            ttl = self.settings.ttl_membership
            # A TTL link is added even when the member is there, so the directory's own
            # expiry moves with an extension.
            if not ttl and self._is_member(conn, entitlement, dn):
                return GrantResult(already_present=True)
            value = ttl_member_value(dn, until) if ttl else dn
            conn.modify(entitlement, {"member": [(MODIFY_ADD, [value])]})
            code = conn.result.get("result")
            if code in _ALREADY_THERE:
                return GrantResult(already_present=True)
            if code != 0:
                raise self._error("grant", code, conn.result.get("description", ""))
            return GrantResult(
                detail=f"member {dn}" + (", expires in the directory" if ttl else "")
            )

        return self._run("grant", work)

    def revoke(self, account: str, entitlement: str) -> RevokeResult:
        def work(conn: Connection) -> RevokeResult:
            dn = self._person_dn(conn, account)
            if not self._is_member(conn, entitlement, dn):
                return RevokeResult(already_absent=True)
            conn.modify(entitlement, {"member": [(MODIFY_DELETE, [dn])]})
            code = conn.result.get("result")
            if code in _ALREADY_GONE:
                return RevokeResult(already_absent=True)
            if code == _LAST_MEMBER:
                raise PermanentAdapterError(
                    f"revoke: {entitlement} would have no member left; give the group a "
                    "placeholder member (groupOfNames needs one)"
                )
            if code != 0:
                raise self._error("revoke", code, conn.result.get("description", ""))
            return RevokeResult(detail=f"removed {dn}")

        return self._run("revoke", work)

    def check(self, account: str, entitlement: str) -> bool:
        return self._run(
            "check", lambda conn: self._is_member(conn, entitlement, self._person_dn(conn, account))
        )

    def end_sessions(self, account: str) -> int:
        # A directory has no sessions to end: logons and Kerberos tickets keep the old group
        # list until they are renewed (docs/targets.md, "LDAP and Active Directory").
        return 0

    def list_members(self, entitlement: str) -> set[str]:
        attribute = self.settings.account_attribute

        def work(conn: Connection) -> set[str]:
            if not conn.search(entitlement, "(objectClass=*)", BASE, attributes=["member"]):
                code = conn.result.get("result")
                if code == 32:
                    raise PermanentAdapterError(f"there is no group '{entitlement}'")
                raise self._error("list members", code, conn.result.get("description", ""))
            accounts: set[str] = set()
            for dn in conn.entries[0].entry_attributes_as_dict.get("member", []):
                if conn.search(dn, "(objectClass=*)", BASE, attributes=[attribute]):
                    values = conn.entries[0].entry_attributes_as_dict.get(attribute, [])
                    if values:
                        accounts.add(str(values[0]))
            return accounts

        return self._run("list members", work)

    # ------------------------------------------------------------- groups of people

    def group_people(self, group: str, *, nested: bool = True) -> list[DirectoryEntry]:
        """The people in `group` (by its `member` attribute), with every attribute of theirs
        (user and operational, so a lock attribute is seen); member groups are followed when
        `nested` (each once, so a loop of groups ends). A member DN that names no entry is
        skipped (a dangling reference); a group that does not exist is an error."""

        def work(conn: Connection) -> list[DirectoryEntry]:
            people: dict[str, DirectoryEntry] = {}
            seen: set[str] = set()
            waiting = [group]
            while waiting:
                dn = waiting.pop()
                if dn.lower() in seen:
                    continue
                seen.add(dn.lower())
                if len(seen) + len(people) > _MAX_GROUP_ENTRIES:
                    raise PermanentAdapterError(
                        f"{group} has more than {_MAX_GROUP_ENTRIES} entries; refusing to read it"
                    )
                entry = self._entry(conn, dn, required=dn == group)
                if entry is None:
                    continue
                classes = {c.lower() for c in entry.attributes.get("objectClass", [])}
                if dn == group or (classes & _GROUP_CLASSES):
                    if dn != group and not nested:
                        continue
                    waiting += entry.attributes.get("member", [])
                    continue
                people[dn.lower()] = entry
            return list(people.values())

        return self._run("read group", work)

    def people_with_member_of(self, group: str) -> list[DirectoryEntry]:
        """The people under `user_base` (and `user_filter`) whose memberOf names `group`:
        direct members only, as Active Directory and OpenLDAP's memberof overlay keep it."""

        def work(conn: Connection) -> list[DirectoryEntry]:
            self._entry(conn, group, required=True)
            s = self.settings
            search = f"(&(memberOf={escape_filter_chars(group)}){s.user_filter})"
            found = conn.extend.standard.paged_search(
                s.user_base,
                search,
                SUBTREE,
                attributes=[ALL_ATTRIBUTES, "+"],
                paged_size=500,
                generator=False,
            )
            code = conn.result.get("result")
            if code not in (0, None):
                raise self._error("read group", code, conn.result.get("description", ""))
            people = [
                DirectoryEntry(str(e["dn"]), _values(e["attributes"]))
                for e in found
                if e.get("type") == "searchResEntry"
            ]
            if len(people) > _MAX_GROUP_ENTRIES:
                raise PermanentAdapterError(
                    f"{group} has more than {_MAX_GROUP_ENTRIES} entries; refusing to read it"
                )
            return people

        return self._run("read group", work)

    def _entry(self, conn: Connection, dn: str, *, required: bool) -> DirectoryEntry | None:
        if not conn.search(dn, "(objectClass=*)", BASE, attributes=[ALL_ATTRIBUTES, "+"]):
            code = conn.result.get("result")
            if code == 32:  # noSuchObject
                if required:
                    raise PermanentAdapterError(f"there is no group '{dn}' in the directory")
                return None
            if code == 0:
                return None
            raise self._error("read group", code, conn.result.get("description", ""))
        found = conn.response[0] if conn.response else None
        if not found or "attributes" not in found:
            return None
        return DirectoryEntry(str(found["dn"]), _values(found["attributes"]))


@dataclass(frozen=True)
class DirectoryEntry:
    """A person found in a group: their DN and the attributes asked for (first value each)."""

    dn: str
    attributes: dict[str, list[str]]


_GROUP_CLASSES = {"groupofnames", "groupofuniquenames", "group"}
# Enough for a hospital's largest group with nesting; a group beyond it is a misconfiguration
# (a whole-directory group), refused rather than read for minutes.
_MAX_GROUP_ENTRIES = 50_000


def _values(attributes: dict[str, object]) -> dict[str, list[str]]:
    return {
        name: [str(v) for v in (value if isinstance(value, list) else [value])]
        for name, value in attributes.items()
    }


def _close(conn: Connection) -> None:
    """Unbind, quietly: after a failed StartTLS or a dropped connection the socket is already
    gone, and the error worth reporting is the one that got us here."""
    with contextlib.suppress(ldap_errors.LDAPException, OSError):
        conn.unbind()
