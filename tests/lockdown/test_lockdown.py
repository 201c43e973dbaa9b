"""03:10, and the security team suspect the pharmacy system's admin accounts are compromised.
Gita, a security admin, locks pharmacy-db down from Slack: after a confirmation that says how
many grants it removes, every grant on it is revoked on the target and its holders told, the
requests waiting for it are cancelled, nobody can ask for it, extend it or break glass on it
until she lifts the lockdown, and the security channel watches one message count the grants
down. A revoke the target refuses is retried like any failed revoke and listed meanwhile.

Then the same through the fast path a lockdown of 1,000 grants needs: a signed-webhook target
that takes revokes in batches (and one that does not), with everything read back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from app import audit
from app.access import AccessService
from app.adapters.registry import build_adapters
from app.adapters.webhook import WebhookAdapter, WebhookSettings
from app.clock import ManualClock
from app.demo.webhook_target import WebhookTarget
from app.directory import SlackDirectory
from app.grants import jobs as grant_jobs
from app.lifecycle.deps import CoreDeps
from app.lifecycle.errors import InvalidRequest, NotAllowed, NotEligible
from app.lockdown import jobs as lockdown_jobs
from app.lockdown.listeners import LiftLockdown, Lockdown, parse_lockdown
from app.lockdown.messages import CONFIRM_VIEW, REASON_ACTION, REASON_BLOCK
from app.lockdown.service import Lockdowns
from app.metrics import metrics_text
from app.notify.notifier import Notifier
from app.policy import Policy, load_policy
from app.scheduler import job_deps
from app.slack.app import web_client
from app.slack.parsing import UsageError
from app.store import AuditEvent, Database
from app.store.models import RequestState as S
from tests.conftest import AMIRA, BEN, CHLOE, DEV, GITA, HANA
from tests.fakes.big_trust import (
    APPROVER,
    CONSOLE,
    ENTITLEMENT,
    KEY_VARIABLE,
    ROLE,
    account_of,
    staff,
    write_big_trust,
)
from tests.fakes.memory_adapter import MemoryTarget
from tests.lifecycle.test_concurrency import all_at_once
from tests.slack_harness import RunningApp, run_app
from tests.test_metrics import samples

REASON = "fix stuck order set on ward 12"
WHY = "suspected compromise of the pharmacy admin account"
LOCKED = "pharmacy-db is locked down by security"


def active_grant(service: AccessService, person: Any) -> int:
    req = service.request(person, "pharmacy-db", "read", timedelta(minutes=30), REASON)
    assert service.approve(req.id, HANA).state == S.ACTIVE
    return req.id


def events(service: AccessService, action: str) -> list[dict[str, Any]]:
    with service.db.read() as session:
        bodies = session.scalars(
            sa.select(AuditEvent.body).where(AuditEvent.action == action).order_by(AuditEvent.seq)
        ).all()
    return [json.loads(body) for body in bodies]


@pytest.fixture
def slack(service: AccessService) -> Iterator[RunningApp]:
    yield from run_app(service)


def confirm(slack: RunningApp, user: str, reason: str = WHY) -> None:
    """Press Lock down on the confirmation dialog (with the reason it shows)."""
    values = {REASON_BLOCK: {REASON_ACTION: {"type": "plain_text_input", "value": reason}}}
    meta = json.dumps({"target": "pharmacy-db"})
    response = slack.submit_view(CONFIRM_VIEW, values, user, private_metadata=meta)
    assert response.status_code == 200, response.text
    slack.settle()


def security_posts(slack: RunningApp) -> list[Any]:
    return [c for c in slack.fake.calls_to("chat.postMessage") if c.args["channel"] == "C0SEC"]


def lockdown_updates(slack: RunningApp) -> list[str]:
    return [
        u.args["text"]
        for u in slack.fake.calls_to("chat.update")
        if u.args["text"].startswith("Lockdown of pharmacy-db")
    ]


def lockdown_message(slack: RunningApp) -> tuple[str, str]:
    """The security channel's lockdown message as it reads now: text, and its blocks as JSON."""
    calls = [
        c
        for c in slack.fake.calls_to("chat.postMessage") + slack.fake.calls_to("chat.update")
        if c.args["text"].startswith("Lockdown of pharmacy-db")
    ]
    last = max(calls, key=lambda c: c.at)
    return last.args["text"], json.dumps(last.args["blocks"], ensure_ascii=False)


