"""On-call rota maths: who is on call at an instant, in the policy's time zone.

Shifts are counted on local wall-clock dates, so a hand-off stays at 09:00 local across a daylight
saving change; override windows are turned into instants so an ambiguous hour cannot match twice.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from app.policy.model import WEEKDAYS, Rota, RotaOverride


def shift_start_date(rota: Rota, local: datetime) -> date:
    """The local date on which the shift covering `local` began."""
    day = local.date()
    if rota.rotation == "daily":
        return day if local.time() >= rota.handoff else day - timedelta(days=1)
    back = (local.weekday() - WEEKDAYS.index(rota.handoff_day)) % 7
    start = day - timedelta(days=back)
    if back == 0 and local.time() < rota.handoff:
        start -= timedelta(days=7)
    return start


def shift_index(rota: Rota, local: datetime) -> int:
    if rota.starts is None:
        raise ValueError("a rota without 'starts' has no shifts of its own")
    elapsed = (shift_start_date(rota, local) - rota.starts).days
    return elapsed if rota.rotation == "daily" else elapsed // 7


def scheduled_at(rota: Rota, at: datetime, zone: ZoneInfo) -> list[str]:
    """Members on call by the rotation alone, ignoring overrides."""
    if not rota.members or rota.rotation is None or rota.starts is None:
        return []
    count = min(rota.on_call, len(rota.members))
    first = shift_index(rota, at.astimezone(zone)) * count
    return [rota.members[(first + k) % len(rota.members)] for k in range(count)]


def override_window(override: RotaOverride, zone: ZoneInfo) -> tuple[datetime, datetime]:
    return override.start.replace(tzinfo=zone), override.end.replace(tzinfo=zone)


def on_call_at(rota: Rota, at: datetime, zone: ZoneInfo) -> list[str]:
    """Members on call at `at`: the rotation, then any override whose window covers `at`."""
    if at.tzinfo is None:
        raise ValueError("on_call_at needs a timezone-aware instant")
    on_call = scheduled_at(rota, at, zone)
    for override in rota.overrides:
        start, end = override_window(override, zone)
        if not start <= at < end:
            continue
        if override.replaces is None:
            on_call = [override.member]
        elif override.replaces in on_call:
            on_call = [override.member if m == override.replaces else m for m in on_call]
    seen: dict[str, None] = dict.fromkeys(on_call)
    return list(seen)
