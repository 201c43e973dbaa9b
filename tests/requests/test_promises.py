"""What WardKey tells people of a request it has done, it has done: "escalated" in a message is
backed by the card really sent, every copy of a card ends up saying where the request stands,
and a requester whose request is cancelled by a sweep or a retirement hears why; through the same
doors people use (signed Slack requests to the running app, the sweeps a worker runs). A failed
grant or revoke's alerts: tests/grants/test_promises.py."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from app.access import AccessService
from app.clock import ManualClock
from app.directory import SlackDirectory
from app.identities import jobs as identity_jobs
from app.identities.messages import ATTEST_RETIRE
from app.lifecycle.deps import CoreDeps
from app.notify.notifier import Notifier
from app.policy import Policy, load_policy
from app.requests import jobs as request_jobs
from app.requests.messages import APPROVE_ACTION
from app.scheduler import job_deps
from app.slack.app import web_client
from app.store.models import RequestState as S
from tests.conftest import HERE, sqlite_copy
from tests.fakes.memory_adapter import MemoryTarget
from tests.slack_harness import REQUEST, RunningApp, SlackOnSqlite, ask, run_app


def notifier_for(slack: RunningApp, service: AccessService) -> Notifier:
    """The notifier a worker's sweeps use, talking to the same fake Slack."""
    client = web_client(slack.fake.token, slack.fake.api_url)
    return Notifier(client, service, SlackDirectory(client))


class TestAnOverdueApproval(SlackOnSqlite):
    def test_nobody_further_to_escalate_to_is_said_plainly(
        self, slack: RunningApp, service: AccessService, clock: ManualClock
    ) -> None:
        """The ward's clinical rota escalates to the managers, who have the card already:
        the requester is not told of approvers that were never asked."""
        rid = ask(slack)
        slack.fake.wait_for("chat.postMessage", 3)
        clock.advance(timedelta(minutes=11))  # past the clinical path's 10-minute SLA
        request_jobs.escalate(job_deps(service, notifier_for(slack, service).outbox))

        told = slack.fake.wait_for("chat.postMessage", 1, channel="U0AMIRA")[-1].args["text"]
        assert f"Your request #{rid} has waited 11m" in told
        assert "nobody further to escalate it to" in told
        assert "escalated to" not in told
        assert len(slack.fake.calls_to("chat.postMessage", text=None)) == 0

    @pytest.fixture
    def escalating_to_infra(self, tmp_path: Path) -> Policy:
        text = (HERE / "data" / "ward_policy.yaml").read_text()
        changed = tmp_path / "policy.yaml"
        changed.write_text(text.replace("escalation: managers", "escalation: infra-leads"))
        return load_policy(changed)

    def test_escalated_means_the_card_reached_more_approvers(
        self,
        tmp_path: Path,
        sqlite_template: Path,
        escalating_to_infra: Policy,
        targets: dict[str, MemoryTarget],
        clock: ManualClock,
    ) -> None:
        db = next(sqlite_copy(tmp_path, sqlite_template))
        service = AccessService(
            CoreDeps(db, escalating_to_infra, targets, clock, pause=lambda _: None)
        )
        for slack in run_app(service):
            rid = ask(slack)
            slack.fake.wait_for("chat.postMessage", 3)
            clock.advance(timedelta(minutes=11))
            request_jobs.escalate(job_deps(service, notifier_for(slack, service).outbox))
            # Erin, Farid and Gita lead infrastructure; Gita has the card already.
            for dm in ("U0ERIN", "U0FARID"):
                card = slack.fake.wait_for("chat.postMessage", 1, channel=dm)[0]
                assert f"Escalated: access request #{rid}" in card.args["text"]
            told = slack.fake.wait_for("chat.postMessage", 1, channel="U0AMIRA")[-1]
            assert (
                "so it has been escalated to Erin Walsh and Farid Rahman too" in told.args["text"]
            )
        db.dispose()


class TestAQuickApprover(SlackOnSqlite):
    def test_a_click_while_cards_are_still_going_out_leaves_no_card_saying_pending(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        """Ben approves from the first card while Slack is slow to take the others: every copy
        still ends up saying approved, none keeps offering Approve."""
        slack.fake.latency = 0.3
        slack.command("/jit", f"request {REQUEST}", "U0AMIRA")
        first = slack.fake.wait_for("chat.postMessage", 1, timeout=10)[0]
        rid = int(first.args["text"].split("#")[1].split(":")[0])
        slack.click(APPROVE_ACTION, str(rid), "U0BEN")
        slack.settle(timeout=30)
        assert service.get(rid).state == S.ACTIVE
        cards = slack.fake.calls_to("chat.postMessage", text=first.args["text"])
        assert len(cards) == 3
        for card in cards:
            copy = (card.response["channel"], card.response["ts"])
            last = [
                u
                for u in slack.fake.calls_to("chat.update")
                if (u.args["channel"], u.args["ts"]) == copy
            ]
            assert last, f"the card in {copy[0]} was never updated"
            assert "Approved by" in json.dumps(last[-1].args["blocks"])
            assert APPROVE_ACTION not in json.dumps(last[-1].args["blocks"])


class TestRetiringAServiceAccount(SlackOnSqlite):
    def test_its_waiting_request_is_cancelled_and_the_requester_is_told_why(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        """Dev asked to elevate svc-lab, then retires it from the attestation card: the
        request cannot go on, every approver's card says so and Dev hears why."""
        slack.command(
            "/jit",
            "request pharmacy-db:owner 1h rotate lab interface keys CHG0012345 for svc-lab",
            "U0DEV",
        )
        slack.settle()
        [request] = service.requests_of_key("dev@ward.nhs.uk", (S.PENDING,))
        notifier = notifier_for(slack, service)
        identity_jobs.identities(job_deps(service, notifier.outbox))
        card = slack.fake.wait_for("chat.postMessage", 1, channel="U0DEV")[0]
        slack.click(
            ATTEST_RETIRE,
            "svc-lab",
            "U0DEV",
            channel=card.response["channel"],
            message_ts=card.response["ts"],
        )
        slack.settle()
        assert service.get(request.id).state == S.CANCELLED
        told = [
            m.args["text"]
            for m in slack.fake.calls_to("chat.postMessage", channel="U0DEV")
            if f"Your request #{request.id}" in m.args["text"]
        ]
        assert told and "Cancelled: " in told[-1] and "retired" in told[-1], told
        updates = slack.fake.calls_to("chat.update")
        assert any("Cancelled: " in json.dumps(u.args["blocks"]) for u in updates)


class TestAVendorsContractEnds(SlackOnSqlite):
    def test_the_contract_sweep_cancels_the_waiting_request_and_tells_the_vendor_why(
        self, slack: RunningApp, service: AccessService, clock: ManualClock
    ) -> None:
        """Val of Medisoft asks on the contract's last night; nobody decides before it ends.
        The worker's contract sweep cancels the request, and Val and the cards are told why."""
        slack.command("/jit", f"request {REQUEST}", "U0VAL")
        slack.settle()
        [request] = service.requests_of_key("val@vendor.example", (S.PENDING,))
        clock.advance(timedelta(days=1))  # Medisoft's contract ended on 30 November
        notifier = notifier_for(slack, service)
        assert identity_jobs.contracts(job_deps(service, notifier.outbox)) == [request.id]
        assert service.get(request.id).state == S.CANCELLED
        told = slack.fake.wait_for("chat.postMessage", 1, channel="U0VAL")[-1].args["text"]
        assert f"Your request #{request.id}" in told and "Cancelled by WardKey" in told, told
        assert "contract" in told