class TestThroughSlack:
    def test_only_a_security_admin_may_lock_a_target_down(
        self, slack: RunningApp, service: AccessService, targets: dict[str, MemoryTarget]
    ) -> None:
        amira = active_grant(service, AMIRA)
        slack.command("/jit", f'lockdown pharmacy-db "{WHY}"', "U0BEN")
        reply = slack.replies(1)[-1]
        slack.settle()
        assert reply.startswith("Only a security admin (the wardkey-admins group)"), reply
        assert slack.fake.calls_to("views.open") == []
        assert service.get(amira).state == S.ACTIVE
        assert targets["pharmacy-db"].holds("amira", "pharmacy_read")
        assert Lockdowns(service).in_force() == []
        # Pressing Lock down on a dialog someone else opened is refused too, on the dialog.
        values = {REASON_BLOCK: {REASON_ACTION: {"type": "plain_text_input", "value": WHY}}}
        answer = slack.submit_view(
            CONFIRM_VIEW, values, "U0BEN", json.dumps({"target": "pharmacy-db"})
        ).json()
        assert answer["response_action"] == "errors"
        assert answer["errors"][REASON_BLOCK].startswith("Only a security admin")
        assert Lockdowns(service).in_force() == []

    def test_lockdown_removes_every_grant_and_refuses_access_until_lifted(
        self,
        slack: RunningApp,
        service: AccessService,
        targets: dict[str, MemoryTarget],
        clock: ManualClock,
    ) -> None:
        amira, chloe = active_grant(service, AMIRA), active_grant(service, CHLOE)
        waiting = service.request(BEN, "pharmacy-db", "read", timedelta(minutes=30), REASON).id
        clock.advance(timedelta(minutes=10))

        slack.command("/jit", f'lockdown pharmacy-db "{WHY}"', "U0GITA")
        slack.settle()
        dialog = slack.fake.wait_for("views.open", 1)[0].args["view"]
        shown = json.dumps(dialog, ensure_ascii=False)
        assert dialog["callback_id"] == CONFIRM_VIEW
        assert "2 active grants on it will be removed at once" in shown
        assert "1 request waiting for it will be cancelled" in shown
        # Nothing happens until it is confirmed.
        assert service.get(amira).state == S.ACTIVE
        assert Lockdowns(service).in_force() == []

        confirm(slack, "U0GITA")

        # Gone from the target, every grant ended through the lifecycle, the waiting one
        # cancelled, each saying why.
        pharmacy = targets["pharmacy-db"]
        assert not pharmacy.holds("amira", "pharmacy_read")
        assert not pharmacy.holds("chloe", "pharmacy_read")
        for rid in (amira, chloe):
            view = service.get(rid)
            assert view.state == S.ENDED
            assert view.end_reason == f"lockdown of pharmacy-db: {WHY}"
            assert view.ended_by == "gita@ward.nhs.uk"
        assert service.get(waiting).state == S.CANCELLED
        assert ("check", "amira", "pharmacy_read") in pharmacy.calls  # read back
        # The holders are told, and the one who waited.
        for user, rid in (("U0AMIRA", amira), ("U0CHLOE", chloe), ("U0BEN", waiting)):
            dm = slack.fake.wait_for("chat.postMessage", 1, channel=user)
            said = [c.args["text"] for c in dm if f"#{rid}" in c.args["text"]]
            assert any(WHY in text for text in said), said
        # The security channel: one message, posted once and updated to the final count.
        posts = [p for p in security_posts(slack) if "Lockdown of" in p.args["text"]]
        assert len(posts) == 1
        assert lockdown_updates(slack), "the message was not updated in place"
        final, last = lockdown_message(slack)
        assert final == "Lockdown of pharmacy-db: 2 of 2 removed"
        assert "All 2 removed and checked on the target" in last
        assert "1 waiting request cancelled" in last
        # Audited: who and why.
        started = events(service, "lockdown.started")
        assert len(started) == 1
        assert started[0]["actor"] == "gita@ward.nhs.uk"
        assert started[0]["data"]["reason"] == WHY
        assert started[0]["data"]["active_grants"] == 2
        assert audit.verify(service.db).ok

        # Nobody may ask for it, nor break glass on it, and they are told why.
        slack.command("/jit", f"request pharmacy-db:read 30m {REASON}", "U0AMIRA")
        assert LOCKED in slack.replies(1)[-1] and WHY in slack.replies(1)[-1]
        slack.command("/breakglass", "pharmacy-db:read pharmacy system down in ED", "U0AMIRA")
        reply = slack.replies(2)[-1]
        assert LOCKED in reply and WHY in reply, reply
        slack.settle()
        assert not pharmacy.holds("amira", "pharmacy_read")
        # A second lockdown of the same target is the first: no new dialog, no new event.
        slack.command("/jit", "lockdown pharmacy-db again please", "U0GITA")
        reply = slack.replies(3)[-1]
        slack.settle()
        assert "is already locked down" in reply and "2 of 2 removed" in reply, reply
        assert len(slack.fake.calls_to("views.open")) == 1
        assert len(events(service, "lockdown.started")) == 1

        # Lifted: people may ask again.
        slack.command("/jit", "lockdown lift pharmacy-db vendor confirmed it is safe", "U0GITA")
        reply = slack.replies(4)[-1]
        slack.settle()
        assert reply.startswith("🔓 Lockdown of `pharmacy-db` lifted"), reply
        lifted = events(service, "lockdown.lifted")
        assert [e["data"]["note"] for e in lifted] == ["vendor confirmed it is safe"]
        assert lifted[0]["actor"] == "gita@ward.nhs.uk"
        assert any("lifted by" in p.args["text"] for p in security_posts(slack))
        slack.command("/jit", f"request pharmacy-db:read 30m {REASON}", "U0AMIRA")
        assert slack.replies(5)[-1].startswith("Request #")
        slack.settle()

    def test_a_revoke_the_target_refuses_is_retried_and_listed(
        self,
        slack: RunningApp,
        service: AccessService,
        targets: dict[str, MemoryTarget],
        clock: ManualClock,
    ) -> None:
        amira, chloe = active_grant(service, AMIRA), active_grant(service, CHLOE)
        pharmacy = targets["pharmacy-db"]
        pharmacy.refuse_revoke_of.add("chloe")
        slack.command("/jit", f"lockdown pharmacy-db {WHY}", "U0GITA")
        slack.settle()
        slack.fake.wait_for("views.open", 1)
        confirm(slack, "U0GITA")

        assert service.get(amira).state == S.ENDED
        assert service.get(chloe).state == S.REVOKE_FAILED
        assert pharmacy.holds("chloe", "pharmacy_read")
        text, shown = lockdown_message(slack)
        assert text == "Lockdown of pharmacy-db: 1 of 2 removed, 1 failed"
        assert f"#{chloe}" in shown and "account locked" in shown
        assert "keeps retrying" in shown
        # Like any failed revoke: security alerted, and tried again after its back-off.
        assert any(f"Revoke failed: #{chloe}" in p.args["text"] for p in security_posts(slack))
        pharmacy.refuse_revoke_of.clear()
        client = web_client(slack.fake.token, slack.fake.api_url)
        deps = job_deps(service, Notifier(client, service, SlackDirectory(client)).outbox)
        clock.advance(timedelta(seconds=31))
        grant_jobs.retry_revokes(deps)
        lockdown_jobs.lockdowns(deps)  # the lockdown's message follows
        assert service.get(chloe).state == S.ENDED
        assert not pharmacy.holds("chloe", "pharmacy_read")
        assert lockdown_message(slack)[0] == "Lockdown of pharmacy-db: 2 of 2 removed"

    @pytest.mark.parametrize(
        ("text", "problem"),
        [
            ("lockdown", "Name the target to lock down, then say why."),
            ("lockdown pharmacy-db", "Say why pharmacy-db is being locked down."),
            ("lockdown pharmacy-db:read stop it now", "is not a target name"),
            ("lockdown lift", "Name the target whose lockdown to lift."),
        ],
    )
    def test_a_malformed_lockdown_is_explained_with_an_example(
        self, slack: RunningApp, text: str, problem: str
    ) -> None:
        answer = slack.command("/jit", text, "U0GITA").json()
        assert answer["response_type"] == "ephemeral"
        assert problem in answer["text"]
        assert "For example: `/jit lockdown " in answer["text"]
        assert slack.fake.calls_to("views.open") == []


