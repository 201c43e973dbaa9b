"""Who is in each directory group, read through a cache the policy consults.

A group is read again once `refresh_every` has passed since the last try (or the longer
Retry-After Graph asked for), by the refresh job of every serve and worker and, in a process
that runs no jobs, by the lookup itself. When a read fails, the last good membership is used
until `stale_after` has passed since it was read; after that the group has nobody in it, so
eligibility and approval through it fail closed. A first read that fails means nobody. An
outage is logged once when it starts and once when it ends, and reported (`watch`) so the
refresh job tells the security channel once each.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from app.clock import Clock, SystemClock
from app.groups.readers import GroupReader, GroupUnreadable, Membership, where_from
from app.policy.model import DirectoryGroup, Policy
from app.wording import plural

log = logging.getLogger(__name__)


@dataclass
class _State:
    read: Membership | None = None  # the last good read
    read_at: datetime | None = None
    tried_at: datetime | None = None
    failing_since: datetime | None = None
    problem: str = ""
    wait: timedelta = timedelta(0)  # longer than refresh_every when Graph asked (429)
    told_down: datetime | None = None  # the outage security has been told of
    stale_logged: bool = False
    reader: GroupReader | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)  # the fields above
    reading: threading.Lock = field(default_factory=threading.Lock)  # one read at a time


@dataclass(frozen=True)
class GroupChange:
    """A directory group that stopped answering (`down`) or answers again, to tell once."""

    group: str
    source: str
    down: bool
    since: datetime  # when it stopped answering, or when it was read again
    problem: str = ""
    last_read: datetime | None = None
    stale_at: datetime | None = None  # when the last good read stops being used


@dataclass(frozen=True)
class GroupStatus:
    """How this process last read a directory group (for metrics and `policy check`)."""

    group: str
    kind: str
    up: bool
    fresh: bool
    people: int
    read_at: datetime | None


# What the running process has read, by group and source, kept across policy reloads (as
# app.oncall does): a reload during an outage keeps the last good read and its stale_after clock.
_KEPT: dict[tuple[str, str], _State] = {}
_KEPT_LOCK = threading.Lock()
_LIVE: list[DirectoryGroups] = []  # the newest cache, for metrics


class DirectoryGroups:
    """The directory-group cache for one policy: `policy.with_groups(DirectoryGroups(policy))`."""

    def __init__(
        self,
        policy: Policy,
        clock: Clock | None = None,
        *,
        env: Mapping[str, str] | None = None,
        kept: dict[tuple[str, str], _State] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.groups: dict[str, DirectoryGroup] = policy.directory_groups()
        self.zone = policy.zone
        self.clock = clock or SystemClock()
        self.env = os.environ if env is None else env
        self._policy = policy
        self._sleep = sleep
        if kept is None:
            self._states = {name: _State() for name in self.groups}
        else:
            with _KEPT_LOCK:
                self._states = {
                    name: kept.setdefault((name, group.model_dump_json()), _State())
                    for name, group in self.groups.items()
                }

    # ------------------------------------------------------------------ answering

    def lookup(self, group: str) -> list[str]:
        """Who is in the group now; nobody once the last good read is stale."""
        if group not in self.groups:
            return []
        read = self._fresh(group, read_if_due=True)
        return [] if read is None else sorted(read.members)

    __call__ = lookup

    def answers(self, group: str) -> bool:
        """True when the group's membership is known now (read, and not stale)."""
        return group in self.groups and self._fresh(group, read_if_due=False) is not None

    def disabled(self, group: str) -> frozenset[str]:
        """People in the group whose directory account is disabled, as last read."""
        state = self._states.get(group)
        return frozenset() if state is None or state.read is None else state.read.disabled

    # ------------------------------------------------------------------- reading

    def refresh(self) -> list[str]:
        """Read every group that is due (the refresh job); returns the groups read well."""
        return [name for name in self.groups if self._refresh_one(name)]

    def _refresh_one(self, name: str) -> bool:
        state = self._states[name]
        with state.lock:
            before = state.read_at
        self._read_if_due(name, state, wait=True)
        with state.lock:
            return state.read_at is not None and state.read_at != before

    def _fresh(self, name: str, *, read_if_due: bool) -> Membership | None:
        group = self.groups[name]
        state = self._states[name]
        if read_if_due:
            self._read_if_due(name, state, wait=False)
        with state.lock:
            now = self.clock.now()
            if state.read_at is None or now - state.read_at > group.stale_after:
                if state.read_at is not None and not state.stale_logged:
                    state.stale_logged = True
                    log.error(
                        "event=directory_group_stale group=%s source=%r last_read=%s "
                        "what=nobody in it may ask or approve until it is read",
                        name,
                        where_from(group),
                        state.read_at.isoformat(),
                    )
                return None
            return state.read

    @staticmethod
    def _due(group: DirectoryGroup, state: _State, now: datetime) -> bool:
        wait = max(group.refresh_every, state.wait)
        return state.tried_at is None or now - state.tried_at >= wait

    def _read_if_due(self, name: str, state: _State, *, wait: bool) -> None:
        """Read the group if refresh_every (or Graph's longer Retry-After) has passed since the
        last try. One read at a time, and never under the lock that answers: a lookup that
        finds another thread reading answers from the last good read (when it is not stale)
        instead of waiting on the directory; the refresh job (`wait`) waits its turn."""
        group = self.groups[name]
        with state.lock:
            now = self.clock.now()
            due = self._due(group, state, now)
            usable = state.read_at is not None and now - state.read_at <= group.stale_after
        if not due:
            if not usable:  # a read may be under way (the first one): its answer, not nobody
                with state.reading:
                    pass
            return
        if not state.reading.acquire(blocking=wait or not usable):
            return  # another thread is reading it now
        try:
            with state.lock:
                now = self.clock.now()
                if not self._due(group, state, now):
                    return  # the thread we waited for has just read it
                state.tried_at = now
                if state.reader is None:
                    state.reader = GroupReader(name, group, self._policy, self.env, self._sleep)
                reader = state.reader
            try:
                read = reader.read()
            except GroupUnreadable as exc:
                with state.lock:
                    self._failed(name, state, now, exc)
                return
            with state.lock:
                self._succeeded(name, state, now, read)
        finally:
            state.reading.release()

    def _failed(self, name: str, state: _State, now: datetime, exc: GroupUnreadable) -> None:
        state.wait = exc.retry_after or timedelta(0)
        if state.failing_since is None:
            state.failing_since = now
            log.warning(
                "event=directory_group_unreadable group=%s source=%r problem=%r",
                name,
                where_from(self.groups[name]),
                str(exc),
            )
        state.problem = str(exc)

    def _succeeded(self, name: str, state: _State, now: datetime, read: Membership) -> None:
        if state.failing_since is not None:
            log.info("event=directory_group_recovered group=%s", name)
        if read.unmapped:
            log.warning(
                "event=directory_group_unmapped group=%s people=%d first=%r what=no e-mail "
                "or Slack ID to know them by",
                name,
                len(read.unmapped),
                read.unmapped[0],
            )
        state.read, state.read_at, state.wait = read, now, timedelta(0)
        state.failing_since, state.problem, state.stale_logged = None, "", False

    # ---------------------------------------------------------- telling security

    def watch(self) -> list[GroupChange]:
        """The outages to tell security of, once each: a group that stopped answering, and
        one that answers again after an outage it was told of. Call `told` once it is told."""
        changes = []
        for name, group in self.groups.items():
            state = self._states[name]
            with state.lock:
                if state.failing_since is not None and state.told_down != state.failing_since:
                    changes.append(
                        GroupChange(
                            name,
                            where_from(group),
                            True,
                            state.failing_since,
                            state.problem,
                            state.read_at,
                            state.read_at + group.stale_after if state.read_at else None,
                        )
                    )
                elif state.failing_since is None and state.told_down is not None:
                    assert state.read_at is not None
                    changes.append(GroupChange(name, where_from(group), False, state.read_at))
        return changes

    def told(self, change: GroupChange) -> None:
        state = self._states[change.group]
        with state.lock:
            state.told_down = change.since if change.down else None

    # ------------------------------------------------------------------ describing

    def status(self) -> list[GroupStatus]:
        now = self.clock.now()
        found = []
        for name, group in self.groups.items():
            state = self._states[name]
            fresh = state.read_at is not None and now - state.read_at <= group.stale_after
            found.append(
                GroupStatus(
                    name,
                    group.kind,
                    state.read_at is not None and state.failing_since is None,
                    fresh,
                    state.read.people if state.read else 0,
                    state.read_at,
                )
            )
        return found

    def describe(self, name: str) -> str:
        """Where the group's members come from and how fresh that is: 'from LDAP group
        cn=…: 12 people, read 03:55'."""
        group = self.groups[name]
        read = self._fresh(name, read_if_due=True)
        state = self._states[name]
        origin = f"from {where_from(group)}"
        if state.read_at is None or state.read is None:
            return f"{origin}: not read ({state.problem}), so nobody is in it"
        people = plural(state.read.people, "person", "people")
        off = (
            f", {plural(len(state.read.disabled), 'disabled account')} left out"
            if (state.read.disabled)
            else ""
        )
        at = self._local(state.read_at)
        if read is None:
            return (
                f"{origin}: last read {at}, unreadable since "
                f"{self._local(state.failing_since)}, so nobody is in it"
            )
        if state.failing_since is not None:
            return (
                f"{origin}: {people}{off}, read {at} (unreadable since "
                f"{self._local(state.failing_since)})"
            )
        return f"{origin}: {people}{off}, read {at}"

    def card_line(self, name: str) -> str:
        """Where the group's approvers came from and how fresh, in the approver card's words
        ('per Entra ID group 1b2c…, read 03:12'), without asking the directory."""
        origin = f"per {where_from(self.groups[name])}"
        read = self._fresh(name, read_if_due=False)
        state = self._states[name]
        with state.lock:
            read_at, failing_since = state.read_at, state.failing_since
        if read_at is None:
            return f"{origin}: not read yet, so nobody in it can approve"
        if read is None:
            return (
                f"{origin}: unreadable since {self._local(failing_since)}, last read "
                f"{self._local(read_at)}, so nobody in it can approve"
            )
        if failing_since is not None:
            return (
                f"{origin}, read {self._local(read_at)} (unreadable since "
                f"{self._local(failing_since)})"
            )
        return f"{origin}, read {self._local(read_at)}"

    def _local(self, at: datetime | None) -> str:
        return "?" if at is None else at.astimezone(self.zone).strftime("%H:%M")


