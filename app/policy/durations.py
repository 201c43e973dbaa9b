"""Durations as people write them in a policy or a slash command: `15m`, `2h`, `1h30m`, `1d`."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta

_DURATION = re.compile(r"^(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?$")


class DurationError(ValueError):
    pass


# Nothing just-in-time lasts longer; a bigger number is a typo (and past it, date arithmetic
# overflows).
LONGEST = timedelta(days=366)


def parse_duration(text: str) -> timedelta:
    """Parse `15m`, `2h`, `1h30m` or `1d`; anything else (including zero) is an error."""
    cleaned = text.strip().lower().replace(" ", "")
    match = _DURATION.match(cleaned)
    if not cleaned or match is None:
        raise DurationError(f"'{text}' is not a duration; write it like 15m, 2h or 1h30m")
    days, hours, minutes = (int(match.group(k) or 0) for k in ("d", "h", "m"))
    if max(days, hours // 24, minutes // (24 * 60)) > LONGEST.days:
        raise DurationError(f"'{text[:40]}' is more than a year; write it like 15m, 2h or 1h30m")
    value = timedelta(days=days, hours=hours, minutes=minutes)
    if value <= timedelta(0):
        raise DurationError(f"'{text}' is zero; a duration must be at least 1m")
    if value > LONGEST:
        raise DurationError(f"'{text[:40]}' is more than a year; write it like 15m, 2h or 1h30m")
    return value


def format_duration(value: timedelta) -> str:
    """The inverse of parse_duration, rounded down to whole minutes: 5400 s -> `1h30m`."""
    minutes = int(value.total_seconds()) // 60
    if minutes <= 0:
        return "0m"
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    parts = [
        f"{days}d" if days else "",
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
    ]
    return "".join(parts)


_WORDS: tuple[tuple[re.Pattern[str], Callable[[str], str]], ...] = (
    (re.compile(r"(\d+)\s*(?:weeks?|wks?|w)\b"), lambda n: f"{int(n) * 7}d"),
    (re.compile(r"(\d+)\s*(?:days?|d)\b"), lambda n: f"{n}d"),
    (re.compile(r"(\d+)\s*(?:hours?|hrs?|h)\b"), lambda n: f"{n}h"),
    (re.compile(r"(\d+)\s*(?:minutes?|mins?|m)\b"), lambda n: f"{n}m"),
)


def _in(unit: Callable[[str], str]) -> Callable[[re.Match[str]], str]:
    return lambda match: unit(match.group(1))


def suggest_duration(text: str) -> str | None:
    """What someone probably meant by a duration that does not parse: '2 weeks' -> '14d',
    '1.5h' -> '1h30m', '3 days' -> '3d', '90' -> None (the unit cannot be guessed)."""
    cleaned = text.strip().lower()
    decimal = re.fullmatch(r"(\d+)\.(\d+)\s*(h|hours?|d|days?)", cleaned)
    if decimal:
        per = 60 if decimal.group(3).startswith("h") else 24 * 60
        minutes = round(float(f"{decimal.group(1)}.{decimal.group(2)}") * per)
        cleaned = f"{minutes}m"
    else:
        for pattern, unit in _WORDS:
            cleaned = pattern.sub(_in(unit), cleaned)
        cleaned = re.sub(r"[\s,]+|and", "", cleaned)
    try:
        value = parse_duration(cleaned)
    except DurationError:
        return None
    return format_duration(value)
