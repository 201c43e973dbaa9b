"""Acknowledged means told: the messages a change causes are recorded with it and delivered
once, in order, whatever Slack does (SQLite and PostgreSQL, the fake Slack, the service's
clock; nothing here waits on the wall clock)."""

from __future__ import annotations

import json
import logging
import signal
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import sqlalchemy.orm

from app import audit
from app.access import AccessService
from app.clock import ManualClock
from app.demo.slack_fake import FakeSlack, SlackUser
from app.grants import jobs as grant_jobs
from app.metrics import metrics_text
from app.notify.notifier import Notifier
from app.notify.outbox import Outbox
from app.outbox_records import POST, OutCall, call_row
from app.scheduler import JobDeps, job_deps
from app.store import Database
from app.store.models import OutboxItem
from app.store.models import RequestState as S
from tests.conftest import AMIRA, BEN, CHLOE
from tests.fakes.big_trust import APPROVER, staff
from tests.fakes.memory_adapter import MemoryTarget
from tests.system.test_reliability import SLACK_OUTAGE_SECONDS, Ward, ended_at, wait_until_ended

REASON = "month-end stock reconciliation for the ward"


def worker_deps(service: AccessService, notifier: Notifier) -> JobDeps:
    """What a worker's jobs are given: the deliver job sends what waits in the outbox."""
    n = notifier
    return job_deps(service, n.outbox)


def asked_and_approved(service: AccessService, notifier: Notifier) -> int:
    """Amira asks for pharmacy-db:read; Ben, on call, approves; access is granted at once."""
    view = service.request(AMIRA, "pharmacy-db", "read", timedelta(hours=1), REASON)
    notifier.deliver_now()
    service.approve(view.id, BEN)
    notifier.deliver_now()
    return view.id


def posts_by_key(fake: FakeSlack) -> Counter[str]:
    return Counter(m["metadata"]["event_payload"]["key"] for m in fake.posts() if m.get("metadata"))


def waiting(service: AccessService) -> int:
    with service.db.read() as session:
        return int(
            session.scalar(
                sa.select(sa.func.count()).where(OutboxItem.state.in_(["new", "working"]))
            )
            or 0
        )


def card_history(fake: FakeSlack) -> dict[tuple[str, str], list[str]]:
    """For each approver card: what Slack showed, in the order it was sent."""
    cards: dict[tuple[str, str], list[str]] = {}
    for call in fake.calls:
        if call.status != 200 or call.method not in ("chat.postMessage", "chat.update"):
            continue
        if call.method == "chat.postMessage" and "Access request" not in call.args["text"]:
            continue
        key = (str(call.response["channel"]), str(call.response["ts"]))
        if call.method == "chat.update" or key not in cards:
            cards.setdefault(key, []).append(call.args["text"])
    return cards


def drain(outbox: Outbox, clock: ManualClock, seconds: int = 30) -> None:
    """The deliver sweep, once a second on the service's clock, for `seconds`."""
    for _ in range(seconds):
        clock.advance(timedelta(seconds=1))
        outbox.deliver_due()


