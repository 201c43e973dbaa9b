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
        # Who may ask is read from the trust's Entra ID group (a Graph stand-in); the leaver
        # disabled there is left out.
        "(clinical-systems, who may ask for ward-admin, is read from Entra ID group "
        "3b8f2c4d-5e6a-4b7c-8d9e-0f1a2b3c4d5e: 3 people, 1 disabled account left out, read 03:10)",
        # The on-call lead is read from the ward's rostering export; the card says so.
        "who is on call comes from the ward's e-rostering export, clinical_roster.csv",
        "Amira Khan ▸ /jit request epr-console:ward-admin 30m",
        "WardKey → Ben Hughes (DM):",
        "📅 clinical-oncall on call per rostering export (csv), read 03:10",
        "[Approve] [Deny]",
        "Ben Hughes clicks [Approve] on card #1",
        "EPR console: gave amira WARD_ADMIN",
        "Amira Khan opens WardKey's App Home",
        "`epr-console:ward-admin` · 30m left (until 03:42)",
        "❌ Denied by Ben Hughes at 03:15: bulk edits go through the change board",
        "is not a target and role; write them as target:role.",
        "[Approve] (asks to confirm) [Deny]",
        "You are not an approver for the engineering path right now",
        "⏳ Waiting: 1 of 2 approvals (Erin Walsh)",
        "EPR console: gave dev INTERFACE_ENGINE_ADMIN",
        # Break-glass while her own request for the access waits: it replaces that request.
        "Chloe Evans ▸ /jit request epr-console:ward-admin 30m ED admissions screen",
        "[Cancel request] (asks to confirm)",
        "Chloe Evans ▸ /breakglass epr-console:ward-admin",
        # The ack says only what is true when Slack shows it: nothing is granted yet.
        "Break-glass request recorded. I'll answer here as soon as access is active, or say",
        "Break-glass #5: ✅",
        "It replaces your request #4, waiting since 03:24, which is now cancelled",
        "Access request #4: ↩️ Cancelled by Chloe Evans at 03:26: replaced by break-glass #5",
        "WardKey → #security-alerts:",
        "ends in 10m, at 03:42",
        "[Extend 30m] [Revoke now] (asks to confirm)",
        "🔒 Ended at 03:42 (expired)",
        "WardKey draws the App Home of Amira Khan:",  # she looked at it this shift
        "No active access.",
        "EPR console: took WARD_ADMIN from chloe",
        "WardKey → #manager-reviews:",
        # ── the review card ─────────────────────────────────────────────────────────────
        # (its richer form: names, earlier requests for the access, 30-day break-glass count)
        "BREAK-GLASS REVIEW #5",
        "*Who* @Chloe Evans (Chloe Evans, Clinical systems analyst)",
        "*Alerted* #security-alerts, Hana Novak, Gita Rao",
        "*Before this*, the last 24 hours",
        "• #2 asked 03:14, *denied* 03:15 by Ben Hughes: “bulk edits go through the change board",
        "• #4 asked 03:24, still waiting when this break-glass use replaced it",
        "This is their only break-glass use in the last 30 days.",
        # ──────────────────────────────────────────────────────────────────────────────────
        "[Justified] [Not justified]",
        "WardKey → Chloe Evans (only they see this): You cannot review your own break-glass use.",
        "Hana Novak ▸ types the note",
        "Break-glass review #5: ✅ Justified: Hana Novak",
        # A request withdrawn from the App Home: every card says who and when, in place.
        "Amira Khan ▸ /jit request epr-console:ward-admin 30m re-send ward 12 discharge",
        "*#6* `epr-console:ward-admin` · ⏳ Waiting",
        "[Cancel request] (asks to confirm)",
        "Amira Khan clicks [Cancel request] for #6 on their App Home",
        "WardKey updates the card in place for Ben Hughes (DM), Hana Novak (DM), Gita Rao (DM):",
        "Access request #6: ↩️ Cancelled by Amira Khan at 05:12",
        "Nothing waiting.",
        "WARDKEY DAILY DIGEST, MON 30 NOV",
        "• #5 Chloe Evans `epr-console:ward-admin` for 1h",
        "• clinical: p50 1m, p95 2m (2 decided)",
        "EPR console access still held: none",
        # ...and the review's steps (sent, decided) and the digest.
        "Audit trail: OK: 27 events verified",
    ]
    assert "granting now" not in transcript
    # People by name and plurals right: no e-mail addresses and no "(s)" anywhere.
    assert "@demo.nhs.uk" not in transcript and "(s)" not in transcript
    position = 0
    for line in scenes:
        found = transcript.find(line, position)
        assert found >= 0, f"missing or out of order: {line!r}"
        position = found
