"""Shifts read from a rostering export (CSV or iCalendar) and who is on call at an instant.

A shift covers [start, end): the hand-over instant belongs to the next shift. Overlapping shifts
put everyone in them on call at once. Times are instants (a CSV time carries its offset; an
iCalendar time its TZID or Z), so a daylight-saving change moves nothing.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

import icalendar

CSV_COLUMNS = ("start", "end", "email")


class RosterError(ValueError):
    """The export cannot be read as a roster; the message names the line or event."""


@dataclass(frozen=True)
class Shift:
    start: datetime | None  # None: since for ever (PagerDuty's permanent on-call)
    end: datetime | None  # None: for ever
    person: str
    role: str | None = None

    def __post_init__(self) -> None:
        # In UTC: two times in the same zone compare by wall clock, wrong across a DST change.
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None:
                if value.tzinfo is None:
                    raise ValueError(f"a shift's {name} needs a time zone")
                object.__setattr__(self, name, value.astimezone(UTC))

    def covers(self, at: datetime) -> bool:
        return (self.start is None or self.start <= at) and (self.end is None or at < self.end)


def on_call(shifts: Iterable[Shift], at: datetime) -> list[str]:
    """Everyone whose shift covers `at`, earliest shift first, without repeats."""
    if at.tzinfo is None:
        raise ValueError("on_call needs a timezone-aware instant")
    covering = sorted(
        (s for s in shifts if s.covers(at)),
        key=lambda s: (s.start is not None, s.start or at),
    )
    return list(dict.fromkeys(s.person for s in covering))


def with_role(shifts: Sequence[Shift], role: str | None) -> list[Shift]:
    return list(shifts) if role is None else [s for s in shifts if s.role == role]


def _instant(text: str, where: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise RosterError(
            f"{where}: '{text[:40]}' is not a date and time (write 2026-03-28T20:00:00+00:00)"
        ) from None
    if value.tzinfo is None:
        raise RosterError(
            f"{where}: '{text[:40]}' has no UTC offset (write it like 2026-03-28T20:00:00+00:00 "
            "or ...Z)"
        )
    return value


def parse_csv(text: str) -> list[Shift]:
    """A CSV export with a header row naming at least start, end and email (role optional)."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    header = [(name or "").strip().lower() for name in reader.fieldnames or []]
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise RosterError(f"line 1: the header has no {', '.join(missing)} column")
    reader.fieldnames = header
    shifts: list[Shift] = []
    for row in reader:
        where = f"line {reader.line_num}"
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue
        start = _instant(row.get("start") or "", f"{where}, start")
        end = _instant(row.get("end") or "", f"{where}, end")
        person = (row.get("email") or "").strip()
        if not person:
            raise RosterError(f"{where}, email: empty")
        if end <= start:
            raise RosterError(f"{where}: end is not after start")
        role = (row.get("role") or "").strip() or None
        shifts.append(Shift(start, end, person, role))
    return shifts


def _ics_instant(value: object, zone: ZoneInfo, where: str) -> datetime:
    if isinstance(value, datetime):
        # A floating time (no TZID, no Z) is read in the policy's time zone.
        return value if value.tzinfo is not None else value.replace(tzinfo=zone)
    if isinstance(value, date):
        return datetime.combine(value, time(0), tzinfo=zone)
    raise RosterError(f"{where}: not a date or date-time")


def _people(event: icalendar.cal.Component) -> list[str]:
    found: list[str] = []
    attendees = event.get("ATTENDEE")
    for attendee in attendees if isinstance(attendees, list) else [attendees]:
        if attendee is not None and str(attendee).lower().startswith("mailto:"):
            found.append(str(attendee)[len("mailto:") :].strip())
    person = event.get("X-WARDKEY-PERSON")
    if person is not None and str(person).strip():
        found.append(str(person).strip())
    return found


def parse_ics(data: bytes, zone: ZoneInfo) -> list[Shift]:
    """An iCalendar export: each VEVENT is a shift of each ATTENDEE (mailto:) or of the person
    X-WARDKEY-PERSON names; CATEGORIES carries the role; cancelled events are left out."""
    try:
        calendar = icalendar.Calendar.from_ical(data)
    except ValueError as exc:
        raise RosterError(f"not an iCalendar file: {str(exc)[:120]}") from None
    shifts: list[Shift] = []
    for event in calendar.walk("VEVENT"):
        where = f"event {event.get('UID') or event.get('SUMMARY') or '(no UID)'}"
        if str(event.get("STATUS", "")).upper() == "CANCELLED":
            continue
        if event.get("RRULE") is not None:
            raise RosterError(f"{where}: repeating events (RRULE) are not read; export each shift")
        if event.get("DTSTART") is None or event.get("DTEND") is None:
            raise RosterError(f"{where}: needs DTSTART and DTEND")
        start = _ics_instant(event.decoded("DTSTART"), zone, f"{where}, DTSTART")
        end = _ics_instant(event.decoded("DTEND"), zone, f"{where}, DTEND")
        if end <= start:
            raise RosterError(f"{where}: DTEND is not after DTSTART")
        people = _people(event)
        if not people:
            raise RosterError(f"{where}: no ATTENDEE with a mailto: address or X-WARDKEY-PERSON")
        categories = event.get("CATEGORIES")
        roles: list[str] = []
        for item in categories if isinstance(categories, list) else [categories]:
            if item is not None:
                roles.extend(str(c) for c in getattr(item, "cats", [item]))
        for person in people:
            if roles:
                shifts.extend(Shift(start, end, person, role) for role in roles)
            else:
                shifts.append(Shift(start, end, person))
    return shifts