class TestSlackFailsWhileTheWardWorks:
    def test_cards_that_met_slack_500s_are_sent_once_when_it_recovers(
        self, service: AccessService, notifier: Notifier, fake: FakeSlack, clock: ManualClock
    ) -> None:
        # 03:00: Slack answers 500 to the next 6 calls, as Amira asks for access.
        fake.fail(6)
        view = service.request(AMIRA, "pharmacy-db", "read", timedelta(hours=1), REASON)
        notifier.deliver_now()
        assert waiting(service) > 0  # kept, not lost
        drain(notifier.outbox, clock, 60)  # back-off: 1 s, 2 s, 4 s… at most 10 s apart
        assert waiting(service) == 0
        # Ben and Chloe's DMs and the clinical channel: each card exactly once.
        cards = [m for m in fake.posts() if f"Access request #{view.id}" in m["text"]]
        assert len(cards) == len({m["channel"] for m in cards}) == 3
        assert set(posts_by_key(fake).values()) == {1}
        # Every copy is remembered, so the approval updates them all.
        service.approve(view.id, BEN)
        notifier.deliver_now()
        updated = {c.args["ts"] for c in fake.calls_to("chat.update")}
        assert updated == {m["ts"] for m in cards}

    def test_a_rate_limit_is_waited_out_as_slack_asks(
        self, service: AccessService, notifier: Notifier, fake: FakeSlack, clock: ManualClock
    ) -> None:
        fake.rate_limit("chat.postMessage", times=1, retry_after=7)
        service.request(AMIRA, "pharmacy-db", "read", timedelta(hours=1), REASON)
        notifier.deliver_now()
        tried = len([c for c in fake.calls if c.method == "chat.postMessage"])
        assert fake.calls_to("chat.postMessage") == []
        clock.advance(timedelta(seconds=6))
        notifier.outbox.deliver_due()
        assert len([c for c in fake.calls if c.method == "chat.postMessage"]) == tried
        clock.advance(timedelta(seconds=1))
        notifier.outbox.deliver_due()
        assert len(fake.calls_to("chat.postMessage")) == 3

    def test_an_outage_delays_messages_never_grants_or_revokes_and_loses_none(
        self,
        service: AccessService,
        notifier: Notifier,
        fake: FakeSlack,
        clock: ManualClock,
        targets: dict[str, MemoryTarget],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.INFO)
        fake.unreachable = True  # Slack is down from 03:00
        rid = asked_and_approved(service, notifier)
        # The grant did not wait for Slack.
        assert service.get(rid).state == S.ACTIVE
        assert targets["pharmacy-db"].members
        # An hour on, the access expires and is removed, Slack still down.
        clock.advance(timedelta(hours=1))
        ended = grant_jobs.expire(worker_deps(service, notifier))
        assert ended == [rid] and service.get(rid).state == S.ENDED
        assert not any(targets["pharmacy-db"].members.values())
        assert fake.posts() == []
        metrics = metrics_text(service.db, clock).decode()
        backlog = [
            line for line in metrics.splitlines() if line.startswith("wardkey_outbox_backlog ")
        ]
        assert len(backlog) == 1 and float(backlog[0].split()[1]) > 1, backlog  # several wait
        assert "wardkey_outbox_oldest_seconds 3600.0" in metrics
        drain(notifier.outbox, clock, 2)
        assert "event=outbox_backlog" in caplog.text
        assert "event=slack_unreachable" in caplog.text

        fake.unreachable = False  # 04:00: Slack is back
        drain(notifier.outbox, clock)
        assert waiting(service) == 0
        assert "event=slack_back" in caplog.text
        # Each card: posted once, then updated in the order things happened, ending "ended".
        cards = card_history(fake)
        assert len(cards) == 3
        for shown in cards.values():
            assert shown[0].startswith(f"Access request #{rid}: pharmacy-db:read")
            assert "Ended" in shown[-1] or "ended" in shown[-1]
        # Amira hears that access started, then that it ended, once each and in that order.
        told = [m["text"] for m in fake.posts() if m["channel"] == "D0AMIRA"]
        assert len(told) == 2
        assert "until" in told[0] and "Ended" in told[1]
        assert set(posts_by_key(fake).values()) == {1}
        # Security hears how long messages were delayed.
        delayed = [m["text"] for m in fake.posts() if "were delayed by up to" in m["text"]]
        assert len(delayed) == 1 and "60 min" in delayed[0]
        metrics = metrics_text(service.db, clock).decode()
        assert "wardkey_outbox_backlog 0.0" in metrics


