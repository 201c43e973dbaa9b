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
from app.oncall.sources import SourceUnreadable, read_pagerduty, read_roster
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
    lock: threading.Lock = field(default_factory=threading.Lock)


# What the running process has read, by rota and source, kept across policy reloads: a reload
# while a source is down keeps its last good read (and its stale_after clock) instead of
# starting from nothing, and an unchanged source is not read again at once.
_KEPT: dict[tuple[str, str], _State] = {}
_KEPT_LOCK = threading.Lock()


def where_from(source: RotaSource) -> str:
    """The source in a person's words: 'PagerDuty schedule PABC123', 'roster export ward7.csv'."""
    if source.pagerduty is not None:
        return f"PagerDuty schedule {source.pagerduty.schedule}"
    roster = source.roster
    assert roster is not None
    place = roster.file if roster.file is not None else roster.url
    return f"roster export {place}"


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
                return None
            return state.shifts

    def _read(self, source: RotaSource, now: datetime) -> list[Shift]:
        if source.pagerduty is not None:
            return read_pagerduty(source.pagerduty, now, self.env, self.client)
        assert source.roster is not None
        return read_roster(source.roster, self.zone, self.client)

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
    global _client
    if not any(r.source for r in policy.oncall.values()):
        return policy
    if _client is None:
        _client = httpx.Client(follow_redirects=False)
    return policy.with_on_call(
        OnCall(policy, clock, client=_client, kept=_KEPT if kept is None else kept)
    )


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
    """One line for each rota with a source among the approvers of `path`, for the approver
    card under who is on call: 'ward7-nic on call from roster export ward7.ics, read 03:55'.
    Rotas the policy lists itself, and groups, add nothing."""
    spec = policy.paths.get(path)
    lines: list[str] = []
    for approver in spec.approvers if spec else []:
        rota = policy.oncall.get(approver.rota or "")
        if rota is not None and rota.source is not None and approver.rota:
            lines.append(f"{approver.rota} on call {describe(policy, approver.rota)}")
    return list(dict.fromkeys(lines))
