"""Service accounts as Slack shows them: the owner's attestation card (Still needed / Retire),
the reminder to the owner and security when a round is overdue, and security's alert of
accounts with no current owner."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    HeaderBlock,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)

from app.blockkit import SLACK_SHOWS, Names, escape, words
from app.identities.service import RETIRED, STILL_NEEDED, AttestationSnapshot, OrphanFound
from app.wording import day_time

ATTEST_KEEP = "attest_still_needed"
ATTEST_RETIRE = "attest_retire"


def asked_text(name: str) -> str:
    """The attestation card's text (its notification, and what a client without blocks shows)."""
    return f"Is the service account {name} still needed?"


def attestation_card(
    view: AttestationSnapshot, zone: ZoneInfo, names: Names = SLACK_SHOWS
) -> list[Block]:
    """The owner's card: is this service account still needed? Buttons while unanswered."""
    blocks: list[Block] = [
        HeaderBlock(text=PlainTextObject(text=f"Is {view.identity} still needed?")),
        SectionBlock(
            text=MarkdownTextObject(
                text=f"You own the service account `{escape(view.identity)}`: "
                f"{escape(view.purpose)}. Please confirm it is still needed by "
                f"{day_time(view.due_at, zone)}, or retire it (its elevations end at once)."
            )
        ),
    ]
    if view.outcome is None:
        blocks.append(
            ActionsBlock(
                block_id=f"attest:{view.identity}",
                elements=[
                    ButtonElement(
                        text="Still needed",
                        action_id=ATTEST_KEEP,
                        value=view.identity,
                        style="primary",
                    ),
                    ButtonElement(
                        text="Retire",
                        action_id=ATTEST_RETIRE,
                        value=view.identity,
                        style="danger",
                        confirm=ConfirmObject(
                            title=f"Retire {view.identity}?",
                            text="It can no longer be elevated, and any elevation now active ends.",
                            confirm="Retire",
                            deny="Back",
                        ),
                    ),
                ],
            )
        )
    else:
        said = {STILL_NEEDED: "✅ Confirmed still needed", RETIRED: "🗄 Retired"}[view.outcome]
        blocks.append(
            ContextBlock(elements=[words(f"{said} by {names.person(view.decided_by or '')}")])
        )
    return blocks


def overdue_text(view: AttestationSnapshot, blocked: bool, zone: ZoneInfo, names: Names) -> str:
    """To security and the owner: the round went unanswered past its deadline (and, where the
    policy says `block_unattested`, the account cannot be elevated until it is answered)."""
    return (
        f"⚠️ Service account `{escape(view.identity)}` was not re-attested by its owner "
        f"{names.person(view.owner)} (due {day_time(view.due_at, zone)})"
        + (": elevations of it are blocked until they answer." if blocked else ".")
    )


def orphans_text(orphans: list[OrphanFound]) -> str:
    """To security: service accounts whose owner is no longer a current person."""
    lines = [f"• `{escape(o.identity)}`: {escape(o.reason)}" for o in orphans]
    return "👤 Service accounts with no current owner:\n" + "\n".join(lines)
