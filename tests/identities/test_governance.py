"""Vendors, contractors and service accounts under the same discipline as staff: sponsors,
contract limits, owners, attestation, orphans. (The standing-privilege report is
tests/standing/test_standing.py's.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.access import AccessService
from app.clock import ManualClock
from app.directory import SlackDirectory
from app.identities import jobs as identity_jobs
from app.identities.messages import ATTEST_KEEP, ATTEST_RETIRE
from app.identities.service import RETIRED, STILL_NEEDED, AttestationStep, IdentityService
from app.lifecycle.deps import CoreDeps
from app.lifecycle.errors import NotAllowed, NotEligible
from app.lifecycle.snapshots import RequestSnapshot
from app.notify.notifier import Notifier
from app.policy import Person, Policy
from app.scheduler import job_deps
from app.slack.app import web_client
from app.store import Database
from app.store.models import RequestState as S
from tests.conftest import BEN, DEV, ERIN, FARID, GITA, VAL, audit_actions
from tests.fakes.memory_adapter import MemoryTarget
from tests.slack_harness import RunningApp, SlackOnSqlite

WHY = "fix stuck order set on ward 12"


def elevate_svc_lab(service: AccessService, person: Person = DEV) -> RequestSnapshot:
    return service.request(
        person, "pharmacy-db", "owner", timedelta(hours=1), WHY, "CHG0012345", identity="svc-lab"
    )


@pytest.fixture
def identities(service: AccessService) -> IdentityService:
    return IdentityService(service)


def with_identity(policy: Policy, **changes: object) -> Policy:
    ident = policy.identities["svc-lab"].model_copy(update=changes)
    return policy.model_copy(update={"identities": {"svc-lab": ident}})


class TestVendors:
    def test_the_sponsor_approves_on_top_of_the_path(self, service: AccessService) -> None:
        req = service.request(VAL, "pharmacy-db", "read", timedelta(minutes=30), WHY)
        assert req.sponsor == "ben@ward.nhs.uk"
        # Ben is on call too, but his click counts once: as the sponsor.
        after_ben = service.approve(req.id, BEN)
        assert after_ben.state == S.PENDING and after_ben.sponsor_approved
        assert after_ben.approvals == ()
        done = service.approve(req.id, GITA)
        assert done.state == S.ACTIVE
        assert "request.approval_recorded" in audit_actions(service, req.id)

    def test_path_approval_alone_is_not_enough(self, service: AccessService) -> None:
        req = service.request(VAL, "pharmacy-db", "read", timedelta(minutes=30), WHY)
        view = service.approve(req.id, GITA)
        assert view.state == S.PENDING and not view.sponsor_approved

    def test_grants_stop_at_the_contract_end_and_an_ended_contract_cannot_ask(
        self, service: AccessService, clock: ManualClock
    ) -> None:
        clock.set(datetime(2026, 11, 30, 23, 0, tzinfo=UTC))  # one hour of contract left
        with pytest.raises(Exception, match="1h or less"):
            service.request(VAL, "pharmacy-db", "read", timedelta(hours=2), WHY)
        clock.set(datetime(2026, 12, 1, 0, 1, tzinfo=UTC))
        with pytest.raises(NotEligible, match="contract ended on 30 Nov 2026"):
            service.request(VAL, "pharmacy-db", "read", timedelta(minutes=30), WHY)


class TestServiceAccounts:
    def test_only_the_owner_elevates_it_and_the_grant_goes_to_its_account(
        self, service: AccessService, targets: dict[str, MemoryTarget]
    ) -> None:
        with pytest.raises(NotEligible, match="Only the owner of svc-lab"):
            elevate_svc_lab(service, ERIN)
        req = elevate_svc_lab(service)
        assert req.account == "svc_lab" and req.identity == "svc-lab"
        service.approve(req.id, ERIN)
        assert service.approve(req.id, FARID).state == S.ACTIVE
        assert targets["pharmacy-db"].holds("svc_lab", "pharmacy_owner")

    def test_attestation_asked_once_kept_then_asked_again_after_the_period(
        self, identities: IdentityService, clock: ManualClock
    ) -> None:
        assert identities.attestation_follow_ups() == [("svc-lab", AttestationStep.ASKED)]
        assert identities.attestation_follow_ups() == []
        with pytest.raises(NotAllowed, match="Only the owner"):
            identities.attest("svc-lab", ERIN, still_needed=True)
        assert identities.attest("svc-lab", DEV, still_needed=True).outcome == STILL_NEEDED
        clock.advance(timedelta(days=89))
        assert identities.attestation_follow_ups() == []
        clock.advance(timedelta(days=1))
        assert identities.attestation_follow_ups() == [("svc-lab", AttestationStep.ASKED)]

    def test_unattested_is_reported_once_and_blocked_when_the_policy_says(
        self,
        db: Database,
        policy: Policy,
        targets: dict[str, MemoryTarget],
        clock: ManualClock,
    ) -> None:
        strict = AccessService(
            CoreDeps(db, with_identity(policy, block_unattested=True), targets, clock)
        )
        accounts = IdentityService(strict)
        accounts.attestation_follow_ups()
        clock.advance(timedelta(days=8))
        assert accounts.attestation_follow_ups() == [("svc-lab", AttestationStep.OVERDUE)]
        assert accounts.attestation_follow_ups() == []
        with pytest.raises(NotEligible, match="svc-lab is blocked"):
            elevate_svc_lab(strict)
        accounts.attest("svc-lab", DEV, still_needed=True)
        elevate_svc_lab(strict)

    def test_retiring_ends_its_elevations_and_refuses_new_ones(
        self,
        service: AccessService,
        identities: IdentityService,
        targets: dict[str, MemoryTarget],
    ) -> None:
        req = elevate_svc_lab(service)
        service.approve(req.id, ERIN)
        service.approve(req.id, FARID)
        identities.attestation_follow_ups()
        assert identities.attest("svc-lab", DEV, still_needed=False).outcome == RETIRED
        assert service.get(req.id).state == S.ENDED
        assert not targets["pharmacy-db"].holds("svc_lab", "pharmacy_owner")
        with pytest.raises(NotEligible, match="retired"):
            elevate_svc_lab(service)

    @pytest.mark.parametrize(
        "db", [pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"], indirect=True
    )
    def test_orphans_flagged_once_and_cleared_when_the_owner_is_back(
        self, service: AccessService, identities: IdentityService
    ) -> None:
        gone = {"dev@ward.nhs.uk": "owner dev@ward.nhs.uk is deactivated in Slack"}
        found = identities.flag_orphans(gone.get)
        assert [(o.identity, o.reason) for o in found] == [("svc-lab", gone["dev@ward.nhs.uk"])]
        assert identities.flag_orphans(gone.get) == []
        assert [o.identity for o in identities.orphans()] == ["svc-lab"]
        assert identities.flag_orphans(lambda _m: None) == []
        assert identities.orphans() == []
        assert audit_actions(service).count("identity.orphaned") == 1
        assert "identity.owner_restored" in audit_actions(service)

    def test_an_owner_in_no_group_is_an_orphan(
        self, db: Database, policy: Policy, targets: dict[str, MemoryTarget], clock: ManualClock
    ) -> None:
        left = with_identity(policy, owner="left.trust@ward.nhs.uk")
        accounts = IdentityService(AccessService(CoreDeps(db, left, targets, clock)))
        assert "in no group of the policy" in accounts.flag_orphans(lambda _m: None)[0].reason


class TestInSlack(SlackOnSqlite):
    def notifier(self, slack: RunningApp, service: AccessService) -> Notifier:
        client = web_client(slack.fake.token, slack.fake.api_url)
        return Notifier(client, service, SlackDirectory(client))

    def test_vendor_sees_contract_time_and_the_sponsor_gets_the_card_and_each_use(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        slack.command("/jit", "status", "U0VAL")
        assert "contract ends on 30 Nov 2026: 21h left" in slack.replies()[-1]
        slack.command("/jit", f"request pharmacy-db:read 30m {WHY}", "U0VAL")
        card = slack.fake.wait_for("chat.postMessage", 1, channel="U0BEN")[0]
        assert "vendor sponsor Ben Hughes still to approve" in str(card.args["blocks"])
        rid = service.requests_of(VAL)[0].id
        service.approve(rid, BEN)
        service.approve(rid, GITA)
        self.notifier(slack, service).deliver_now()
        told = slack.fake.wait_for("chat.postMessage", 2, channel="U0BEN")[-1]
        assert (
            "Vendor access you sponsor" in told.args["text"] and "active until" in told.args["text"]
        )

    def test_request_for_a_service_account_and_a_mistyped_one(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        slack.command("/jit", f"request pharmacy-db:owner 1h {WHY} CHG0012345 for svc-lab", "U0DEV")
        slack.command("/jit", f"request pharmacy-db:owner 1h {WHY} for svc-labb", "U0DEV")
        replies = slack.replies(2)
        assert any("is with the engineering approvers" in r for r in replies), replies
        assert any("There is no service account called 'svc-labb'" in r for r in replies), replies
        [req] = service.requests_of(DEV)
        assert req.identity == "svc-lab" and req.account == "svc_lab"

    def test_attestation_card_buttons_only_for_the_owner(
        self, slack: RunningApp, service: AccessService
    ) -> None:
        notifier = self.notifier(slack, service)
        identity_jobs.identities(job_deps(service, notifier.outbox))
        card = slack.fake.wait_for("chat.postMessage", 1, channel="U0DEV")[0]
        assert ATTEST_KEEP in str(card.args["blocks"]) and ATTEST_RETIRE in str(card.args["blocks"])
        slack.click(ATTEST_KEEP, "svc-lab", "U0ERIN", channel="D0ERIN")
        refusal = slack.fake.wait_for("chat.postEphemeral", 1)[0]
        assert "Only the owner of svc-lab" in refusal.args["text"]
        slack.click(
            ATTEST_KEEP,
            "svc-lab",
            "U0DEV",
            channel=card.response["channel"],
            message_ts=card.response["ts"],
        )
        updated = slack.fake.wait_for("chat.update", 1)[0]
        assert "Confirmed still needed" in str(updated.args["blocks"])
        answered = IdentityService(service).attestation("svc-lab")
        assert answered is not None and answered.outcome == STILL_NEEDED
