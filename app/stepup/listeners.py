"""Step-up in Slack: an Approve click on a path with step_up is answered with a sign-in link
(the requests' Approve listener, app/requests/listeners.py, is given a SignInOffers)."""

from __future__ import annotations

from slack_bolt import BoltContext

from app.slack.gate import asker
from app.stepup.service import StepUpService
from app.wording import clock_time


class SignInOffers:
    """Sign-in links offered on Approve, from the process's step-up service."""

    def __init__(self, stepup: StepUpService) -> None:
        self.stepup = stepup

    def needs_step_up(self, request_id: int) -> bool:
        return self.stepup.needs_step_up(request_id)

    def offer_sign_in(self, request_id: int, context: BoltContext) -> None:
        offer_sign_in(self.stepup, request_id, context)


def offer_sign_in(stepup: StepUpService, request_id: int, context: BoltContext) -> None:
    """Answer an Approve click on a path with step_up: a one-time sign-in link, for the
    clicker's eyes only. Refused at once (as an approval would be) if they could not approve."""
    who = asker(context)
    offer = stepup.offer(request_id, who.person())
    until = clock_time(offer.expires_at, stepup.access.policy.zone)
    if who.reply is not None:
        who.reply(
            f"Approving request #{request_id} needs you to sign in: <{offer.url}|sign in to "
            f"approve> (the link works once, until {until}, and only for you). Nothing is "
            "approved until you have signed in."
        )
