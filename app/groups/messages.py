"""What the security channel is told about directory groups (plain text, one line each)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from app.blockkit import escape
from app.groups.cache import GroupChange


def _at(when: datetime | None, zone: ZoneInfo) -> str:
    return "?" if when is None else when.astimezone(zone).strftime("%H:%M")


def outage(change: GroupChange, zone: ZoneInfo) -> str:
    """A group that stopped answering, or answers again."""
    if not change.down:
        return (
            f"✅ Group {change.group} is read from {escape(change.source)} again "
            f"(read {_at(change.since, zone)}): its members may ask and approve as before."
        )
    if change.last_read is None:
        now = "It has never been read, so nobody is in it: its members can neither ask nor approve"
    else:
        now = (
            f"WardKey uses its last good read ({_at(change.last_read, zone)}) until "
            f"{_at(change.stale_at, zone)}; after that nobody is in it, so its members can "
            "neither ask nor approve (never the other way)"
        )
    return (
        f"📇 Group {change.group} cannot be read from {escape(change.source)} since "
        f"{_at(change.since, zone)} ({escape(change.problem)[:300]}). {now}. WardKey tries "
        "again every few minutes and says here when it reads it again."
    )


def leaver(
    request_id: int, who: str, access: str, group_words: str, disabled: bool, was_active: bool
) -> str:
    """Someone's access ended because the directory no longer has them in an eligible group."""
    why = "is disabled in the directory" if disabled else f"is no longer in {group_words}"
    done = "their access is being revoked" if was_active else "their waiting request is cancelled"
    return (
        f"🚪 Leaver: {escape(who)} {why}, so #{request_id} `{access}` ends: {done} "
        "(revoke_leavers). They have been told."
    )
