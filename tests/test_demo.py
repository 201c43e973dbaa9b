"""`wardkey demo` runs the night shift through the real app and prints what Slack would show."""

from __future__ import annotations

import pytest

from app.cli import main


def test_the_demo_tells_the_whole_night_and_leaves_nothing_behind(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["demo"]) == 0
    transcript = capsys.readouterr().out
    # Each scene, in order, with the people and buttons a reader would see in Slack.
    scenes = [
        "Amira Khan ▸ /jit request epr-console:ward-admin 30m",
        "WardKey → Ben Hughes (DM):",
        "[Approve] [Deny]",
        "Ben Hughes clicks [Approve] on card #1",
        "EPR console: gave amira WARD_ADMIN",
        "Amira Khan opens WardKey's App Home",
        "`epr-console:ward-admin` · 30m left (until 03:42)",
        "❌ Denied by ben@demo.nhs.uk at 03:15: bulk edits go through the change board",
        "is not a target and role; write them as target:role.",
        "[Approve] (asks to confirm) [Deny]",
        "You are not an approver for the engineering path right now",
        "⏳ Waiting: 1 of 2 approvals (erin@demo.nhs.uk)",
        "EPR console: gave dev INTERFACE_ENGINE_ADMIN",
        "WardKey → #security-alerts:",
        "ends in 10m, at 03:42",
        "[Extend 30m] [Revoke now] (asks to confirm)",
        "🔒 Ended at 03:42 (expired)",
        "WardKey draws the App Home of Amira Khan:",  # she looked at it this shift
        "No active elevation.",
        "EPR console: took WARD_ADMIN from chloe",
        "WardKey → #manager-reviews:",
        "[Justified] [Not justified]",
        "WardKey → Chloe Evans (only they see this): You cannot review your own break-glass use.",
        "Hana Novak ▸ types the note",
        "Break-glass review #4: ✅ Justified: hana@demo.nhs.uk",
        "WARDKEY DAILY DIGEST, MON 30 NOV",
        "• #4 chloe@demo.nhs.uk `epr-console:ward-admin` for 1h",
        "• clinical: p50 1m, p95 2m (2 decided)",
        "EPR console access still held: none",
        # ...and the review's steps (sent, decided) and the digest.
        "Audit trail: OK: 23 events verified",
    ]
    position = 0
    for line in scenes:
        found = transcript.find(line, position)
        assert found >= 0, f"missing or out of order: {line!r}"
        position = found
