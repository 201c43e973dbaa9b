"""At 3 am the pharmacy system is down in ED and Amira's request for the access is still
waiting: `/breakglass` must not be a dead end. It replaces her own pending request (cancelled,
each naming the other in the audit trail, its approvers' cards updated in place), and the
answer to the command says only what is true when it is said."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from app import audit
from app.access import AccessService
from app.breakglass.listeners import BREAK_GLASS_ACK
from app.clock import ManualClock
from app.directory import SlackDirectory
from app.grants import jobs as grant_jobs
from app.lifecycle.errors import InvalidRequest, ServiceError
from app.notify.notifier import Notifier
from app.requests.messages import APPROVE_ACTION
from app.reviews import jobs as review_jobs
from app.scheduler import job_deps
from app.slack.app import web_client
from app.store.models import RequestState as S
from app.wording import clock_time
from tests.conftest import AMIRA, BEN, audit_actions
from tests.fakes.memory_adapter import MemoryTarget
from tests.lifecycle.test_concurrency import all_at_once
from tests.lifecycle.test_limits_hold import last_event
from tests.slack_harness import RunningApp, SlackOnSqlite

REQUEST = "pharmacy-db:read 30m fix stuck order set on ward 12"
EMERGENCY = "pharmacy-db:read pharmacy system down in ED"
APPROVERS = {"D0BEN", "D0GITA", "D0HANA"}


def ask(slack: RunningApp) -> int:
    slack.command("/jit", f"request {REQUEST}", "U0AMIRA")
    reply = slack.replies(1)[-1]
    assert reply.startswith("Request #"), reply
    slack.settle()
    return int(reply.split("#")[1].split(" ")[0])


def break_glass(slack: RunningApp, before: int) -> tuple[dict[str, Any], str]:
    """`/breakglass …`: the ack (answered at once) and the reply that follows the work."""
    ack = slack.command("/breakglass", EMERGENCY, "U0AMIRA").json()
    reply = slack.replies(before + 1)[-1]
    slack.settle()
    return ack, reply


def card_updates(slack: RunningApp, rid: int) -> list[Any]:
    return [
        u
        for u in slack.fake.calls_to("chat.update")
        if u.args["text"].startswith(f"Access request #{rid}:")
    ]


class TestBreakGlassReplacesMyPendingRequest(SlackOnSqlite):
    def test_break_glass_replaces_the_request_still_waiting(
        self,
        slack: RunningApp,
        service: AccessService,
        clock: ManualClock,
        targets: dict[str, MemoryTarget],
    ) -> None:
        zone = service.policy.zone
        waiting = ask(slack)
        asked_at = clock_time(clock.now(), zone)
        assert len(slack.fake.wait_for("chat.postMessage", 3)) == 3  # its cards are out
        clock.advance(timedelta(minutes=6))  # nobody has answered; ED is now stuck

        ack, reply = break_glass(slack, before=1)

        # The ack comes before anything is decided: it promises nothing it has not done.
        assert ack == {"response_type": "ephemeral", "text": BREAK_GLASS_ACK}
        assert "granting" not in ack["text"].lower()
        emergency = int(reply.split("#")[1].split(":")[0])
        assert service.get(emergency).state == S.ACTIVE
        assert targets["pharmacy-db"].holds("amira", "pharmacy_read")
        assert f"It replaces your request #{waiting}, waiting since {asked_at}" in reply

        replaced = service.get(waiting)
        assert replaced.state == S.CANCELLED
        assert replaced.end_reason == f"replaced by break-glass #{emergency}"
        assert replaced.end_cause == "replaced_by_break_glass"
        # Linked both ways in the audit trail, in the same transaction as the break-glass.
        cancelled = last_event(service, waiting, "request.cancelled")
        assert cancelled["replaced_by"] == emergency
        assert cancelled["cause"] == "replaced_by_break_glass"
        started = last_event(service, emergency, "breakglass.started")
        assert started["replaces"]["request"] == waiting
        assert service.replaced_request(emergency) == (waiting, replaced.created_at)
        assert audit.verify(service.db).ok

        # Every copy of its card now says so, with no Approve left to press.
        updates = card_updates(slack, waiting)
        assert {u.args["channel"] for u in updates} == APPROVERS
        now = clock_time(clock.now(), zone)
        for update in updates:
            shown = json.dumps(update.args["blocks"], ensure_ascii=False)
            assert f"↩️ Cancelled by Amira Khan at {now}: replaced by break-glass #{emergency}" in (
                shown
            )
            assert APPROVE_ACTION not in shown
        # Security hears of the break-glass as ever.
        alert = slack.fake.wait_for("chat.postMessage", 1, channel="C0SEC")[0]
        assert f"Break-glass #{emergency}" in alert.args["text"]

    def test_the_review_card_shows_the_request_it_replaced(
        self, slack: RunningApp, service: AccessService, clock: ManualClock
    ) -> None:
        zone = service.policy.zone
        waiting = ask(slack)
        asked_at = clock_time(clock.now(), zone)
        clock.advance(timedelta(minutes=6))
        _, reply = break_glass(slack, before=1)
        emergency = int(reply.split("#")[1].split(":")[0])
        clock.advance(timedelta(hours=2))  # the use is over; its review goes to the managers
        client = web_client(slack.fake.token, slack.fake.api_url)
        notifier = Notifier(client, service, SlackDirectory(client))
        deps = job_deps(service, notifier.outbox)
        grant_jobs.expire(deps)
        review_jobs.review(deps)
        card = slack.fake.wait_for("chat.postMessage", 1, channel="C0MGR")[0]
        shown = json.dumps(card.args["blocks"], ensure_ascii=False)
        assert f"Break-glass review #{emergency}" in shown
        replaced = f"#{waiting} asked {asked_at}, still waiting when this break-glass use replaced"
        assert replaced in shown

    def test_a_late_approval_click_on_the_replaced_card_changes_nothing(
        self, slack: RunningApp, service: AccessService, targets: dict[str, MemoryTarget]
    ) -> None:
        waiting = ask(slack)
        _, reply = break_glass(slack, before=1)
        emergency = int(reply.split("#")[1].split(":")[0])
        slack.click(APPROVE_ACTION, str(waiting), "U0BEN")
        note = slack.fake.wait_for("chat.postEphemeral", 1)[0]
        assert f"Request #{waiting} was cancelled" in note.args["text"]
        assert service.get(waiting).state == S.CANCELLED
        assert [c[0] for c in targets["pharmacy-db"].calls].count("grant") == 1
        assert service.get(emergency).state == S.ACTIVE

    def test_access_already_active_is_not_granted_twice(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        waiting = ask(slack)
        slack.click(APPROVE_ACTION, str(waiting), "U0BEN")
        slack.settle()
        _, reply = break_glass(slack, before=1)
        assert f"You already have request #{waiting}" in reply
        assert f"/jit extend {waiting}" in reply  # what to do instead
        assert service.get(waiting).state == S.ACTIVE

    def test_a_refused_break_glass_is_answered_after_an_ack_that_promised_nothing(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        ack = slack.command("/breakglass", "pharmacy-db:read down", "U0AMIRA").json()
        assert ack["text"] == BREAK_GLASS_ACK
        assert "at least 3 words" in slack.replies(1)[-1]
        assert service.requests_of_key("amira@ward.nhs.uk") == []


class TestAtOnce:  # on SQLite and on a real PostgreSQL
    def test_break_glass_and_an_approval_at_once_leave_one_grant(
        self, service: AccessService, targets: dict[str, MemoryTarget]
    ) -> None:
        """Ben approves the waiting request at the moment Amira breaks the glass: either the
        approval wins (and the break-glass is refused: she has the access) or the break-glass
        does (and the approval finds the request cancelled); never two grants."""
        req = service.request(
            AMIRA, "pharmacy-db", "read", timedelta(minutes=30), "fix stuck order sets"
        )
        calls = [
            lambda: service.break_glass(AMIRA, "pharmacy-db", "read", "pharmacy down in ED"),
            lambda: service.approve(req.id, BEN),
        ]
        results, errors = all_at_once(2, lambda n: calls[n]())
        assert len(results) == 1 and len(errors) == 1, (results, errors)
        assert isinstance(errors[0], ServiceError), errors
        assert [c[0] for c in targets["pharmacy-db"].calls].count("grant") == 1
        holders = [v for v in service.requests_of(AMIRA) if v.state in (S.ACTIVE, S.GRANTING)]
        assert len(holders) == 1
        actions = audit_actions(service, req.id)
        assert ("request.cancelled" in actions) != ("request.approved" in actions)
        assert audit.verify(service.db).ok

    def test_two_break_glass_at_once_replace_the_request_once(
        self, service: AccessService, targets: dict[str, MemoryTarget]
    ) -> None:
        req = service.request(
            AMIRA, "pharmacy-db", "read", timedelta(minutes=30), "fix stuck order sets"
        )
        results, errors = all_at_once(
            2, lambda n: service.break_glass(AMIRA, "pharmacy-db", "read", "pharmacy down in ED")
        )
        assert len(results) == 1, errors
        assert all(isinstance(e, InvalidRequest) for e in errors), errors
        assert audit_actions(service, req.id).count("request.cancelled") == 1
        assert [c[0] for c in targets["pharmacy-db"].calls].count("grant") == 1
        assert audit.verify(service.db).ok
