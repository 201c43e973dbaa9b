"""Break-glass reviews: sent to the managers when the use ends, reminded until decided,
escalated when overdue, decided with a note by a reviewer who is not the user."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from app.access import AccessService
from app.clock import ManualClock
from app.demo.slack_fake import SlackChannel
from app.directory import SlackDirectory
from app.lifecycle.deps import CoreDeps
from app.notify.notifier import Notifier
from app.requests.messages import DENY_ACTION, DENY_BLOCK, DENY_INPUT, DENY_VIEW
from app.reviews import jobs as review_jobs
from app.reviews.messages import (
    NOTE_BLOCK,
    NOTE_INPUT,
    REVIEW_JUSTIFIED,
    REVIEW_NOT_JUSTIFIED,
    REVIEW_VIEW,
)
from app.reviews.service import ReviewService, ReviewStep
from app.scheduler import JobDeps, job_deps
from app.slack.app import web_client
from app.store.models import RequestState as S
from tests.conftest import AMIRA, BEN, GITA, HANA, NIGHT_SHIFT
from tests.conftest import audit_actions as actions
from tests.fakes.memory_adapter import MemoryTarget
from tests.lifecycle.test_concurrency import all_at_once
from tests.slack_harness import RunningApp, SlackOnSqlite

WHY = "pharmacy system down, patients waiting on ward 12"


@pytest.fixture
def reviews(service: AccessService) -> ReviewService:
    return ReviewService(service)


def used_and_ended(service: AccessService, clock: ManualClock) -> int:
    """Amira takes break-glass access for 30 minutes and it expires."""
    view = service.break_glass(AMIRA, "pharmacy-db", "read", WHY, timedelta(minutes=30))
    assert view.state == S.ACTIVE
    clock.advance(timedelta(minutes=31))
    service.expire_due()
    assert service.get(view.id).state == S.ENDED
    return view.id


class TestFollowUps:
    def test_a_review_is_sent_once_the_use_ends_and_only_once(
        self, service: AccessService, reviews: ReviewService, clock: ManualClock
    ) -> None:
        view = service.break_glass(AMIRA, "pharmacy-db", "read", WHY, timedelta(minutes=30))
        assert reviews.review_follow_ups() == []  # still in use: nothing to review yet
        clock.advance(timedelta(minutes=31))
        service.expire_due()

        assert reviews.review_follow_ups() == [(view.id, ReviewStep.REQUESTED)]
        assert reviews.review_follow_ups() == []
        assert actions(service, view.id).count("review.requested") == 1

    def test_reminders_until_decided_then_one_escalation_when_overdue(
        self, service: AccessService, reviews: ReviewService, clock: ManualClock
    ) -> None:
        rid = used_and_ended(service, clock)
        reviews.review_follow_ups()  # sent; the ward policy: due 24 h after the start
        clock.advance(timedelta(hours=3, minutes=59))
        assert reviews.review_follow_ups() == []
        clock.advance(timedelta(minutes=1))
        assert reviews.review_follow_ups() == [(rid, ReviewStep.REMINDED)]
        clock.advance(timedelta(hours=4))
        assert reviews.review_follow_ups() == [(rid, ReviewStep.REMINDED)]
        clock.advance(timedelta(hours=17))  # 25 h after the start: overdue
        assert reviews.review_follow_ups() == [(rid, ReviewStep.OVERDUE)]
        assert reviews.review_follow_ups() == [(rid, ReviewStep.REMINDED)]
        clock.advance(timedelta(hours=1))
        assert reviews.review_follow_ups() == []  # escalated once; reminders go on
        reviews.decide_review(
            rid, GITA, justified=True, note="pharmacy outage, INC0001234 confirms"
        )
        clock.advance(timedelta(days=2))
        assert reviews.review_follow_ups() == []
        assert actions(service, rid).count("review.escalated") == 0
        assert actions(service, rid).count("review.overdue") == 1
        assert actions(service, rid).count("review.reminded") == 3

    @pytest.mark.parametrize(
        "db", [pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"], indirect=True
    )
    def test_two_workers_at_once_send_each_review_once(
        self,
        service: AccessService,
        clock: ManualClock,
        targets: dict[str, MemoryTarget],
    ) -> None:
        rid = used_and_ended(service, clock)
        others = [
            AccessService(CoreDeps(service.db, service.policy, targets, clock, worker=f"w{n}"))
            for n in range(4)
        ]
        results, errors = all_at_once(4, lambda n: ReviewService(others[n]).review_follow_ups())
        assert errors == []
        assert sorted(map(len, results)) == [0, 0, 0, 1]  # type: ignore[arg-type]
        assert actions(service, rid).count("review.requested") == 1


class TestWhoMayDecide:
    def test_only_reviewers_other_than_the_user_and_only_once(
        self, service: AccessService, reviews: ReviewService, clock: ManualClock
    ) -> None:
        rid = used_and_ended(service, clock)
        assert reviews.review_refusal(rid, AMIRA) == "You cannot review your own break-glass use."
        assert "Only the policy's break-glass reviewers" in (reviews.review_refusal(rid, BEN) or "")
        assert reviews.review_refusal(rid, HANA) is None
        reviews.decide_review(rid, HANA, justified=False, note="should have used the rota first")
        assert "already decided (not_justified)" in (reviews.review_refusal(rid, GITA) or "")

    def test_a_request_that_was_not_break_glass_has_no_review(
        self, service: AccessService, reviews: ReviewService
    ) -> None:
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), WHY)
        assert "not a break-glass use" in (reviews.review_refusal(req.id, HANA) or "")


class TestInSlack(SlackOnSqlite):
    def job_deps(self, slack: RunningApp, service: AccessService) -> JobDeps:
        client = web_client(slack.fake.token, slack.fake.api_url)
        notifier = Notifier(client, service, SlackDirectory(client))
        return job_deps(service, notifier.outbox)

    def test_card_in_the_managers_channel_refusals_then_a_decision_with_a_note(
        self, slack: RunningApp, service: AccessService, clock: ManualClock
    ) -> None:
        rid = used_and_ended(service, clock)
        review_jobs.review(self.job_deps(slack, service))
        card = slack.fake.wait_for("chat.postMessage", 1, channel="C0MGR")[0]
        text = str(card.args["blocks"])
        assert "Break-glass review" in text and WHY in text
        assert REVIEW_JUSTIFIED in text and REVIEW_NOT_JUSTIFIED in text

        # The user, and someone who is no reviewer, are told at once; no note is asked.
        slack.click(REVIEW_JUSTIFIED, str(rid), "U0AMIRA", channel="C0MGR")
        slack.click(REVIEW_NOT_JUSTIFIED, str(rid), "U0BEN", channel="C0MGR")
        refusals = slack.fake.wait_for("chat.postEphemeral", 2)
        assert {c.args["user"] for c in refusals} == {"U0AMIRA", "U0BEN"}
        assert "your own break-glass use" in str([c.args["text"] for c in refusals])
        assert slack.fake.calls_to("views.open") == []

        slack.click(REVIEW_NOT_JUSTIFIED, str(rid), "U0HANA", channel="C0MGR")
        meta = slack.fake.wait_for("views.open", 1)[0].args["view"]["private_metadata"]
        short = slack.submit_view(
            REVIEW_VIEW, {NOTE_BLOCK: {NOTE_INPUT: {"value": "no"}}}, "U0HANA", meta
        )
        assert short.json()["response_action"] == "errors"
        assert NOTE_BLOCK in short.json()["errors"]
        note = "routine fix, should have gone through the clinical rota"
        done = slack.submit_view(
            REVIEW_VIEW, {NOTE_BLOCK: {NOTE_INPUT: {"value": note}}}, "U0HANA", meta
        )
        assert done.status_code == 200

        review = service.get(rid).review
        assert review is not None and review.state == "not_justified" and review.note == note
        updated = slack.fake.wait_for("chat.update", 1, channel="C0MGR")[0]
        assert "Not justified" in updated.args["text"]
        assert REVIEW_JUSTIFIED not in str(updated.args["blocks"])  # no buttons once decided
        # The outbox also sent what the use itself caused (its end); the outcome is the last.
        told = slack.fake.wait_for("chat.postMessage", 2, channel="U0AMIRA")[-1]
        assert f"The review of your break-glass use #{rid}" in told.args["text"]
        assert note in told.args["text"]

    def test_reminder_in_the_thread_and_overdue_alert_to_security(
        self, slack: RunningApp, service: AccessService, clock: ManualClock
    ) -> None:
        rid = used_and_ended(service, clock)
        deps = self.job_deps(slack, service)
        review_jobs.review(deps)
        card = slack.fake.wait_for("chat.postMessage", 1, channel="C0MGR")[0]
        clock.advance(timedelta(hours=4))
        review_jobs.review(deps)
        reminder = slack.fake.wait_for("chat.postMessage", 2, channel="C0MGR")[1]
        assert reminder.args["thread_ts"] == card.response["ts"]
        assert f"review of break-glass #{rid} is waiting" in reminder.args["text"]
        # …and by DM to each reviewer on duty (Hana is a manager, not an admin).
        assert self.dms(slack, "U0HANA", f"review of break-glass #{rid} is waiting") == 1
        clock.advance(timedelta(hours=21))
        review_jobs.review(deps)
        # The first alert to security was the break-glass use itself; the overdue one follows.
        alert = slack.fake.wait_for("chat.postMessage", 2, channel="C0SEC")[-1]
        assert "overdue" in alert.args["text"]
        # The WardKey admins (Gita) are told directly too, once. (Gita is also a reviewer, so
        # she has other DMs about this use: only the overdue one counts here.)
        assert self.dms(slack, "U0GITA", f"review of break-glass #{rid} (") == 1
        assert self.dms(slack, "U0HANA", "is overdue") == 0  # reviewers who are not admins

    @staticmethod
    def dms(slack: RunningApp, user: str, words: str) -> int:
        """How many messages Slack took for `user` that contain `words` (the sweeps deliver
        inline, so all of them have been sent by now)."""
        return sum(
            words in call.args["text"]
            for call in slack.fake.calls_to("chat.postMessage", channel=user)
        )


class TestTheReviewCard(SlackOnSqlite):
    """What a manager most needs to judge a break-glass use, on the card itself."""

    def job_deps(self, slack: RunningApp, service: AccessService) -> JobDeps:
        client = web_client(slack.fake.token, slack.fake.api_url)
        notifier = Notifier(client, service, SlackDirectory(client))
        return job_deps(service, notifier.outbox)

    def test_the_card_shows_names_channels_an_earlier_denial_and_the_30_day_count(
        self, slack: RunningApp, service: AccessService, reviews: ReviewService, clock: ManualClock
    ) -> None:
        slack.fake.add_channel(SlackChannel("C0SEC", "security-alerts", is_private=True))
        slack.fake.add_channel(SlackChannel("C0MGR", "manager-reviews"))
        # Ten days ago Amira used break-glass once already (reviewed in time: an overdue
        # review would hold this use for a second person,
        # tests/breakglass/test_breakglass_budgets.py).
        clock.set(NIGHT_SHIFT - timedelta(days=10))
        earlier = used_and_ended(service, clock)
        reviews.decide_review(earlier, GITA, justified=True, note="pharmacy outage, confirmed")
        clock.set(NIGHT_SHIFT)
        # 03:00 she asks for the access; Ben, on call, denies it at 03:05 with a reason.
        assert slack.command("/jit", f"request pharmacy-db:read 30m {WHY}", "U0AMIRA")
        slack.settle()
        denied = max(v.id for v in service.requests_of_key("amira@ward.nhs.uk"))
        clock.advance(timedelta(minutes=5))
        slack.click(DENY_ACTION, str(denied), "U0BEN")
        meta = slack.fake.wait_for("views.open", 1)[0].args["view"]["private_metadata"]
        slack.submit_view(
            DENY_VIEW, {DENY_BLOCK: {DENY_INPUT: {"value": "not on shift"}}}, "U0BEN", meta
        )
        slack.settle()
        assert service.get(denied).state == S.DENIED
        # 03:10 she breaks the glass for the same access; it ends an hour later.
        clock.advance(timedelta(minutes=5))
        slack.command("/breakglass", f"pharmacy-db:read {WHY}", "U0AMIRA")
        slack.settle()
        rid = max(v.id for v in service.requests_of_key("amira@ward.nhs.uk"))
        assert service.get(rid).state == S.ACTIVE
        clock.advance(timedelta(minutes=61))
        service.expire_due()
        review_jobs.review(self.job_deps(slack, service))

        cards = slack.fake.wait_for("chat.postMessage", 1, channel="C0MGR")
        card = next(c for c in cards if f"Break-glass review #{rid}" in c.args["text"])
        assert card.args["text"] == f"Break-glass review #{rid}: Amira Khan used pharmacy-db:read"
        shown = "\n".join(
            text
            for block in card.args["blocks"]
            for text in [
                (block.get("text") or {}).get("text", ""),
                *[f.get("text", "") for f in block.get("fields") or []],
            ]
        )
        assert "<@U0AMIRA> (Amira Khan, Clinical systems analyst)" in shown
        # Who was alerted, by name: the security channel and the managers on duty.
        assert "*Alerted*\n#security-alerts, Gita Rao, Hana Novak" in shown
        assert f"#{denied} asked 03:00, *denied* 03:05 by Ben Hughes: “not on shift”" in shown
        assert "2 break-glass uses in the last 30 days, this one included." in shown
        assert "@ward.nhs.uk" not in json.dumps(card.args["blocks"])
        assert "C0SEC" not in json.dumps(card.args["blocks"])

    def test_a_first_use_with_nothing_before_says_so(
        self, slack: RunningApp, service: AccessService, clock: ManualClock
    ) -> None:
        rid = used_and_ended(service, clock)
        review_jobs.review(self.job_deps(slack, service))
        card = slack.fake.wait_for("chat.postMessage", 1, channel="C0MGR")[0]
        shown = json.dumps(card.args["blocks"], ensure_ascii=False)
        assert f"Break-glass review #{rid}" in card.args["text"]
        assert "No other request for this access in the 24 hours before." in shown
        assert "This is their only break-glass use in the last 30 days." in shown
        # A channel Slack does not name for WardKey is still shown as Slack would link it.
        assert "<#C0SEC>" in shown
