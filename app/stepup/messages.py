"""What the security channel is told when a step-up sign-in looks like an attack (flows.py):
someone else signed in for an approver, a token that is not the provider's, or a sign-in's
answer sent twice."""

from __future__ import annotations

from collections.abc import Mapping

from app.blockkit import SLACK_SHOWS, Names, escape
from app.lifecycle.snapshots import RequestSnapshot

_WHY = {
    "wrong_person": "the identity provider signed in {signed_in_as}, not the approver",
    "bad_signature": "the ID token was not signed by the identity provider's keys (forged?)",
    "bad_claim:iss": "the ID token came from another identity provider",
    "bad_claim:aud": "the ID token was issued for another application",
    "bad_claim:nonce": "the ID token belonged to another sign-in",
    "state_replayed": "the identity provider's answer was sent a second time (replayed)",
    "other_browser": (
        "the sign-in was finished in another browser than opened the link (someone may have "
        "sent the approver a sign-in address to approve with their sign-in)"
    ),
}


def refusal_alert(
    facts: Mapping[str, object], view: RequestSnapshot, names: Names = SLACK_SHOWS
) -> str:
    """One line for the security channel about a refused step-up sign-in."""
    reason = str(facts.get("reason", ""))
    key = next((k for k in _WHY if reason == k or reason.startswith(k + ":")), reason)
    why = _WHY.get(key, reason).format(signed_in_as=escape(str(facts.get("signed_in_as", "?"))))
    approver = names.person(str(facts.get("approver", "")), _str(facts.get("approver_slack_id")))
    requester = names.person(view.requester, view.requester_slack_id)
    return (
        f"🚨 Step-up sign-in refused on request #{view.id} (`{escape(view.target)}:"
        f"{escape(view.role)}` for {requester}): {why}. Approve was clicked by {approver}; "
        "nothing was approved. The audit trail has it as stepup.refused."
    )


def _str(value: object) -> str | None:
    return str(value) if value else None