class TestNeverTwice:
    def test_a_post_slack_took_whose_answer_was_lost_is_found_not_posted_again(
        self, service: AccessService, notifier: Notifier, fake: FakeSlack, clock: ManualClock
    ) -> None:
        fake.lose_answers(1)  # Slack keeps Ben's card but the answer never arrives
        view = service.request(AMIRA, "pharmacy-db", "read", timedelta(hours=1), REASON)
        notifier.deliver_now()
        drain(notifier.outbox, clock, 15)
        assert waiting(service) == 0
        assert len(fake.posts()) == 3 and set(posts_by_key(fake).values()) == {1}
        assert fake.calls_to("conversations.history")  # it looked before posting again
        # The found copy is remembered like the others: the decision updates all three.
        service.approve(view.id, BEN)
        notifier.deliver_now()
        assert len({c.args["ts"] for c in fake.calls_to("chat.update")}) == 3

    def test_a_process_that_died_mid_delivery_is_taken_over_without_doubles(
        self, service: AccessService, notifier: Notifier, fake: FakeSlack, clock: ManualClock
    ) -> None:
        fake.unreachable = True
        service.request(AMIRA, "pharmacy-db", "read", timedelta(hours=1), REASON)
        notifier.deliver_now()
        fake.unreachable = False
        drain(notifier.outbox, clock, 15)  # the notice becomes three posts; all sent
        # A second request: a process claims its messages and dies mid-post (its claims stay).
        other = service.request(CHLOE, "pharmacy-db", "read", timedelta(hours=1), REASON)
        dead = Outbox(service.db, clock, notifier.outbox.client, notifier)
        claimed = dead._claim()  # the notice
        assert [c.request_id for c in claimed] == [other.id]
        dead._deliver(claimed[0])
        # The write that finished the notice claimed its lane's next row, the first post.
        posts = [dead._continued.pop(claimed[0].id)]
        dead._send(posts[0])  # Slack took it; the process died before recording it
        with service.db.transaction() as session:  # (as if: undo the record it made)
            session.execute(
                sa.update(OutboxItem)
                .where(OutboxItem.id == posts[0].id)
                .values(
                    state="working",
                    ts=None,
                    channel=None,
                    done_at=None,
                    lease_until=clock.now() + Outbox.LEASE,
                )
            )
        # Nobody else takes its claims before the lease runs out…
        assert notifier.outbox.deliver_due() == 0
        # …then the other process does, finds the post Slack has, and sends the rest once.
        drain(notifier.outbox, clock, 30)
        assert waiting(service) == 0
        assert set(posts_by_key(fake).values()) == {1}
        with service.db.read() as session:
            rows = session.scalar(
                sa.select(sa.func.count()).where(
                    OutboxItem.request_id.is_(None),
                    OutboxItem.parent == claimed[0].id,
                    # (the check that some approver was reached, drawn last, posts nothing)
                    OutboxItem.body.not_like('%"late": true%'),
                )
            )
        assert len([m for m in fake.posts() if f"#{other.id}:" in m["text"]]) == rows


class TestInOrderPerLane:
    def test_finishing_a_message_claims_its_lanes_next_row_only_when_it_is_due(
        self, service: AccessService, notifier: Notifier, fake: FakeSlack, clock: ManualClock
    ) -> None:
        """The write that finishes a message claims the next of its lane (its group's next
        step), for the same sender; never a row that waits out a back-off, nor another's."""
        now = clock.now()
        with service.db.transaction() as session:
            first = call_row("C-ward", OutCall(POST, {"channel": "C-ward", "text": "one"}), now)
            other = call_row("C-other", OutCall(POST, {"channel": "C-other", "text": "x"}), now)
            session.add_all([first, other])
            session.flush()
            rest = []
            for step, words in enumerate(["two", "three"], start=1):
                row = call_row("C-ward", OutCall(POST, {"channel": "C-ward", "text": words}), now)
                row.parent, row.step = first.id, step
                rest.append(row)
            rest[0].due_at = now + timedelta(minutes=1)  # waiting out a back-off
            session.add_all(rest)
            session.flush()
            ids = [first.id, rest[0].id, rest[1].id]
        outbox = Outbox(service.db, clock, notifier.outbox.client, notifier)
        heads = outbox._claim()
        assert sorted(c.id for c in heads) == sorted([ids[0], other.id])
        outbox._deliver(next(c for c in heads if c.id == ids[0]))
        assert ids[0] not in outbox._continued  # "two" is not due: nothing claimed
        clock.advance(timedelta(minutes=2))
        (two,) = [c for c in outbox._claim() if c.lane == "C-ward"]
        assert two.id == ids[1]
        outbox._deliver(two)
        three = outbox._continued.pop(two.id)
        assert three.id == ids[2]  # claimed by the write that finished "two"
        with service.db.read() as session:
            state, owner = session.execute(
                sa.select(OutboxItem.state, OutboxItem.claimed_by).where(OutboxItem.id == ids[2])
            ).one()
        assert (state, owner) == ("working", outbox.owner)
        outbox._deliver(three)
        assert [m["text"] for m in fake.posts() if m["channel"] == "C-ward"] == [
            "one",
            "two",
            "three",
        ]


class TestRecordedWithTheChange:
    def test_every_transition_leaves_its_notice_in_the_same_transaction(
        self, service: AccessService
    ) -> None:
        view = service.request(AMIRA, "pharmacy-db", "read", timedelta(hours=1), REASON)
        service.approve(view.id, BEN)
        with service.db.read() as session:
            notices = session.execute(
                sa.select(OutboxItem.action, OutboxItem.version, OutboxItem.body)
                .where(OutboxItem.kind == "notice")
                .order_by(OutboxItem.id)
            ).all()
        assert [(a, v) for a, v, _ in notices] == [
            ("request.created", 1),
            ("request.approved", 2),
            ("grant.started", 3),
            ("grant.succeeded", 4),
        ]
        assert json.loads(notices[-1][2])["to"] == "active"


