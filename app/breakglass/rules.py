"""Break-glass budgets and flags as pure rules: the service reads the facts (earlier uses,
denials, requests) and these say which limits a new use passes and what is unusual about it.
Nothing here reads the database, Slack or a clock.

A day is the 24 hours before now and a week the 7 days before (rolling windows, the same in
every time zone); a use counts from the moment it began (granted at once, or confirmed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from app.policy.durations import format_duration
from app.policy.model import BreakGlassFlags, BreakGlassLimits, UseLimits
from app.wording import listed, plural

DAY, WEEK = timedelta(days=1), timedelta(days=7)
# Codes of the flags, as recorded in the audit event and shown on the cards.
AFTER_DENIAL = "after_denial"
OUTSIDE_HOURS = "outside_hours"
UNUSUAL_TARGET = "unusual_target"
CROWD = "crowd"


@dataclass(frozen=True)
class Use:
    """An earlier break-glass use: whose, since when, and until when it gave access."""

    request_id: int
    requester: str  # the person's key
    groups: frozenset[str]  # the policy groups they were in, as the policy says now
    target: str
    started: datetime
    granted_at: datetime | None
    ends: datetime | None  # when it ended, or when it is due to end

    def time_within(self, since: datetime, now: datetime) -> timedelta:
        """Access time this use gave between `since` and `now`."""
        if self.granted_at is None:
            return timedelta(0)
        end = min(self.ends or now, now)
        return max(timedelta(0), end - max(self.granted_at, since))


@dataclass(frozen=True)
class Breach:
    """One limit a new use would pass: the policy field and what it means, in words."""

    field: str
    words: str


@dataclass(frozen=True)
class Budget:
    """What the person (and each limited group of theirs) has used in the last day and week."""

    who: str  # the person's key or a group name
    uses_day: int
    uses_week: int
    time_day: timedelta
    time_week: timedelta


def usage(who: str, uses: Sequence[Use], now: datetime) -> Budget:
    day = [u for u in uses if u.started > now - DAY]
    week = [u for u in uses if u.started > now - WEEK]
    return Budget(
        who,
        len(day),
        len(week),
        sum((u.time_within(now - DAY, now) for u in uses), timedelta(0)),
        sum((u.time_within(now - WEEK, now) for u in uses), timedelta(0)),
    )


def budget_breaches(
    limits: BreakGlassLimits | None,
    person: str,
    groups: frozenset[str],
    uses: Sequence[Use],
    now: datetime,
    duration: timedelta,
) -> list[Breach]:
    """The limits a new use of `duration` by `person` (in `groups`) would pass, given the
    earlier `uses` (anyone's, at least the last 7 days); empty: within budget."""
    if limits is None:
        return []
    found: list[Breach] = []
    if limits.per_person is not None:
        own = [u for u in uses if u.requester == person]
        found += _breaches(limits.per_person, "per_person", "you", own, now, duration)
    for group, spec in limits.per_group.items():
        if group in groups:
            theirs = [u for u in uses if group in u.groups]
            found += _breaches(spec, f"per_group.{group}", group, theirs, now, duration)
    return found


def _breaches(
    spec: UseLimits, field: str, who: str, uses: Sequence[Use], now: datetime, duration: timedelta
) -> list[Breach]:
    used = usage(who, uses, now)
    have = "have" if who == "you" else "has"
    found: list[Breach] = []
    for limit, count, span, name in (
        (spec.uses_per_day, used.uses_day, "24 hours", "uses_per_day"),
        (spec.uses_per_week, used.uses_week, "7 days", "uses_per_week"),
    ):
        if limit is not None and count >= limit:
            found.append(
                Breach(
                    f"{field}.{name}",
                    f"{who} {have} broken glass {plural(count, 'time')} in the last {span}; "
                    f"{field}.{name} allows {limit}",
                )
            )
    if spec.cooldown is not None and uses:
        last = max(u.started for u in uses)
        if now - last < spec.cooldown:
            found.append(
                Breach(
                    f"{field}.cooldown",
                    f"the last use by {who} began {format_duration(now - last)} ago; "
                    f"{field}.cooldown asks for {format_duration(spec.cooldown)} between uses",
                )
            )
    for cap, spent, span, name in (
        (spec.time_per_day, used.time_day, "24 hours", "time_per_day"),
        (spec.time_per_week, used.time_week, "7 days", "time_per_week"),
    ):
        if cap is not None and spent + duration > cap:
            found.append(
                Breach(
                    f"{field}.{name}",
                    f"{format_duration(spent)} of break-glass in the last {span} by {who} and "
                    f"this use's {format_duration(duration)} would pass the "
                    f"{format_duration(cap)} {field}.{name} allows",
                )
            )
    return found


# -------------------------------------------------------------------------------- flags


@dataclass(frozen=True)
class Flag:
    code: str
    words: str  # names no person: it is shown in channels
    people: tuple[str, ...] = ()  # the others concerned (their keys), for the audit trail


@dataclass(frozen=True)
class FlagFacts:
    """What the flags are computed from, read by the service at the moment of the use."""

    now: datetime
    zone: ZoneInfo
    target: str
    # The same person's requests for the same access denied within after_denial_within:
    # (request number, when denied).
    denials: Sequence[tuple[int, datetime]] = ()
    # When the person made their other requests (any access) in the last history_days.
    own_requests: Sequence[datetime] = ()
    # The person's groups, and how many requests for the target their members made in the
    # last unusual_target_days (this use not counted).
    groups: frozenset[str] = frozenset()
    group_requests_for_target: int = 0
    # Other people who broke glass on the same target within crowd_window (their keys).
    crowd: Sequence[str] = ()


def flags(spec: BreakGlassFlags, facts: FlagFacts) -> list[Flag]:
    """What is unusual about this use, each flag with its reason in words."""
    found: list[Flag] = []
    if facts.denials:
        rid, when = max(facts.denials, key=lambda d: d[1])
        found.append(
            Flag(
                AFTER_DENIAL,
                f"used {format_duration(facts.now - when)} after #{rid}, a denied request for "
                "the same access",
            )
        )
    local = facts.now.astimezone(facts.zone).time()
    if spec.usual_hours is not None:
        start, end = spec.usual_hours
        if not _within(local, start, end):
            found.append(
                Flag(
                    OUTSIDE_HOURS,
                    f"at {local:%H:%M}, outside the usual hours {start:%H:%M}-{end:%H:%M}",
                )
            )
    elif len(facts.own_requests) >= spec.history_min_requests:
        minutes = [_minute(t.astimezone(facts.zone).time()) for t in facts.own_requests]
        if all(_apart(_minute(local), m) > 60 for m in minutes):
            found.append(
                Flag(
                    OUTSIDE_HOURS,
                    f"at {local:%H:%M}: none of their {plural(len(minutes), 'request')} in "
                    f"{spec.history_days} days was within an hour of this time of day",
                )
            )
    if facts.groups and facts.group_requests_for_target == 0:
        found.append(
            Flag(
                UNUSUAL_TARGET,
                f"no one in {listed(sorted(facts.groups))} asked for {facts.target} in "
                f"{plural(spec.unusual_target_days, 'day')}",
            )
        )
    others = sorted(set(facts.crowd))
    if len(others) + 1 >= spec.crowd_size:
        found.append(
            Flag(
                CROWD,
                f"{len(others) + 1} people broke glass on {facts.target} within "
                f"{format_duration(spec.crowd_window)}",
                tuple(others),
            )
        )
    return found


def _within(at: time, start: time, end: time) -> bool:
    return start <= at < end if start < end else (at >= start or at < end)


def _minute(at: time) -> int:
    return at.hour * 60 + at.minute


def _apart(a: int, b: int) -> int:
    """Minutes between two times of day, round the clock."""
    gap = abs(a - b) % (24 * 60)
    return min(gap, 24 * 60 - gap)
