"""The refresh job (`directory_groups`, on every sweep tick): read the directory groups that are
due, tell security of an outage once (and once when it ends), and, where a group says
`revoke_leavers`, end the access of people the directory no longer puts in any group that makes
them eligible.

A leaver is decided only from groups read well (fresh): a directory outage never revokes
anyone, it only stops new requests and approvals once the last good read is stale.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sized
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.access import AccessService
from app.groups import messages
from app.groups.cache import DirectoryGroups
from app.jobs import Job
from app.outbox_records import POST, OutCall, call_row, last_alert
from app.policy import rules
from app.policy.model import Policy
from app.policy.people import Person, identifiers
from app.store.models import AccessRequest, RequestState

log = logging.getLogger(__name__)
LANE = "security"
_OPEN = [RequestState.PENDING.value, RequestState.APPROVED.value, RequestState.ACTIVE.value]


class Alerts(Protocol):
    """Where the security channel's messages go (app/notify/outbox.py `Outbox`)."""

    def enqueue(self, lane: str, calls: list[OutCall], key: str | None = None) -> None: ...


@dataclass(frozen=True)
class Ended:
    """A request ended because its requester left the groups that made them eligible."""

    request_id: int
    requester: str
    groups: tuple[str, ...]
    disabled: bool


class Needs(Protocol):
    """What the refresh job is given (app/scheduler `JobDeps`)."""

    @property
    def core(self) -> AccessService:
        """The request core: its policy (the groups and their cache), database and clock, and
        the ending of a leaver's access through the normal lifecycle."""
        ...

    @property
    def alerts(self) -> Alerts | None:
        """Where security's alerts are recorded (the outbox; None: nobody is told)."""
        ...

    @property
    def tell(self) -> Callable[[Sized], None]:
        """Ask the outbox to deliver what was recorded (security's alerts, leavers told)."""
        ...


def directory_groups(given: Needs) -> list[object]:
    """Read the directory groups that are due; tell security of an outage once and when it
    ends; end the access of leavers where the group says revoke_leavers. Returns the changes
    told (or found, when nobody is told) and the leavers ended."""
    service, alerts = given.core, given.alerts
    policy = service.policy
    cache = policy.group_lookup
    if not isinstance(cache, DirectoryGroups):
        return []
    read = cache.refresh()
    told: list[object] = []
    for change in cache.watch():
        kind = "down" if change.down else "back"
        if alerts is None:
            told.append(change)
        else:
            # Every process reads the groups itself. What security was last told of this group,
            # by any process, is in the outbox: an outage (or its end) already told is not told
            # again. The key numbers the group's alerts, so two processes that find the same
            # change at once write the same key and the outbox keeps one.
            last, count = last_alert(service.db, f"groups:{change.group}")
            if last != kind:
                text = messages.outage(change, policy.zone)
                alerts.enqueue(
                    LANE,
                    [OutCall(POST, {"channel": policy.channels.security_alerts, "text": text})],
                    key=f"groups:{change.group}:{kind}:{count + 1}"[:100],
                )
                told.append(change)
        cache.told(change)
    # Leavers are looked for after a group is read well: between reads nothing changes.
    changed = told + list(end_leavers(service, cache) if read else [])
    given.tell(changed)
    return changed


def _leaving(
    policy: Policy, cache: DirectoryGroups, person: Person, eligible: list[str]
) -> tuple[tuple[str, ...], bool] | None:
    """The directory groups a person relied on and left (and whether they are disabled), or
    None when they are still eligible, or when that cannot be known now."""
    directory = policy.directory_groups()
    mine = identifiers(policy, person)
    relied = [g for g in eligible if g in directory and directory[g].revoke_leavers]
    if not relied:
        return None
    if any(g in directory and not cache.answers(g) for g in eligible):
        return None  # a group not read well might still have them: never revoke on an outage
    if any(rules.is_member(policy, person, policy.members_of(g)) for g in eligible):
        return None
    disabled = any(mine & cache.disabled(g) for g in relied)
    return tuple(relied), disabled


def end_leavers(service: AccessService, cache: DirectoryGroups) -> list[Ended]:
    """End the open requests and active access of people who left every group that made
    them eligible for the role, where one of those groups says `revoke_leavers`. Each is
    ended through the lifecycle (audited; the requester told), and the security channel is
    told in the same transaction."""
    policy = service.policy
    if not any(g.revoke_leavers for g in policy.directory_groups().values()):
        return []
    with service.db.read() as session:
        rows = session.scalars(
            select(AccessRequest)
            .where(AccessRequest.state.in_(_OPEN), AccessRequest.identity.is_(None))
            .order_by(AccessRequest.id)
        ).all()
    ended: list[Ended] = []
    for req in rows:
        target = policy.targets.get(req.target)
        role = target.roles.get(req.role) if target else None
        if role is None:
            continue
        person = service.grants.requester_of(req)
        left = _leaving(policy, cache, person, role.eligible)
        if left is None:
            continue
        groups, disabled = left
        words = " or ".join(groups)
        why = (
            "your account is disabled in the directory"
            if disabled
            else f"the directory no longer has you in {words}"
        )

        def tell_security(
            session: Session,
            req: AccessRequest,
            groups: tuple[str, ...] = groups,
            person: Person = person,
            disabled: bool = disabled,
        ) -> None:
            text = messages.leaver(
                req.id,
                person.label,
                f"{req.target}:{req.role}",
                " or ".join(groups),
                disabled,
                req.state == RequestState.ACTIVE,
            )
            call = OutCall(POST, {"channel": policy.channels.security_alerts, "text": text})
            now = service.clock.now()
            session.add(call_row(LANE, call, now, key=f"groups:leaver:{req.id}"))

        if service.end_access(req.id, why, "directory_leaver", also=tell_security):
            log.warning(
                "event=directory_leaver_ended request=%s groups=%s disabled=%s",
                req.id,
                ",".join(groups),
                disabled,
            )
            ended.append(Ended(req.id, person.label, groups, disabled))
    return ended


JOBS = (Job("directory_groups", "sweep", directory_groups),)
