"""Who is on call in the rotas that have a source, read through a cache the policy consults.

Each rota's source is read again once `refresh_every` has passed since the last try (or the
longer Retry-After of a source that answered 429). When a read
fails, the last good answer is used until `stale_after` has passed since it was read (logged once);
after that the rota names nobody, so approval fails closed and a request waiting on that rota is
escalated to the rota's escalation group as when no approver is reachable.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import httpx

from app.clock import Clock, SystemClock
from app.oncall.shifts import Shift, on_call
from app.oncall.sources import (
    SourceUnreadable,
    read_opsgenie,
    read_pagerduty,
    read_roster,
    shown_url,
)
from app.policy.model import Policy, Rota, RotaSource

log = logging.getLogger(__name__)


@dataclass
class _State:
    shifts: list[Shift] | None = None  # the last good read
    read_at: datetime | None = None
    tried_at: datetime | None = None
    failing_since: datetime | None = None
    problem: str = ""
    wait: timedelta = timedelta(0)  # longer than refresh_every when the source asked (429)
    told: datetime | None = None  # the outage (its failing_since) security was told of
    stale_logged: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class SourceChange:
    """A rota's source stopped answering (`down`) or answers again, for security to be told
    once of each: `since` is when it failed (down) or was read again (back)."""

    rota: str
    source: str  # where_from's words
    down: bool
    since: datetime
    last_read: datetime | None  # the last good read (None: never read)
    stale_at: datetime | None  # when that read stops counting (None: never read)
    problem: str
    escalation: str | None  # the rota's escalation group


@dataclass(frozen=True)
class SourceStatus:
    """How a sourced rota stands in this process, for metrics."""

    rota: str
    kind: str  # roster, pagerduty, opsgenie
    readable: bool  # the last try succeeded
    read_at: datetime | None
    stale: bool  # names nobody: never read, or the last good read is older than stale_after


# The cache of the policy this process loaded last (with the process's own `_KEPT`), for
# metrics and the sweep that tells security of outages.
_CURRENT: OnCall | None = None

# What the running process has read, by rota and source, kept across policy reloads: a reload
# while a source is down keeps its last good read (and its stale_after clock) instead of
# starting from nothing, and an unchanged source is not read again at once.
_KEPT: dict[tuple[str, str], _State] = {}
_KEPT_LOCK = threading.Lock()


def where_from(source: RotaSource) -> str:
    """The source in a person's words: 'PagerDuty schedule PABC123', 'roster export ward7.csv',
    'Opsgenie schedule ward7-nic'."""
    if source.roster is not None:
        roster = source.roster
        place = roster.file if roster.file is not None else shown_url(roster.url or "")
        return f"roster export {place}"
    return card_words(source)


class OnCall:
    """The on-call cache for one policy: `policy.with_on_call(OnCall(policy).lookup)`."""

    def __init__(
        self,
        policy: Policy,
        clock: Clock | None = None,
        *,
        client: httpx.Client | None = None,
        env: Mapping[str, str] | None = None,
        kept: dict[tuple[str, str], _State] | None = None,
    ) -> None:
        """`kept`: states shared with earlier caches (a reload); none: this cache's own."""
        self.rotas: dict[str, Rota] = {n: r for n, r in policy.oncall.items() if r.source}
        self.zone = policy.zone
        self.clock = clock or SystemClock()
        self.client = client or httpx.Client(follow_redirects=False)
        self.env = os.environ if env is None else env
        if kept is None:
            self._states = {name: _State() for name in self.rotas}
        else:
            with _KEPT_LOCK:
                self._states = {
                    name: kept.setdefault((name, _key(rota)), _State())
                    for name, rota in self.rotas.items()
                }

    def lookup(self, rota: str, at: datetime) -> list[str]:
        """Who the rota's source says is on call at `at`; nobody once the answer is stale."""
        if rota not in self.rotas:
            return []
        shifts = self._fresh(rota)
        return [] if shifts is None else on_call(shifts, at)

    __call__ = lookup

    def people(self, rota: str) -> list[str]:
        """Everyone the rota's source has on call now or later, as last read well (nobody once
        that is stale), for `policy check --slack`."""
        if rota not in self.rotas:
            return []
        shifts = self._fresh(rota)
        now = self.clock.now()
        found = {s.person for s in shifts or [] if s.end is None or s.end > now}
        return sorted(found)

    def _fresh(self, name: str) -> list[Shift] | None:
        source = self.rotas[name].source
        assert source is not None
        state = self._states[name]
        with state.lock:
            now = self.clock.now()
            if state.tried_at is None or now - state.tried_at >= max(
                source.refresh_every, state.wait
            ):
                state.tried_at = now
                try:
                    shifts = self._read(source, now)
                except SourceUnreadable as exc:
                    state.wait = exc.retry_after or timedelta(0)
                    if state.failing_since is None:
                        state.failing_since = now
                        log.warning(
                            "event=oncall_source_unreadable rota=%s source=%r problem=%r",
                            name,
                            where_from(source),
                            str(exc),
                        )
                    state.problem = str(exc)
                else:
                    if state.failing_since is not None:
                        log.info("event=oncall_source_recovered rota=%s", name)
                    state.shifts, state.read_at, state.wait = shifts, now, timedelta(0)
                    state.failing_since, state.problem = None, ""
            if state.read_at is None or now - state.read_at > source.stale_after:
                if state.read_at is not None and not state.stale_logged:
                    state.stale_logged = True
                    log.error(
                        "event=oncall_source_stale rota=%s source=%r last_read=%s what=nobody "
                        "from this rota can approve until its source is read again",
                        name,
                        where_from(source),
                        state.read_at.isoformat(),
                    )
                return None
            state.stale_logged = False
            return state.shifts

    def _read(self, source: RotaSource, now: datetime) -> list[Shift]:
        if source.pagerduty is not None:
            return read_pagerduty(source.pagerduty, now, self.env, self.client)
        if source.opsgenie is not None:
            return read_opsgenie(source.opsgenie, now, self.env, self.client)
        assert source.roster is not None
        return read_roster(source.roster, self.zone, self.client)

    def watch(self) -> list[SourceChange]:
        """Read each source that is due, and say which have stopped answering or answer again
        since security was last told (`told` marks one as told)."""
        changes: list[SourceChange] = []
        for name, rota in self.rotas.items():
            self._fresh(name)
            source = rota.source
            assert source is not None
            state = self._states[name]
            with state.lock:
                if state.failing_since is not None and state.told != state.failing_since:
                    since, down = state.failing_since, True
                elif state.failing_since is None and state.told is not None:
                    since, down = state.read_at or self.clock.now(), False
                else:
                    continue
                changes.append(
                    SourceChange(
                        rota=name,
                        source=where_from(source),
                        down=down,
                        since=since,
                        last_read=state.read_at,
                        stale_at=None
                        if state.read_at is None
                        else state.read_at + source.stale_after,
                        problem=state.problem,
                        escalation=rota.escalation,
                    )
                )
        return changes

    def told(self, change: SourceChange) -> None:
        """Security has been told of `change`: not again for the same outage."""
        state = self._states.get(change.rota)
        if state is not None:
            with state.lock:
                state.told = change.since if change.down else None

    def status(self) -> list[SourceStatus]:
        """Each sourced rota as this process last read it (reads nothing)."""
        found: list[SourceStatus] = []
        now = self.clock.now()
        for name, rota in self.rotas.items():
            source = rota.source
            assert source is not None
            state = self._states[name]
            with state.lock:
                stale = state.read_at is None or now - state.read_at > source.stale_after
                found.append(
                    SourceStatus(
                        name,
                        kind_of(source),
                        state.tried_at is not None and state.failing_since is None,
                        state.read_at,
                        stale,
                    )
                )
        return found

    def card_line(self, rota: str) -> str:
        """Where the rota's on-call people came from and how fresh, in the approver card's
        words: 'on call per PagerDuty schedule PABC123, read 03:12'."""
        source = self.rotas[rota].source
        assert source is not None
        shifts = self._fresh(rota)
        state = self._states[rota]
        origin = f"on call per {card_words(source)}"
        if state.read_at is None:
            return f"{origin}: not read yet, so nobody from this rota can approve"
        read = self._local(state.read_at)
        if shifts is None:
            return (
                f"{origin}: unreadable since {self._local(state.failing_since)}, last read "
                f"{read}, so nobody from this rota can approve"
            )
        if state.failing_since is not None:
            return f"{origin}, read {read} (unreadable since {self._local(state.failing_since)})"
        return f"{origin}, read {read}"

    def stale(self, rota: str) -> bool:
        """True when the rota names nobody because its source has not been read in time."""
        return rota in self.rotas and self._fresh(rota) is None

    def describe(self, rota: str) -> str:
        """Where the rota's on-call people came from and how fresh that is, for a card or the
        policy check summary: 'from PagerDuty schedule PABC123, read 03:55'."""
        if rota not in self.rotas:
            return "from the policy"
        shifts = self._fresh(rota)
        source = self.rotas[rota].source
        assert source is not None
        state = self._states[rota]
        origin = f"from {where_from(source)}"
        if state.read_at is None:
            return f"{origin}: not read ({state.problem}), so nobody from this rota can approve"
        read = self._local(state.read_at)
        if shifts is None:
            return (
                f"{origin}: last read {read}, unreadable since {self._local(state.failing_since)}, "
                "so nobody from this rota can approve"
            )
        if state.failing_since is not None:
            return f"{origin}, read {read} (unreadable since {self._local(state.failing_since)})"
        return f"{origin}, read {read}"

    def _local(self, at: datetime | None) -> str:
        return "?" if at is None else at.astimezone(self.zone).strftime("%H:%M")


