"""Break-glass budgets and the two-person rule, told as the ward's nights.

Within the policy's limits, `/breakglass` grants at once as it always did. Over a limit, or with
one of their earlier break-glass reviews past its deadline, the person is answered at once with
why and whom WardKey asked; those people get a Confirm card; the first of them to confirm
grants it (the person themself, or another account of theirs, cannot); and the security channel
watches the wait on one line, updated in place."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.access import AccessService
from app.breakglass import jobs as breakglass_jobs
from app.breakglass.messages import CONFIRM_ACTION, waited_words
from app.clock import ManualClock
from app.demo.slack_fake import SlackUser
from app.directory import SlackDirectory
from app.lifecycle.errors import NotAllowed, SelfApproval
from app.notify.notifier import Notifier
from app.policy import Policy, load_policy
from app.policy.loader import PolicyError
from app.requests import jobs as request_jobs
from app.reviews.service import ReviewService
from app.scheduler import JobDeps, job_deps
from app.slack.app import web_client
from app.store.models import RequestState as S
from tests.conftest import AMIRA, BEN, GITA, HANA, HERE, audit_actions
from tests.fakes.memory_adapter import MemoryTarget
from tests.lifecycle.test_concurrency import all_at_once
from tests.lifecycle.test_limits_hold import last_event
from tests.slack_harness import RunningApp, SlackOnSqlite

EMERGENCY = "pharmacy-db:read pharmacy system down in ED"
WHY = "pharmacy system down in ED"


def ward_policy(
    tmp_path: Path, groups: dict[str, list[str]] | None = None, **breakglass: Any
) -> Policy:
    """The ward's policy with these settings on the breakglass path, and these groups more
    (managers, Gita among them, may break glass on pharmacy-db too)."""
    doc = yaml.safe_load((HERE / "data" / "ward_policy.yaml").read_text())
    doc["groups"].update(groups or {})
    doc["paths"]["breakglass"].update(breakglass)
    doc["targets"]["pharmacy-db"]["roles"]["read"]["eligible"].append("managers")
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_policy(path)


ONE_A_DAY = {"limits": {"per_person": {"uses_per_day": 1}}}


def used_and_ended(service: AccessService, clock: ManualClock, minutes: int = 30) -> int:
    view = service.break_glass(AMIRA, "pharmacy-db", "read", WHY, timedelta(minutes=minutes))
    assert view.state == S.ACTIVE
    clock.advance(timedelta(minutes=minutes + 1))
    service.expire_due()
    return view.id


def job_deps_for(slack: RunningApp, service: AccessService) -> JobDeps:
    client = web_client(slack.fake.token, slack.fake.api_url)
    return job_deps(service, Notifier(client, service, SlackDirectory(client)).outbox)


def break_glass(slack: RunningApp, user: str = "U0AMIRA", replies: int = 1) -> str:
    slack.command("/breakglass", EMERGENCY, user)
    reply = slack.replies(replies)[-1]
    slack.settle()
    return reply


def number(reply: str) -> int:
    return int(reply.split("#")[1].split(" ")[0].rstrip(":"))


class TestBudgetRules:
    """The limits, checked by the service against what is stored."""

    @pytest.fixture
    def policy(self, tmp_path: Path) -> Policy:
        return ward_policy(
            tmp_path,
            limits={
                "per_person": {
                    "uses_per_week": 2,
                    "cooldown": "2h",
                    "time_per_day": "1h",
                },
                "per_group": {"clinical-systems": {"uses_per_day": 2}},
            },
        )

    def test_within_budget_is_granted_at_once_and_its_use_so_far_recorded(
        self, service: AccessService
    ) -> None:
        view = service.break_glass(AMIRA, "pharmacy-db", "read", WHY, timedelta(minutes=30))
        assert view.state == S.ACTIVE
        budget = last_event(service, view.id, "breakglass.started")["budget"]
        assert budget["amira@ward.nhs.uk"] == {
            "uses_day": 0,
            "uses_week": 0,
            "seconds_day": 0,
            "seconds_week": 0,
        }
        assert budget["clinical-systems"]["uses_day"] == 0

    def test_cooldown_time_per_day_week_and_group_each_hold_a_use(
        self, service: AccessService, clock: ManualClock
    ) -> None:
        used_and_ended(service, clock, minutes=40)  # 41 minutes later
        check = service.breakglass.check_break_glass(
            AMIRA, "pharmacy-db", "read", timedelta(minutes=30)
        )
        fields = [b.field for b in check.breaches]
        # 41m since the last began (cooldown 2h); 41m held (it ended when the expiry sweep
        # removed it) + 30m asked > 1h a day.
        assert fields == ["per_person.cooldown", "per_person.time_per_day"]
        words = check.held_for
        assert "the last use by you began 41m ago; per_person.cooldown asks for 2h" in words[0]
        assert "41m of break-glass in the last 24 hours by you and this use's 30m" in words[1]
        # 15 minutes fit in the day's hour; the cool-down still holds it.
        short = service.breakglass.check_break_glass(
            AMIRA, "pharmacy-db", "read", timedelta(minutes=15)
        )
        assert [b.field for b in short.breaches] == ["per_person.cooldown"]

        clock.advance(timedelta(hours=2))
        by_ben = service.break_glass(BEN, "pharmacy-db", "read", WHY, timedelta(minutes=5))
        assert by_ben.state == S.ACTIVE
        check = service.breakglass.check_break_glass(
            AMIRA, "pharmacy-db", "read", timedelta(minutes=10)
        )
        # Amira and Ben are both clinical-systems: two uses today is the group's limit.
        assert [b.field for b in check.breaches] == ["per_group.clinical-systems.uses_per_day"]
        assert (
            "clinical-systems has broken glass 2 times in the last 24 hours" in (check.held_for[0])
        )

    def test_uses_per_week_counts_seven_days_back(
        self, service: AccessService, clock: ManualClock
    ) -> None:
        for _ in range(2):  # each reviewed the same day, so no review is overdue
            rid = used_and_ended(service, clock, minutes=10)
            ReviewService(service).decide_review(
                rid, HANA, justified=True, note="pharmacy outage, confirmed"
            )
            clock.advance(timedelta(days=3))
        check = service.breakglass.check_break_glass(
            AMIRA, "pharmacy-db", "read", timedelta(minutes=10)
        )
        assert [b.field for b in check.breaches] == ["per_person.uses_per_week"]
        clock.advance(timedelta(days=1))  # the first use is now more than 7 days back
        check = service.breakglass.check_break_glass(
            AMIRA, "pharmacy-db", "read", timedelta(minutes=10)
        )
        assert check.breaches == ()


class TestConfirmersAtOnce:
    @pytest.fixture
    def policy(self, tmp_path: Path) -> Policy:
        return ward_policy(tmp_path, **ONE_A_DAY)

    def test_three_confirmers_clicking_at_once_grant_it_once(
        self, service: AccessService, clock: ManualClock, targets: dict[str, MemoryTarget]
    ) -> None:
        used_and_ended(service, clock)
        held = service.break_glass(AMIRA, "pharmacy-db", "read", WHY, timedelta(minutes=30))
        assert held.state == S.PENDING
        confirmers = [BEN, GITA, HANA]
        results, errors = all_at_once(
            3, lambda n: service.confirm_break_glass(held.id, confirmers[n])
        )
        assert len(results) == 1, (results, errors)
        assert [str(e) for e in errors] == [
            f"Break-glass #{held.id} was already confirmed, so nothing was changed."
        ] * 2
        assert service.get(held.id).state == S.ACTIVE
        assert audit_actions(service, held.id).count("breakglass.started") == 1
        assert targets["pharmacy-db"].holds("amira", "pharmacy_read")


class TestBudgetsAtOnce:
    """The limits hold when uses come at the same instant: each use is checked against the
    uses before it, so two at once cannot both slip under a limit that allows one."""

    @pytest.fixture
    def policy(self, tmp_path: Path) -> Policy:
        return ward_policy(
            tmp_path, limits={"per_group": {"clinical-systems": {"uses_per_day": 1}}}
        )

    def test_two_people_breaking_glass_at_once_on_a_one_a_day_budget_get_one_use_one_hold(
        self, service: AccessService, targets: dict[str, MemoryTarget]
    ) -> None:
        people = [AMIRA, BEN]  # both clinical-systems: one break-glass a day between them
        results, errors = all_at_once(
            2,
            lambda n: service.break_glass(
                people[n], "pharmacy-db", "read", WHY, timedelta(minutes=30)
            ),
        )
        assert not errors, errors
        views = {v.state: v for v in results}  # type: ignore[attr-defined]
        assert sorted(views) == sorted([S.ACTIVE, S.PENDING]), results
        held = views[S.PENDING]
        words = last_event(service, held.id, "breakglass.held")["held_for"]
        assert "per_group.clinical-systems.uses_per_day allows 1" in words[0], words
        holders = [
            who for who in ("amira", "ben") if targets["pharmacy-db"].holds(who, "pharmacy_read")
        ]
        assert len(holders) == 1, holders
        assert audit_actions(service).count("breakglass.started") == 1


class TestRefusePolicy:
    @pytest.fixture
    def policy(self, tmp_path: Path) -> Policy:
        return ward_policy(
            tmp_path, limits={"per_person": {"uses_per_day": 1}, "over_limit": "refuse"}
        )

    def test_over_limit_with_refuse_is_refused_saying_which_limit_and_what_next(
        self, service: AccessService, clock: ManualClock, targets: dict[str, MemoryTarget]
    ) -> None:
        used_and_ended(service, clock)
        with pytest.raises(NotAllowed) as refused:
            service.break_glass(AMIRA, "pharmacy-db", "read", WHY, timedelta(minutes=30))
        message = refused.value.message
        assert message.startswith("Break-glass refused: you have broken glass 1 time")
        assert "per_person.uses_per_day allows 1" in message
        assert "nothing was granted; ask for it with `/jit request pharmacy-db:read" in message
        assert not targets["pharmacy-db"].holds("amira", "pharmacy_read")

    def test_an_overdue_review_still_asks_a_second_person_rather_than_refusing(
        self, service: AccessService, clock: ManualClock
    ) -> None:
        used_and_ended(service, clock)
        clock.advance(timedelta(hours=25))  # the review (24 h) is overdue; the day is over
        view = service.break_glass(AMIRA, "pharmacy-db", "read", WHY, timedelta(minutes=30))
        assert view.state == S.PENDING
        assert "breakglass.held" in audit_actions(service, view.id)


class TestPolicyChecks:
    def test_unknown_group_and_limits_off_the_breakglass_path_name_the_field(
        self, tmp_path: Path
    ) -> None:
        with pytest.raises(PolicyError) as bad:
            ward_policy(
                tmp_path,
                limits={
                    "per_group": {"ward-99": {"uses_per_day": 1}},
                    "confirmers": [{"group": "nobody-here"}],
                },
                review_escalate_to=[{"group": "caldicot"}],
            )
        text = str(bad.value)
        assert "paths.breakglass.limits.per_group.ward-99: " in text
        assert "paths.breakglass.limits.confirmers.0.group: " in text
        assert "paths.breakglass.review_escalate_to.0.group: " in text

    def test_a_limit_of_zero_and_a_bad_usual_hours_are_refused_with_their_field(
        self, tmp_path: Path
    ) -> None:
        with pytest.raises(PolicyError) as bad:
            ward_policy(
                tmp_path,
                limits={"per_person": {"uses_per_day": 0}},
                flags={"usual_hours": "7-19"},
            )
        text = str(bad.value)
        assert "paths.breakglass.limits.per_person.uses_per_day" in text
        assert "paths.breakglass.flags.usual_hours" in text
        assert "is not a range of local times like '07:00-19:00'" in text


class TestSecondPersonInSlack(SlackOnSqlite):
    @pytest.fixture
    def policy(self, tmp_path: Path) -> Policy:
        return ward_policy(tmp_path, **ONE_A_DAY)

    def test_within_budget_the_first_use_is_granted_at_once(
        self, slack: RunningApp, service: AccessService, targets: dict[str, MemoryTarget]
    ) -> None:
        reply = break_glass(slack)
        assert reply.startswith("Break-glass #") and "active until" in reply, reply
        assert targets["pharmacy-db"].holds("amira", "pharmacy_read")
        assert slack.fake.calls_to("chat.postMessage", channel="U0BEN") == []  # no card

    def test_over_budget_waits_for_a_second_person_and_the_first_confirm_grants(
        self,
        slack: RunningApp,
        service: AccessService,
        clock: ManualClock,
        targets: dict[str, MemoryTarget],
    ) -> None:
        first = used_and_ended(service, clock)
        slack.settle()
        reply = break_glass(slack)

        # Answered at once: why, and whom WardKey asked (Ben is on call; the managers approve
        # the clinical path too). Nothing is granted yet.
        held = number(reply)
        assert reply.startswith(f"Break-glass #{held} needs a second person before access")
        assert "you have broken glass 1 time in the last 24 hours" in reply
        assert "per_person.uses_per_day allows 1" in reply
        assert "I have asked Ben Hughes, Gita Rao or Hana Novak to confirm it" in reply
        assert service.get(held).state == S.PENDING
        assert not targets["pharmacy-db"].holds("amira", "pharmacy_read")

        # Each of them has a Confirm card; the security channel sees the wait.
        for user in ("U0BEN", "U0GITA", "U0HANA"):
            card = slack.fake.wait_for("chat.postMessage", 1, channel=user)[-1]
            assert CONFIRM_ACTION in str(card.args["blocks"])
            assert f"Break-glass #{held} needs a second person" in str(card.args["blocks"])
        assert all(
            CONFIRM_ACTION not in str(c.args.get("blocks"))
            for c in slack.fake.calls_to("chat.postMessage", channel="U0AMIRA")
        )
        wait = next(
            c
            for c in slack.fake.wait_for("chat.postMessage", 2, channel="C0SEC")
            if f"Break-glass #{held}" in c.args["text"]
        )
        assert "⏳" in wait.args["text"] and "waiting 0s for a second person" in wait.args["text"]

        # Two minutes ten later, nobody yet: the line says so, updated in place.
        clock.advance(timedelta(minutes=2, seconds=10))
        assert breakglass_jobs.break_glass_waits(job_deps_for(slack, service)) == [held]
        update = slack.fake.wait_for("chat.update", 1, channel="C0SEC")[-1]
        assert update.args["ts"] == wait.response["ts"]
        assert "waiting 2m 10s for a second person" in update.args["text"]

        # Amira cannot confirm her own; Chloe was not asked (not on call).
        slack.click(CONFIRM_ACTION, str(held), "U0AMIRA")
        slack.click(CONFIRM_ACTION, str(held), "U0CHLOE")
        refusals = slack.fake.wait_for("chat.postEphemeral", 2)
        said = {c.args["user"]: c.args["text"] for c in refusals}
        assert "You cannot confirm your own break-glass use" in said["U0AMIRA"]
        assert "only the people WardKey asked (on duty now) can" in said["U0CHLOE"]
        assert service.get(held).state == S.PENDING

        # Hana confirms: granted at once, audited with who confirmed and how long it waited.
        clock.advance(timedelta(seconds=20))
        slack.click(CONFIRM_ACTION, str(held), "U0HANA")
        slack.settle()
        assert service.get(held).state == S.ACTIVE
        assert targets["pharmacy-db"].holds("amira", "pharmacy_read")
        started = last_event(service, held, "breakglass.started")
        assert started["confirmed_by"] == "hana@ward.nhs.uk"
        assert started["waited_seconds"] == 150
        assert started["held_for"] == [
            "you have broken glass 1 time in the last 24 hours; per_person.uses_per_day allows 1"
        ]
        assert audit_actions(service, held)[:2] == ["breakglass.held", "breakglass.started"]
        assert service.get(held).review is not None

        # Amira hears at once; the security line and every card say who confirmed.
        told = slack.fake.wait_for("chat.postMessage", 1, channel="U0AMIRA")[-1]
        assert told.args["text"].startswith(
            f"Break-glass #{held}: Hana Novak confirmed it. ✅ Access active until"
        )
        line = [
            u
            for u in slack.fake.calls_to("chat.update", channel="C0SEC")
            if u.args["ts"] == wait.response["ts"]
        ][-1]
        assert "✅ Confirmed by Hana Novak after 2m 30s: access granted until" in line.args["text"]
        alert = slack.fake.wait_for("chat.postMessage", 3, channel="C0SEC")[-1]
        assert f"🔴 Break-glass #{held}" in alert.args["text"]
        assert "Confirmed by Hana Novak after 2m 30s" in alert.args["text"]
        cards = [
            u
            for u in slack.fake.calls_to("chat.update")
            if u.args["text"].startswith(f"Break-glass #{held}: ✅ Confirmed by Hana Novak")
        ]
        assert len(cards) == 3
        assert all(CONFIRM_ACTION not in str(u.args["blocks"]) for u in cards)

        # A second click (Ben, a moment later) changes nothing and is told why.
        slack.click(CONFIRM_ACTION, str(held), "U0BEN")
        late = slack.fake.wait_for("chat.postEphemeral", 3)[-1]
        assert late.args["user"] == "U0BEN"
        assert (
            late.args["text"]
            == f"Break-glass #{held} was already confirmed, so nothing was changed."
        )
        assert audit_actions(service, held).count("breakglass.started") == 1
        assert first != held

    def test_another_account_of_the_same_person_cannot_confirm(
        self, slack: RunningApp, service: AccessService, clock: ManualClock
    ) -> None:
        slack.fake.add_user(
            SlackUser("U0GITA2ND", "gita.other@ward.nhs.uk", "Gita Rao (2)", "Head of IT")
        )
        first = service.break_glass(GITA, "pharmacy-db", "read", WHY, timedelta(minutes=30))
        clock.advance(timedelta(minutes=31))
        service.expire_due()
        reply = break_glass(slack, user="U0GITA")
        held = number(reply)
        assert held != first.id and service.get(held).state == S.PENDING
        # Gita is not asked; her second account is refused as her.
        assert "I have asked Ben Hughes or Hana Novak to confirm it" in reply
        slack.click(CONFIRM_ACTION, str(held), "U0GITA2ND")
        refusal = slack.fake.wait_for("chat.postEphemeral", 1)[-1]
        assert refusal.args["user"] == "U0GITA2ND"
        assert "from this account or another of yours" in refusal.args["text"]
        assert service.get(held).state == S.PENDING
        with pytest.raises(SelfApproval):
            service.confirm_break_glass(held, GITA)

    def test_an_overdue_review_holds_the_next_use_until_someone_confirms(
        self, slack: RunningApp, service: AccessService, clock: ManualClock
    ) -> None:
        earlier = used_and_ended(service, clock)
        clock.advance(timedelta(hours=25))  # its review was due 24 h after it began
        reply = break_glass(slack)
        held = number(reply)
        assert (
            f"the review of your break-glass #{earlier} was due 01 Dec 03:00 and is not done"
            in reply
        )
        assert service.get(held).state == S.PENDING
        # 04:00 on Tuesday: Chloe is the clinical on-call now, so she is asked, not Ben.
        assert "I have asked Chloe Evans, Gita Rao or Hana Novak" in reply
        slack.click(CONFIRM_ACTION, str(held), "U0CHLOE")
        slack.settle()
        assert service.get(held).state == S.ACTIVE
        confirmed = last_event(service, held, "breakglass.started")
        assert confirmed["confirmed_by"] == "chloe@ward.nhs.uk"

    def test_nobody_confirms_in_time_the_wait_closes_and_everyone_sees_it(
        self, slack: RunningApp, service: AccessService, clock: ManualClock
    ) -> None:
        used_and_ended(service, clock)
        held = number(break_glass(slack))
        slack.fake.wait_for("chat.postMessage", 1, channel="U0BEN")
        clock.advance(timedelta(hours=25))  # the breakglass path's pending_timeout is 24 h
        request_jobs.time_out(job_deps_for(slack, service))
        assert service.get(held).state == S.TIMED_OUT
        updates = [
            u
            for u in slack.fake.calls_to("chat.update")
            if "Nobody confirmed it in time" in u.args["text"]
        ]
        assert len(updates) == 4, updates  # the three cards and the security line
        assert all(CONFIRM_ACTION not in str(u.args.get("blocks")) for u in updates)


def test_waits_are_said_as_people_say_them() -> None:
    assert waited_words(timedelta(seconds=45)) == "45s"
    assert waited_words(timedelta(minutes=2, seconds=10)) == "2m 10s"
    assert waited_words(timedelta(hours=1, minutes=5, seconds=9)) == "1h 5m"
