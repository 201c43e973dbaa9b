"""On-call sources as Slack shows them: the security channel's word that a rota's source stopped
answering (what WardKey does meanwhile) or answers again."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from app.blockkit import inert
from app.oncall.cache import SourceChange
from app.wording import clock_time


def source_words(change: SourceChange, zone: ZoneInfo) -> str:
    at = clock_time(change.since, zone)
    if not change.down:
        return (
            f"✅ Who is on call for {change.rota} is read from {change.source} again "
            f"(read {at}): its on-call people approve again."
        )
    escalation = change.escalation
    goes = (
        f"requests with no other approver go at once to its escalation group {escalation}"
        if escalation
        else "requests with no other approver have no escalation group to go to (set "
        f"`escalation` on the {change.rota} rota); WardKey admins are alerted for each"
    )
    if change.last_read is None:
        now = "Nobody from this rota can approve until it is read"
    else:
        now = (
            f"WardKey uses its last good read ({clock_time(change.last_read, zone)}) "
            f"until {clock_time(change.stale_at, zone)}; after that nobody from this "
            "rota can approve"
        )
    return (
        f"📅 Who is on call for {change.rota} cannot be read from {change.source} since "
        f"{at} ({inert(change.problem)}). {now}, and {goes}. WardKey tries again every "
        "few minutes and says here when it reads it again."
    )
