"""Reading a rota's source: a rostering export (file or URL), a PagerDuty schedule or
escalation policy, or an Opsgenie schedule.

Every failure is a `SourceUnreadable` whose message says what went wrong without any token.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import httpx

from app.oncall.shifts import RosterError, Shift, parse_csv, parse_ics, with_role
from app.policy.model import OpsgenieSource, PagerDutySource, RosterSource

TIMEOUT = httpx.Timeout(10.0)
# How far either side of now a PagerDuty read reaches: wide enough that a lookup at any
# instant until the next refresh is answered from one read.
PAGERDUTY_BEHIND = timedelta(hours=1)
PAGERDUTY_AHEAD = timedelta(hours=36)
PAGERDUTY_PAGE = 100
# An Opsgenie schedule ID (a UUID); anything else is read as the schedule's name.
OPSGENIE_ID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


class SourceUnreadable(Exception):
    """The source could not be read or did not make sense; the message is safe to log.
    `retry_after`: how long the source asked us to wait (HTTP 429's Retry-After)."""

    def __init__(self, message: str, retry_after: timedelta | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _retry_after(response: httpx.Response) -> timedelta | None:
    value = response.headers.get("Retry-After", "")
    return timedelta(seconds=int(value)) if value.isdigit() else None


def shown_url(url: str) -> str:
    """A URL as WardKey shows it in logs, alerts and `policy check`: a rostering system's
    export link often carries its key in the query string or the user part, so only the
    scheme, host and path are shown (a query is marked `?…`)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "…" if parts.query else "", ""))


def read_roster(source: RosterSource, zone: ZoneInfo, client: httpx.Client) -> list[Shift]:
    if source.file is not None:
        try:
            data = Path(source.file).read_bytes()
        except OSError as exc:
            raise SourceUnreadable(f"cannot read {source.file}: {exc.strerror}") from None
        where = source.file
    else:
        assert source.url is not None
        where = shown_url(source.url)
        try:
            response = client.get(source.url, timeout=TIMEOUT)
        except httpx.HTTPError as exc:
            raise SourceUnreadable(f"cannot fetch {where}: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise SourceUnreadable(f"{where} answered HTTP {response.status_code}")
        data = response.content
    try:
        if source.format == "csv":
            shifts = parse_csv(data.decode("utf-8-sig"))
        else:
            shifts = parse_ics(data, zone)
    except (RosterError, UnicodeDecodeError) as exc:
        raise SourceUnreadable(f"{where}: {exc}") from None
    return with_role(shifts, source.role)


def _instant(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(str(value))


def read_pagerduty(
    source: PagerDutySource, now: datetime, env: Mapping[str, str], client: httpx.Client
) -> list[Shift]:
    """The on-call entries around `now` of the schedule, or of the escalation policy's level
    (GET /oncalls, every page)."""
    token = env.get(source.token_env, "")
    if not token:
        raise SourceUnreadable(f"{source.token_env} is not set")
    url = source.api_url.rstrip("/") + "/oncalls"
    headers = {
        "Authorization": f"Token token={token}",
        "Accept": "application/vnd.pagerduty+json;version=2",
    }
    shifts: list[Shift] = []
    offset = 0
    while True:
        which = (
            ("schedule_ids[]", source.schedule)
            if source.schedule is not None
            else ("escalation_policy_ids[]", source.escalation_policy)
        )
        params: list[tuple[str, str | int | float | bool | None]] = [
            which,
            ("include[]", "users"),
            ("since", (now - PAGERDUTY_BEHIND).isoformat()),
            ("until", (now + PAGERDUTY_AHEAD).isoformat()),
            ("time_zone", "UTC"),
            ("limit", PAGERDUTY_PAGE),
            ("offset", offset),
        ]
        try:
            response = client.get(url, params=params, headers=headers, timeout=TIMEOUT)
        except httpx.HTTPError as exc:
            raise SourceUnreadable(f"PagerDuty: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise SourceUnreadable(
                f"PagerDuty answered HTTP {response.status_code}: {_error(response)}",
                _retry_after(response) if response.status_code == 429 else None,
            )
        try:
            body = response.json()
            entries = body["oncalls"]
            for entry in entries:
                if source.escalation_policy is not None and entry["escalation_level"] != (
                    source.level
                ):
                    continue
                user = entry["user"]
                person = user.get("email")
                if not person:
                    raise SourceUnreadable(f"PagerDuty user {user.get('id')} has no e-mail")
                shifts.append(
                    Shift(_instant(entry.get("start")), _instant(entry.get("end")), person)
                )
        except (ValueError, KeyError, TypeError) as exc:
            raise SourceUnreadable(
                f"PagerDuty: unexpected response ({type(exc).__name__})"
            ) from None
        if not body.get("more") or not entries:
            return shifts
        offset += len(entries)


def read_opsgenie(
    source: OpsgenieSource, now: datetime, env: Mapping[str, str], client: httpx.Client
) -> list[Shift]:
    """Who the schedule has on call at `now` (GET /v2/schedules/{schedule}/on-calls, flat:
    each recipient's username, which in Opsgenie is their e-mail address). Opsgenie answers
    for an instant, so each is on call until the next read."""
    key = env.get(source.token_env, "")
    if not key:
        raise SourceUnreadable(f"{source.token_env} is not set")
    url = f"{source.api_url.rstrip('/')}/v2/schedules/{quote(source.schedule, safe='')}/on-calls"
    params: list[tuple[str, str | int | float | bool | None]] = [
        ("flat", "true"),
        ("date", now.astimezone(UTC).isoformat(timespec="seconds")),
    ]
    if not OPSGENIE_ID.fullmatch(source.schedule):
        params.append(("scheduleIdentifierType", "name"))
    try:
        response = client.get(
            url, params=params, headers={"Authorization": f"GenieKey {key}"}, timeout=TIMEOUT
        )
    except httpx.HTTPError as exc:
        raise SourceUnreadable(f"Opsgenie: {type(exc).__name__}") from None
    if response.status_code != 200:
        raise SourceUnreadable(
            f"Opsgenie answered HTTP {response.status_code}: {_message(response)}",
            _retry_after(response) if response.status_code == 429 else None,
        )
    try:
        recipients = response.json()["data"]["onCallRecipients"]
        people = [str(r).strip() for r in recipients]
    except (ValueError, KeyError, TypeError) as exc:
        raise SourceUnreadable(f"Opsgenie: unexpected response ({type(exc).__name__})") from None
    if any(not p for p in people):
        raise SourceUnreadable("Opsgenie: an on-call recipient with no username")
    return [Shift(None, None, person) for person in dict.fromkeys(people)]


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message", ""))[:200] or response.reason_phrase
    except (ValueError, AttributeError):
        return response.reason_phrase


def _error(response: httpx.Response) -> str:
    try:
        error = response.json().get("error", {})
        return str(error.get("message", ""))[:200] or response.reason_phrase
    except (ValueError, AttributeError):
        return response.reason_phrase