class TestTheLockdownHolds:
    def test_every_instance_refuses_extensions_approvals_and_requests(
        self, service: AccessService, db: Database, policy: Policy, clock: ManualClock
    ) -> None:
        amira = active_grant(service, AMIRA)
        waiting = service.request(CHLOE, "pharmacy-db", "read", timedelta(minutes=30), REASON)
        view, new = Lockdowns(service).start(GITA, "pharmacy-db", WHY)
        assert new
        # Another instance, on the same database, before the grants are even revoked.
        other = AccessService(
            CoreDeps(db, policy, {t: MemoryTarget() for t in policy.targets}, clock)
        )
        with pytest.raises(NotEligible, match=LOCKED):
            other.extend(amira, AMIRA, timedelta(minutes=10))
        with pytest.raises(NotEligible, match=LOCKED):
            other.request(DEV, "pharmacy-db", "owner", timedelta(minutes=30), REASON, "INC0012345")
        approved = other.approve(waiting.id, HANA)
        assert approved.state == S.CANCELLED  # the approval finds it locked down
        # Other targets carry on.
        assert other.request(
            AMIRA, "directory", "helpdesk", timedelta(minutes=30), REASON, "INC0012345"
        )
        # The same lockdown again: still the one.
        again, new = Lockdowns(other).start(GITA, "pharmacy-db", "second thoughts here")
        assert (again.id, new) == (view.id, False)
        assert len(events(service, "lockdown.started")) == 1

    def test_two_lockdowns_of_one_target_at_once_are_one(self, service: AccessService) -> None:
        active_grant(service, AMIRA)
        results, errors = all_at_once(
            4, lambda n: Lockdowns(service).start(GITA, "pharmacy-db", f"{WHY} {n}")
        )
        assert errors == []
        assert len({view.id for view, _ in results}) == 1
        assert sorted(new for _, new in results) == [False, False, False, True]
        assert len(events(service, "lockdown.started")) == 1

    def test_metrics_say_which_targets_are_locked_down_and_for_how_long(
        self, service: AccessService, clock: ManualClock
    ) -> None:
        Lockdowns(service).start(GITA, "pharmacy-db", WHY)
        clock.advance(timedelta(minutes=20))
        got = samples(metrics_text(service.db, clock).decode())
        assert got[("wardkey_lockdown_seconds", (("target", "pharmacy-db"),))] == 1200
        Lockdowns(service).lift(GITA, "pharmacy-db")
        got = samples(metrics_text(service.db, clock).decode())
        assert not [key for key in got if key[0] == "wardkey_lockdown_seconds"]

    def test_lockdown_and_lift_are_for_security_admins_with_a_reason(
        self, service: AccessService
    ) -> None:
        lockdowns = Lockdowns(service)
        with pytest.raises(NotAllowed):
            lockdowns.start(AMIRA, "pharmacy-db", WHY)
        with pytest.raises(InvalidRequest, match="Say why"):
            lockdowns.start(GITA, "pharmacy-db", "x")
        with pytest.raises(InvalidRequest, match="no target called"):
            lockdowns.start(GITA, "pharmacy", WHY)
        with pytest.raises(InvalidRequest, match="is not locked down"):
            lockdowns.lift(GITA, "pharmacy-db")
        lockdowns.start(GITA, "pharmacy-db", WHY)
        with pytest.raises(NotAllowed):
            lockdowns.lift(BEN, "pharmacy-db")
        assert lockdowns.lift(GITA, "pharmacy-db").lifted_by == "gita@ward.nhs.uk"

    def test_a_grant_finishing_after_the_lockdown_is_caught_by_the_sweep(
        self, service: AccessService, targets: dict[str, MemoryTarget]
    ) -> None:
        """A grant whose target call was under way when the lockdown came ends up active
        after the lockdown's round: the sweep (every second) takes it away."""
        lockdowns = Lockdowns(service)
        view, _ = lockdowns.start(GITA, "pharmacy-db", WHY)
        lockdowns.run(view.id)
        # As if its grant finished just now (seeded past the checks, straight into active).
        amira = _seed_active(service, "amira")
        assert lockdown_jobs.lockdowns(job_deps(service)) == [view.id]
        assert service.get(amira).state == S.ENDED
        assert not targets["pharmacy-db"].holds("amira", "pharmacy_read")
        assert lockdowns.progress(view.id).removed == 1


