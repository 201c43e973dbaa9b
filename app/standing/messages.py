"""Standing privilege as Slack shows it: the security channel's alert of what a look found, and
the `/jit standing` answer (the last look's holders, and the targets it could not vouch for)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.blockkit import escape
from app.standing.service import StandingHolder, StandingReport
from app.wording import plural


def found_text(report: StandingReport) -> str | None:
    """What a look found that security must hear of (new holders, unreadable targets), or None
    when there is nothing to say."""
    lines = [
        f"• `{escape(f.target)}` {escape(f.entitlement)}: `{escape(f.account)}` "
        + (
            "removed"
            if f.removed
            else f"left in place{f' ({escape(f.detail)})' if f.detail else ''}"
        )
        for f in report.found
    ]
    lines += [
        f"• `{escape(t)}` could not be read: {escape(why)}" for t, why in report.unreadable.items()
    ]
    if not lines:
        return None
    return "🔎 Standing privilege: access that no WardKey grant covers\n" + "\n".join(lines)


def holders_text(
    holders: list[StandingHolder], unchecked: dict[str, datetime | None], zone: Any
) -> str:
    """The last hourly look's findings; never "none found" for a target it did not read."""
    lines = []
    if holders:
        lines.append("*Standing access (held with no WardKey grant), at the last hourly look*")
        for h in holders:
            lines.append(
                f"• `{escape(h.target)}` {escape(h.entitlement)}: `{escape(h.account)}` "
                f"(since {h.first_seen.astimezone(zone):%d %b %H:%M})"
            )
    elif not unchecked:
        lines.append("No standing access found at the last look: every holder had a grant.")
    else:
        lines.append("No standing access found on the targets that were read.")
    if unchecked:
        lines.append(
            f"⚠️ *Not checked* ({plural(len(unchecked), 'target')}; nothing is known of them "
            "now): "
            + ", ".join(
                f"`{escape(t)}` ("
                + (f"last read {at.astimezone(zone):%d %b %H:%M}" if at else "never read")
                + ")"
                for t, at in sorted(unchecked.items())
            )
            + ". `wardkey report standing` reads them and says why not."
        )
    return "\n".join(lines)[:3900]