def kind_of(source: RotaSource) -> str:
    if source.pagerduty is not None:
        return "pagerduty"
    return "opsgenie" if source.opsgenie is not None else "roster"


def card_words(source: RotaSource) -> str:
    """The source for the approver card, with nothing a URL or path might carry:
    'PagerDuty schedule PABC123', 'PagerDuty escalation policy PXYZ789 (level 1)',
    'Opsgenie schedule ward7-nic', 'rostering export (ics)'."""
    if source.pagerduty is not None:
        pagerduty = source.pagerduty
        if pagerduty.schedule is not None:
            return f"PagerDuty schedule {pagerduty.schedule}"
        return (
            f"PagerDuty escalation policy {pagerduty.escalation_policy} (level {pagerduty.level})"
        )
    if source.opsgenie is not None:
        return f"Opsgenie schedule {source.opsgenie.schedule}"
    assert source.roster is not None
    return f"rostering export ({source.roster.format})"


def _key(rota: Rota) -> str:
    assert rota.source is not None
    return rota.source.model_dump_json()


_client: httpx.Client | None = None


def with_sources(
    policy: Policy, clock: Clock | None = None, kept: dict[tuple[str, str], _State] | None = None
) -> Policy:
    """The policy, reading its sourced rotas through a cache that keeps what this process has
    already read of the same rota and source (`kept`, by default the process's own), so a
    reload neither forgets a last good read nor reads again at once."""
    global _client, _CURRENT
    if not any(r.source for r in policy.oncall.values()):
        if kept is None:
            _CURRENT = None
        return policy
    if _client is None:
        _client = httpx.Client(follow_redirects=False)
    cache = OnCall(policy, clock, client=_client, kept=_KEPT if kept is None else kept)
    if kept is None:
        _CURRENT = cache
    return policy.with_on_call(cache)