def _seed_active(service: AccessService, account: str) -> int:
    from app.store.models import AccessRequest

    now = service.clock.now()
    service.adapters["pharmacy-db"].grant(account, "pharmacy_read", now + timedelta(hours=1))
    with service.db.transaction() as session:
        req = AccessRequest(
            state=S.ACTIVE.value,
            version=3,
            requester=f"{account}@ward.nhs.uk",
            target="pharmacy-db",
            role="read",
            path="clinical",
            entitlement="pharmacy_read",
            account=account,
            reason=REASON,
            requested_seconds=1800,
            approvals_needed=1,
            approval_round=0,
            revoke_attempts=0,
            escalation_level=0,
            preexisting=False,
            created_at=now,
            granted_at=now,
            expires_at=now + timedelta(minutes=30),
            state_changed_at=now,
        )
        session.add(req)
        session.flush()
        return req.id


class TestParsing:
    def test_lockdown_and_lift(self) -> None:
        assert parse_lockdown(f'Pharmacy-DB "{WHY}"'.split()) == Lockdown("pharmacy-db", WHY)
        assert parse_lockdown(f"pharmacy-db {WHY}".split()) == Lockdown("pharmacy-db", WHY)
        assert parse_lockdown(["lift", "pharmacy-db"]) == LiftLockdown("pharmacy-db", "")
        assert parse_lockdown(["lift", "pharmacy-db", "“all", "clear”"]) == LiftLockdown(
            "pharmacy-db", "all clear"
        )
        with pytest.raises(UsageError):
            parse_lockdown([])