def path_groups(policy: Policy, path: str) -> list[str]:
    """One line for each directory group among the approvers of `path`, for the approver
    card: where its approvers came from and how fresh that is, 'ward7-leads per LDAP group
    CN=Ward 7 Leads,…, read 03:55'. Listed groups add nothing."""
    spec = policy.paths.get(path)
    directory = policy.directory_groups()
    lookup = policy.group_lookup
    lines: list[str] = []
    for approver in spec.approvers if spec else []:
        name = approver.group
        if name is None or name not in directory:
            continue
        if isinstance(lookup, DirectoryGroups) and name in lookup.groups:
            lines.append(f"{name} {lookup.card_line(name)}")
        else:
            lines.append(
                f"{name} per {where_from(directory[name])}: not read here, so nobody in it "
                "can approve"
            )
    return list(dict.fromkeys(lines))


def with_directory_groups(
    policy: Policy,
    clock: Clock | None = None,
    kept: dict[tuple[str, str], _State] | None = None,
) -> Policy:
    """The policy, reading its directory groups through a cache that keeps what this process
    has already read of the same group (`kept`, by default the process's own)."""
    if not policy.directory_groups():
        return policy
    cache = DirectoryGroups(policy, clock, kept=_KEPT if kept is None else kept)
    _LIVE[:] = [cache]
    return policy.with_groups(cache)


def groups_now() -> list[GroupStatus]:
    """How this process last read each directory group of the policy it loaded last."""
    return _LIVE[0].status() if _LIVE else []


def describe(policy: Policy, name: str) -> str:
    """Where a group's members come from, in a person's words."""
    group = policy.groups.get(name)
    if group is None:
        return "not in the policy"
    if isinstance(group, list):
        return f"listed in the policy ({plural(len(group), 'person', 'people')})"
    lookup = policy.group_lookup
    if isinstance(lookup, DirectoryGroups):
        return lookup.describe(name)
    return f"from {where_from(group)}: not read here, so nobody is in it"
