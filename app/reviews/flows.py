"""Break-glass reviews, then tell people: when a review's notice is delivered (app/telling.py),
who hears of it and with which message. Sent: the review card goes to the managers' channel.
Reminded: the reviewers, and the card's thread. Overdue: security, the WardKey admins and whom
the policy escalates it to. Decided: every copy of the card shows the decision, and the user
hears the outcome."""

from __future__ import annotations

from typing import Protocol

from slack_sdk.errors import SlackApiError
from slack_sdk.models.blocks import Block

from app.access import AccessService
from app.directory import slack_unwell
from app.outbox_records import Notice
from app.policy import rules
from app.reviews import messages
from app.reviews.service import BreakGlassSummary, ReviewService, ReviewStep
from app.telling import Teller, Telling

# The purpose every posted copy of a review card is remembered under (updated when decided).
REVIEW_CARD = "review_card"


class Needs(Protocol):
    """What telling of reviews is given (app/notify/notifier.py `NoticeDeps`)."""

    @property
    def teller(self) -> Teller: ...

    @property
    def reviews(self) -> ReviewService:
        """The review service the cards are drawn from."""
        ...

    @property
    def core(self) -> AccessService:
        """The request core: its policy in force, clock and the requests' posted messages."""
        ...


def follow_up(notice: Notice, given: Needs) -> None:
    """A break-glass use ended: its summary goes to the managers' channel with Justified /
    Not justified. Undecided: reviewers are reminded. Overdue: security and the WardKey
    admins are told."""
    assert notice.request_id is not None
    step = ReviewStep(notice.action.removeprefix("review."))
    teller, core = given.teller, given.core
    policy = core.policy
    summary = given.reviews.break_glass_summary(notice.request_id)
    view = summary.view
    if step == ReviewStep.REQUESTED:
        teller.post(
            f"review_requested request={view.id}",
            policy.channels.manager_reviews,
            messages.requested_text(view, teller.names),
            _card(teller, summary),
            remember=(view.id, REVIEW_CARD),
        )
        return
    now = core.clock.now()
    if step == ReviewStep.REMINDED:
        text = messages.reminder_text(view, teller.zone)
        people = rules.reviewers(policy, now)
    else:
        text = messages.overdue_text(view, teller.zone, teller.names)
        people = rules.group_members(policy, policy.admins)
        teller.post(f"review_overdue request={view.id}", policy.channels.security_alerts, text)
        people = list(dict.fromkeys([*people, *_escalation(given, view.id, text)]))
    about = f"review_{step.value} request={view.id}"
    for card_channel, ts in core.messages_of(view.id, REVIEW_CARD):
        teller.post(about, card_channel, text, thread_ts=ts)
    for user_id in teller.slack_ids(view, people):
        teller.post(about, user_id, text)


def _escalation(given: Needs, request_id: int, text: str) -> list[str]:
    """An overdue review goes, once, to whom the policy escalates it (review_escalate_to,
    e.g. the Caldicott Guardian, as the escalation recorded them) and its channel; returns
    those people, to be told by DM with the admins."""
    escalated = given.reviews.review_escalation(request_id)
    if escalated is None:
        return []
    people, channel = escalated
    if channel:
        given.teller.post(f"review_escalated request={request_id}", channel, text)
    return people


def decided(notice: Notice, given: Needs) -> None:
    """Every copy of the review card shows the decision; the user is told the outcome."""
    assert notice.request_id is not None
    teller = given.teller
    view = given.core.get(notice.request_id)
    summary = given.reviews.break_glass_summary(view.id)
    blocks = _card(teller, summary)
    text = messages.decided_text(view, teller.zone, teller.names)
    teller.update_in_place(view.id, REVIEW_CARD, text, blocks)
    if view.requester_slack_id:
        teller.post(
            f"review_decided request={view.id}",
            view.requester_slack_id,
            messages.outcome_text(view, teller.zone, teller.names),
        )


def _card(teller: Teller, summary: BreakGlassSummary) -> list[Block]:
    """The review card, people and channels by name, the user with their Slack title."""
    view, label = summary.view, ""
    if view.requester_slack_id:
        try:
            profile = teller.directory.profile(view.requester_slack_id)
            label = f"{profile.name}, {profile.title}" if profile.title else profile.name
        except SlackApiError as exc:
            if slack_unwell(exc):
                raise  # drawn again when Slack answers
    return messages.review_card(summary, teller.zone, teller.names, label)


NOTICES = (
    *(Telling(f"review.{step.value}", follow_up) for step in ReviewStep),
    Telling("review.decided", decided),
)