# ------------------------------------------------------------------ the fast path: webhooks

KEY = "k" * 32
GRANTS = 60


@pytest.fixture
def console() -> Iterator[WebhookTarget]:
    target = WebhookTarget(KEY.encode(), name="epr").start()
    yield target
    target.stop()


@pytest.fixture
def big(
    db: Database,
    console: WebhookTarget,
    tmp_path: Path,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> AccessService:
    """A trust with GRANTS people holding access on a signed-webhook console."""
    path = tmp_path / "policy.yaml"
    write_big_trust(path, console.url, GRANTS)
    monkeypatch.setenv(KEY_VARIABLE, KEY)
    policy = load_policy(path)  # its admins, the security admins too, are the approver alone
    service = AccessService(
        CoreDeps(db, policy, build_adapters(policy), clock, pause=lambda _s: None)
    )
    for n in range(GRANTS):
        req = service.request(staff(n), CONSOLE, ROLE, timedelta(hours=1), "ward 12 order sets")
        assert service.approve(req.id, APPROVER).state == S.ACTIVE
    assert len(console.members[ENTITLEMENT]) == GRANTS
    return service


class TestBatchedRevokes:
    def test_a_lockdown_revokes_in_batches_and_reads_the_target_back(
        self, big: AccessService, console: WebhookTarget
    ) -> None:
        console.sessions[account_of(3)] = 2
        lockdowns = Lockdowns(big)
        view, _ = lockdowns.start(APPROVER, CONSOLE, WHY)
        progress = lockdowns.run(view.id)
        assert (progress.total, progress.removed, progress.failed) == (GRANTS, GRANTS, [])
        assert console.members[ENTITLEMENT] == set()
        assert console.batch_calls == 1  # 60 grants: one call
        assert console.sessions[account_of(3)] == 0
        succeeded = events(big, "revoke.succeeded")
        assert len({e["request_id"] for e in succeeded}) == len(succeeded) == GRANTS
        assert all(e["data"]["verified"] and e["data"]["batch"] for e in succeeded)
        assert sum(e["data"]["sessions_ended"] for e in succeeded) == 2
        assert audit.verify(big.db).ok

    def test_an_item_the_target_refuses_fails_alone(
        self, big: AccessService, console: WebhookTarget
    ) -> None:
        console.refuse_revoke.add(account_of(7))
        lockdowns = Lockdowns(big)
        view, _ = lockdowns.start(APPROVER, CONSOLE, WHY)
        progress = lockdowns.run(view.id)
        assert progress.removed == GRANTS - 1
        assert [f.account for f in progress.failed] == [account_of(7)]
        assert "locked by the console" in progress.failed[0].detail
        assert console.members[ENTITLEMENT] == {account_of(7)}

    def test_a_receiver_without_batches_gets_one_call_per_grant(
        self, big: AccessService, console: WebhookTarget
    ) -> None:
        console.batch = False
        lockdowns = Lockdowns(big)
        view, _ = lockdowns.start(APPROVER, CONSOLE, WHY)
        assert lockdowns.run(view.id).removed == GRANTS
        assert console.members[ENTITLEMENT] == set()
        assert console.batch_calls == 0
        assert len(console.removals) == GRANTS

    def test_an_expiry_wave_uses_batches_too(
        self, big: AccessService, console: WebhookTarget, clock: ManualClock
    ) -> None:
        clock.advance(timedelta(hours=1, seconds=1))
        assert len(big.expire_due()) == GRANTS
        assert console.members[ENTITLEMENT] == set()
        assert console.batch_calls == 3  # 20 to a call: several workers share a wave
        assert {big.get(n + 1).state for n in range(GRANTS)} == {S.ENDED}
        assert audit.verify(big.db).ok

    def test_the_adapter_sends_a_signed_batch_and_understands_each_answer(
        self, console: WebhookTarget
    ) -> None:
        adapter = WebhookAdapter(WebhookSettings(url=console.url), KEY.encode())
        console.members[ENTITLEMENT] |= {"amira", "ben"}
        console.refuse_revoke.add("ben")
        results = adapter.revoke_many(
            [("amira", ENTITLEMENT), ("ben", ENTITLEMENT), ("cat", ENTITLEMENT)]
        )
        assert results is not None
        assert [type(r).__name__ for r in results] == [
            "RevokeResult",
            "PermanentAdapterError",
            "RevokeResult",
        ]
        assert results[2].already_absent  # type: ignore[union-attr]
        assert console.refused == 0
        console.batch = False
        assert adapter.revoke_many([("amira", ENTITLEMENT)]) is None
        assert adapter.batches is False