# ------------------------------------------------ real workers, PostgreSQL, the fake Slack

SLACK_500S, SLACK_429S = 6, 3  # Slack's first answers once it is reachable again


@pytest.mark.postgres
def test_workers_deliver_every_message_once_through_an_outage_and_a_kill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten grants are made and approved while Slack is unreachable; a `wardkey worker` revokes
    them on time regardless. Slack comes back slow (0.1 s a call), its first answers HTTP 500s
    and 429s (Retry-After); the worker is SIGKILLed mid-delivery and a second one finishes:
    every message sent once, each card in order."""
    ward = Ward(tmp_path, monkeypatch, people=10)
    try:
        for user in [APPROVER, *(staff(n) for n in range(10))]:
            assert user.slack_user_id and user.email
            ward.slack.add_user(SlackUser(user.slack_user_id, user.email, user.email))
        ward.slack.unreachable = True
        ending = datetime.now(UTC) + timedelta(seconds=8)
        ids = ward.grants("epr", range(10), ending)
        first = ward.start("worker")
        wait_until_ended(ward.db, ids, within=30)
        late = [(at - ending).total_seconds() for at in ended_at(ward.db, ids).values()]
        assert max(late) < 5, late  # revokes on time with Slack down
        time.sleep(max(0.0, SLACK_OUTAGE_SECONDS - 8))  # Slack is down 12 s+ in all
        assert ward.slack.posts() == []
        assert waiting_rows(ward.db) > 0
        ward.slack.latency = 0.1
        ward.slack.fail(SLACK_500S, 500)
        ward.slack.rate_limit("chat.postMessage", times=SLACK_429S, retry_after=1)
        ward.slack.unreachable = False
        back = datetime.now(UTC)
        deadline = time.monotonic() + 20
        while len(ward.slack.posts()) < 5:
            assert time.monotonic() < deadline, "no delivery after Slack came back"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)  # mid-delivery
        first.wait(timeout=10)
        ward.start("worker")
        deadline = time.monotonic() + 45
        while waiting_rows(ward.db):
            assert time.monotonic() < deadline, f"{waiting_rows(ward.db)} messages still waiting"
            time.sleep(0.2)
        with ward.db.read() as session:
            notice = sa.orm.aliased(OutboxItem)
            # Each message's delay counts from the state change that caused it (its notice).
            sent = session.execute(
                sa.select(
                    OutboxItem.key,
                    sa.func.coalesce(notice.created_at, OutboxItem.created_at),
                    OutboxItem.done_at,
                )
                .outerjoin(notice, notice.id == OutboxItem.parent)
                .where(OutboxItem.kind == "call", OutboxItem.state == "done")
            ).all()
            failed = session.scalar(sa.select(sa.func.count()).where(OutboxItem.state == "failed"))
        posted = posts_by_key(ward.slack)
        post_rows = [k for k, _c, _d in sent if k is not None and k in posted]
        doubled = sum(n - 1 for n in posted.values())
        # Those caused by the worker's revokes (the grants were made on a clock 30 min back).
        delays = sorted((d - c).total_seconds() for _k, c, d in sent if c > ending)
        last = max(d for _k, _c, d in sent)
        print(
            f"\noutbox through {SLACK_OUTAGE_SECONDS:.0f}s of Slack down and a kill: "
            f"attempted={len(sent) + int(failed or 0)} "
            f"delivered={len(sent)} posts={len(posted)} lost=0 doubled={doubled} "
            f"refused={failed} revoke messages' delay p50={delays[len(delays) // 2]:.1f}s "
            f"max={delays[-1]:.1f}s; all sent {(last - back).total_seconds():.1f}s after "
            f"Slack came back (its first answers {SLACK_500S} HTTP 500s, {SLACK_429S} 429s)"
        )
        assert doubled == 0 and not failed
        answered = Counter(call.status for call in ward.slack.calls)
        assert answered[500] == SLACK_500S and answered[429] == SLACK_429S, answered
        assert len(post_rows) == len(posted)  # every post Slack has is a row marked sent
        for shown in card_history(ward.slack).values():
            assert shown[0].startswith("Access request #")
            assert "Ended" in shown[-1] or "ended" in shown[-1], shown
        assert audit.verify(ward.db).ok
    finally:
        ward.close()


def waiting_rows(db: Database) -> int:
    with db.read() as session:
        return int(
            session.scalar(
                sa.select(sa.func.count()).where(OutboxItem.state.in_(["new", "working"]))
            )
            or 0
        )