def sources_now() -> list[SourceStatus]:
    """The sourced rotas of the policy this process loaded last, as read here, for metrics."""
    current = _CURRENT
    return [] if current is None else current.status()


def describe(policy: Policy, rota: str) -> str:
    """Where the rota's on-call people come from and how fresh that is, in a person's words:
    'from the policy (daily rotation of 2)', 'from PagerDuty schedule PWARD07, read 03:55'."""
    spec = policy.oncall.get(rota)
    if spec is None:
        return "not in the policy"
    if spec.source is None:
        return f"from the policy ({spec.rotation} rotation of {len(spec.members)})"
    lookup = policy.on_call_lookup
    if isinstance(lookup, OnCall):
        return lookup.describe(rota)
    return f"from {where_from(spec.source)}: not read here, so nobody from this rota can approve"


def path_sources(policy: Policy, path: str) -> list[str]:
    """One line for each rota among the approvers of `path`, for the approver card: where
    "on call now" came from and how fresh it is, 'ward7-nic on call per rostering export
    (ics), read 03:55' or 'clinical-oncall on call per the policy's rota'. Groups add nothing."""
    spec = policy.paths.get(path)
    lines: list[str] = []
    lookup = policy.on_call_lookup
    for approver in spec.approvers if spec else []:
        name = approver.rota
        rota = policy.oncall.get(name or "")
        if rota is None or name is None:
            continue
        if rota.source is None:
            lines.append(f"{name} on call per the policy's rota")
        elif isinstance(lookup, OnCall) and name in lookup.rotas:
            lines.append(f"{name} {lookup.card_line(name)}")
        else:
            lines.append(
                f"{name} on call per {card_words(rota.source)}: not read here, so nobody "
                "from this rota can approve"
            )
    return list(dict.fromkeys(lines))


def unread_sources(policy: Policy, path: str) -> list[str]:
    """Why rotas approving `path` name nobody because their source has not been read in
    time, in words for the no-approver-reachable alert."""
    spec = policy.paths.get(path)
    lookup = policy.on_call_lookup
    found: list[str] = []
    for approver in spec.approvers if spec else []:
        name = approver.rota or ""
        rota = policy.oncall.get(name)
        if rota is None or rota.source is None:
            continue
        if not isinstance(lookup, OnCall) or lookup.stale(name):
            found.append(
                f"who is on call for {name} could not be read from {card_words(rota.source)}"
            )
    return list(dict.fromkeys(found))
