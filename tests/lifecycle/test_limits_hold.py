"""Every limit holds at every step: the caps of the role, the path, the service account and the
vendor contract apply to requests, extensions and break-glass alike, and who asked is checked
again when the access is approved and just before it is granted, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from app.access import AccessService
from app.clock import ManualClock
from app.identities.service import RETIRED, IdentityService
from app.lifecycle.deps import CoreDeps
from app.lifecycle.errors import AlreadyDecided, InvalidRequest, NotEligible
from app.policy import Policy
from app.reviews.service import ReviewService
from app.store import AuditEvent, Database
from app.store.models import RequestState as S
from tests.conftest import AMIRA, BEN, CHLOE, DEV, ERIN, FARID, GITA, HANA, VAL, audit_actions
from tests.fakes.memory_adapter import MemoryTarget, SimulatedCrash

WHY = "fix stuck order set on ward 12"
# Medisoft's contract (tests/data/ward_policy.yaml) ends at midnight after 30 Nov, London time,
# which is GMT in November.
CONTRACT_END = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)


def with_role(policy: Policy, target: str, role: str, **changes: object) -> Policy:
    spec = policy.targets[target]
    roles = {**spec.roles, role: spec.roles[role].model_copy(update=changes)}
    targets = {**policy.targets, target: spec.model_copy(update={"roles": roles})}
    return policy.model_copy(update={"targets": targets})


def with_group(policy: Policy, group: str, members: list[str]) -> Policy:
    return policy.model_copy(update={"groups": {**policy.groups, group: members}})


def with_contract_end(policy: Policy, day: datetime) -> Policy:
    vendor = policy.vendors["medisoft"].model_copy(update={"contract_end": day.date()})
    return policy.model_copy(update={"vendors": {"medisoft": vendor}})


def with_identity(policy: Policy, **changes: object) -> Policy:
    ident = policy.identities["svc-lab"].model_copy(update=changes)
    return policy.model_copy(update={"identities": {"svc-lab": ident}})


def last_event(service: AccessService, request_id: int, action: str) -> dict[str, Any]:
    """The data of the newest event of this action about the request."""
    with service.db.read() as session:
        body = session.scalars(
            select(AuditEvent.body)
            .where(AuditEvent.request_id == request_id, AuditEvent.action == action)
            .order_by(AuditEvent.seq.desc())
        ).first()
    assert body is not None, f"no {action} event for request {request_id}"
    data: dict[str, Any] = json.loads(body)["data"]
    return data


class TestCapsOnExtensions:
    def test_a_role_capped_at_15m_is_not_stretched_to_4h_by_extending(
        self, db: Database, policy: Policy, targets: dict[str, MemoryTarget], clock: ManualClock
    ) -> None:
        # The clinical path allows 2h (4h with extensions) and asks nobody again to extend; the
        # read role itself is capped at 15 minutes, and that is the limit that counts.
        capped = with_role(policy, "pharmacy-db", "read", max_duration=timedelta(minutes=15))
        service = AccessService(CoreDeps(db, capped, targets, clock))
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=15), WHY)
        assert service.approve(req.id, BEN).state == S.ACTIVE
        with pytest.raises(InvalidRequest, match="limit for pharmacy-db:read is 15m"):
            service.extend(req.id, AMIRA, timedelta(hours=3, minutes=45))
        assert service.get(req.id).expires_at == clock.now() + timedelta(minutes=15)

    def test_the_owner_roles_2h_cap_holds_although_the_path_allows_6h_in_all(
        self, service: AccessService
    ) -> None:
        req = service.request(DEV, "pharmacy-db", "owner", timedelta(hours=2), WHY, "CHG0012345")
        service.approve(req.id, ERIN)
        assert service.approve(req.id, FARID).state == S.ACTIVE
        with pytest.raises(InvalidRequest, match="limit for pharmacy-db:owner is 2h"):
            service.extend(req.id, DEV, timedelta(hours=2))

    def test_a_service_accounts_1h_cap_holds_for_its_extensions(
        self, service: AccessService
    ) -> None:
        # svc-lab may be elevated for 1h; the owner role it is elevated to allows 2h and the
        # engineering path 6h in all: the service account's own cap is the one that counts.
        req = service.request(
            DEV,
            "pharmacy-db",
            "owner",
            timedelta(minutes=45),
            WHY,
            "CHG0012345",
            identity="svc-lab",
        )
        service.approve(req.id, ERIN)
        assert service.approve(req.id, FARID).state == S.ACTIVE
        with pytest.raises(InvalidRequest, match="limit for pharmacy-db:owner is 1h"):
            service.extend(req.id, DEV, timedelta(minutes=30))
        assert service.get(req.id).extension is None
        # Up to the 1h is allowed (the engineering path asks its approvers again).
        assert service.extend(req.id, DEV, timedelta(minutes=15)).extension == timedelta(minutes=15)

    def test_a_vendors_extension_never_runs_past_the_contract(
        self, service: AccessService, clock: ManualClock
    ) -> None:
        clock.set(CONTRACT_END - timedelta(hours=1))
        req = service.request(VAL, "pharmacy-db", "read", timedelta(minutes=30), WHY)
        service.approve(req.id, BEN)
        assert service.approve(req.id, GITA).state == S.ACTIVE
        with pytest.raises(InvalidRequest, match="at most 30m"):
            service.extend(req.id, VAL, timedelta(minutes=45))
        assert service.extend(req.id, VAL, timedelta(minutes=30)).expires_at == CONTRACT_END

    def test_someone_no_longer_eligible_cannot_extend(
        self, db: Database, policy: Policy, targets: dict[str, MemoryTarget], clock: ManualClock
    ) -> None:
        service = AccessService(CoreDeps(db, policy, targets, clock))
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), WHY)
        service.approve(req.id, BEN)
        # Amira moves team; the policy is reloaded without her in clinical-systems.
        moved = with_group(policy, "clinical-systems", ["ben@ward.nhs.uk", "chloe@ward.nhs.uk"])
        after = AccessService(CoreDeps(db, moved, targets, clock))
        with pytest.raises(NotEligible, match="not eligible for pharmacy-db:read"):
            after.extend(req.id, AMIRA, timedelta(minutes=30))

    def test_an_extension_approved_after_the_owner_left_the_team_is_refused(
        self, db: Database, policy: Policy, targets: dict[str, MemoryTarget], clock: ManualClock
    ) -> None:
        service = AccessService(CoreDeps(db, policy, targets, clock))
        req = service.request(DEV, "pharmacy-db", "owner", timedelta(hours=1), WHY, "CHG0012345")
        service.approve(req.id, ERIN)
        service.approve(req.id, FARID)
        assert service.extend(req.id, DEV, timedelta(minutes=30)).extension is not None
        moved = with_group(policy, "infrastructure", ["erin@ward.nhs.uk"])
        after = AccessService(CoreDeps(db, moved, targets, clock))
        after.approve(req.id, ERIN)
        view = after.approve(req.id, FARID)
        assert view.state == S.ACTIVE and view.extension is None
        assert view.expires_at == clock.now() + timedelta(hours=1)
        refused = last_event(after, req.id, "extension.refused")
        assert "not eligible for pharmacy-db:owner" in str(refused["why"])


class TestCapsOnBreakGlass:
    def test_break_glass_takes_the_roles_own_cap(
        self, db: Database, policy: Policy, targets: dict[str, MemoryTarget], clock: ManualClock
    ) -> None:
        capped = with_role(policy, "pharmacy-db", "read", max_duration=timedelta(minutes=15))
        service = AccessService(CoreDeps(db, capped, targets, clock))
        with pytest.raises(InvalidRequest, match="the 15m allowed"):
            service.break_glass(AMIRA, "pharmacy-db", "read", WHY, timedelta(minutes=30))
        used = service.break_glass(AMIRA, "pharmacy-db", "read", WHY)
        assert used.expires_at == clock.now() + timedelta(minutes=15)

    def test_a_vendors_break_glass_stops_at_the_contract_end(
        self, service: AccessService, clock: ManualClock
    ) -> None:
        clock.set(CONTRACT_END - timedelta(minutes=20))
        used = service.break_glass(VAL, "pharmacy-db", "read", WHY)
        assert used.state == S.ACTIVE and used.expires_at == CONTRACT_END


class TestRecheckedAtApproval:
    def test_a_vendor_approved_after_the_contract_ended_is_not_granted(
        self, service: AccessService, targets: dict[str, MemoryTarget], clock: ManualClock
    ) -> None:
        clock.set(CONTRACT_END - timedelta(minutes=20))
        req = service.request(VAL, "pharmacy-db", "read", timedelta(minutes=15), WHY)
        service.approve(req.id, BEN)  # the sponsor, at 23:40
        clock.set(CONTRACT_END + timedelta(minutes=5))
        view = service.approve(req.id, GITA)  # the path's approver, at 00:05: too late
        assert view.state == S.CANCELLED
        assert view.ended_by == "wardkey"
        assert view.end_reason is not None and "contract ended on 30 Nov 2026" in view.end_reason
        assert not targets["pharmacy-db"].holds("val", "pharmacy_read")
        assert targets["pharmacy-db"].calls == []
        cancelled = last_event(service, req.id, "request.cancelled")
        assert cancelled["by"] == "wardkey" and "contract ended" in str(cancelled["why"])

    def test_a_vendors_grant_ends_at_the_contract_end_not_after(
        self, service: AccessService, clock: ManualClock
    ) -> None:
        clock.set(CONTRACT_END - timedelta(minutes=20))
        req = service.request(VAL, "pharmacy-db", "read", timedelta(minutes=20), WHY)
        service.approve(req.id, BEN)
        clock.advance(timedelta(minutes=10))  # the approver is ten minutes late
        view = service.approve(req.id, GITA)
        assert view.state == S.ACTIVE and view.expires_at == CONTRACT_END
        assert last_event(service, req.id, "grant.succeeded")["shortened_to_limit"] is True

    def test_someone_removed_from_the_eligible_group_is_not_granted(
        self, db: Database, policy: Policy, targets: dict[str, MemoryTarget], clock: ManualClock
    ) -> None:
        req = AccessService(CoreDeps(db, policy, targets, clock)).request(
            AMIRA, "pharmacy-db", "read", timedelta(minutes=30), WHY
        )
        moved = with_group(policy, "clinical-systems", ["ben@ward.nhs.uk", "chloe@ward.nhs.uk"])
        view = AccessService(CoreDeps(db, moved, targets, clock)).approve(req.id, BEN)
        assert view.state == S.CANCELLED
        assert view.end_reason is not None and "not eligible" in view.end_reason
        assert not targets["pharmacy-db"].holds("amira", "pharmacy_read")

    def test_a_cap_lowered_while_the_request_waited_shortens_the_grant(
        self, db: Database, policy: Policy, targets: dict[str, MemoryTarget], clock: ManualClock
    ) -> None:
        req = AccessService(CoreDeps(db, policy, targets, clock)).request(
            AMIRA, "pharmacy-db", "read", timedelta(hours=2), WHY
        )
        capped = with_role(policy, "pharmacy-db", "read", max_duration=timedelta(minutes=15))
        view = AccessService(CoreDeps(db, capped, targets, clock)).approve(req.id, BEN)
        assert view.state == S.ACTIVE
        assert view.expires_at == clock.now() + timedelta(minutes=15)

    def test_a_blocked_service_account_is_not_elevated_when_its_attestation_lapses(
        self, db: Database, policy: Policy, targets: dict[str, MemoryTarget], clock: ManualClock
    ) -> None:
        strict = AccessService(
            CoreDeps(db, with_identity(policy, block_unattested=True), targets, clock)
        )
        IdentityService(strict).attestation_follow_ups()  # the owner is asked; 7 days to answer
        clock.advance(timedelta(days=7) - timedelta(minutes=30))
        req = strict.request(
            DEV, "pharmacy-db", "owner", timedelta(hours=1), WHY, "CHG0012345", identity="svc-lab"
        )
        clock.advance(timedelta(hours=1))  # the answer is now overdue
        strict.approve(req.id, ERIN)
        view = strict.approve(req.id, FARID)
        assert view.state == S.CANCELLED
        assert view.end_reason is not None and "svc-lab is blocked" in view.end_reason
        assert not targets["pharmacy-db"].holds("svc_lab", "pharmacy_owner")

    def test_rechecked_again_just_before_a_grant_a_crash_left_waiting(
        self, service: AccessService, targets: dict[str, MemoryTarget], clock: ManualClock
    ) -> None:
        clock.set(CONTRACT_END - timedelta(minutes=20))
        req = service.request(VAL, "pharmacy-db", "read", timedelta(minutes=15), WHY)
        service.approve(req.id, BEN)
        targets["pharmacy-db"].crash_after.add("check")  # the worker dies before granting
        with pytest.raises(SimulatedCrash):
            service.approve(req.id, GITA)
        assert service.get(req.id).state == S.APPROVED
        clock.set(CONTRACT_END + timedelta(minutes=1))  # another worker picks it up later
        service.reconcile()
        view = service.get(req.id)
        assert view.state == S.CANCELLED and "contract ended" in (view.end_reason or "")
        assert not targets["pharmacy-db"].holds("val", "pharmacy_read")

    def test_a_grant_a_crash_left_half_done_is_taken_back_once_the_contract_has_ended(
        self, service: AccessService, targets: dict[str, MemoryTarget], clock: ManualClock
    ) -> None:
        clock.set(CONTRACT_END - timedelta(minutes=20))
        req = service.request(VAL, "pharmacy-db", "read", timedelta(minutes=20), WHY)
        service.approve(req.id, BEN)
        clock.set(CONTRACT_END - timedelta(minutes=10))
        targets["pharmacy-db"].crash_after.add("grant")  # granted on the target, then died
        with pytest.raises(SimulatedCrash):
            service.approve(req.id, GITA)
        assert targets["pharmacy-db"].holds("val", "pharmacy_read")
        clock.set(CONTRACT_END + timedelta(minutes=1))  # the lease is long gone
        service.reconcile()
        view = service.get(req.id)
        assert view.state == S.CANCELLED and "contract ended" in (view.end_reason or "")
        assert not targets["pharmacy-db"].holds("val", "pharmacy_read")
        assert last_event(service, req.id, "request.cancelled")["cause"] == "recheck_at_grant"

    def test_an_approval_after_the_time_out_is_too_late_even_before_the_sweep(
        self, service: AccessService, targets: dict[str, MemoryTarget], clock: ManualClock
    ) -> None:
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), WHY)
        clock.advance(timedelta(minutes=31))  # the clinical path times out after 30 minutes
        view = service.approve(req.id, BEN)
        assert view.state == S.TIMED_OUT and view.decisions == ()
        assert targets["pharmacy-db"].calls == []

    def test_a_vendor_whose_sponsor_changed_needs_the_new_sponsor(
        self, db: Database, policy: Policy, targets: dict[str, MemoryTarget], clock: ManualClock
    ) -> None:
        req = AccessService(CoreDeps(db, policy, targets, clock)).request(
            VAL, "pharmacy-db", "read", timedelta(minutes=30), WHY
        )
        vendor = policy.vendors["medisoft"].model_copy(update={"sponsor": "chloe@ward.nhs.uk"})
        moved = AccessService(
            CoreDeps(
                db, policy.model_copy(update={"vendors": {"medisoft": vendor}}), targets, clock
            )
        )
        moved.approve(req.id, BEN)  # on call tonight; no longer the sponsor
        view = moved.approve(req.id, GITA)
        assert view.state == S.CANCELLED
        assert "sponsor is now chloe@ward.nhs.uk" in (view.end_reason or "")
        assert not targets["pharmacy-db"].holds("val", "pharmacy_read")


class TestEndsWhenTheRequesterGoes:
    def test_retiring_a_service_account_cancels_its_waiting_requests(
        self, service: AccessService, targets: dict[str, MemoryTarget]
    ) -> None:
        active = service.request(
            DEV, "pharmacy-db", "owner", timedelta(hours=1), WHY, "CHG0012345", identity="svc-lab"
        )
        service.approve(active.id, ERIN)
        service.approve(active.id, FARID)
        service.revoke(active.id, DEV, "done with it for now")
        waiting = service.request(
            DEV, "pharmacy-db", "owner", timedelta(hours=1), WHY, "CHG0012345", identity="svc-lab"
        )
        accounts = IdentityService(service)
        accounts.attestation_follow_ups()
        answer = accounts.attest("svc-lab", DEV, still_needed=False)
        assert answer.outcome == RETIRED
        assert answer.changed_requests == (waiting.id,)
        view = service.get(waiting.id)
        # Cancelled in the owner's name, saying why, for the requester and the audit trail.
        assert view.state == S.CANCELLED and view.ended_by == "dev@ward.nhs.uk"
        assert view.end_reason == "svc-lab was retired by its owner"
        assert last_event(service, waiting.id, "request.cancelled")["cause"] == "identity_retired"
        with pytest.raises(AlreadyDecided):
            service.approve(waiting.id, ERIN)
        assert not targets["pharmacy-db"].holds("svc_lab", "pharmacy_owner")

    def test_retiring_reports_the_elevations_it_ended_too(self, service: AccessService) -> None:
        req = service.request(
            DEV, "pharmacy-db", "owner", timedelta(hours=1), WHY, "CHG0012345", identity="svc-lab"
        )
        service.approve(req.id, ERIN)
        service.approve(req.id, FARID)
        accounts = IdentityService(service)
        accounts.attestation_follow_ups()
        answer = accounts.attest("svc-lab", DEV, still_needed=False)
        assert answer.changed_requests == (req.id,)
        assert service.get(req.id).state == S.ENDED

    def test_a_contract_ended_early_cancels_waiting_requests_and_ends_access(
        self, db: Database, policy: Policy, targets: dict[str, MemoryTarget], clock: ManualClock
    ) -> None:
        service = AccessService(CoreDeps(db, policy, targets, clock))
        active = service.request(VAL, "pharmacy-db", "read", timedelta(hours=2), WHY)
        service.approve(active.id, BEN)
        service.approve(active.id, GITA)
        waiting = service.request(
            VAL, "directory", "helpdesk", timedelta(hours=1), WHY, "INC0012345"
        )
        amiras = service.request(
            AMIRA, "directory", "helpdesk", timedelta(hours=1), WHY, "INC0012345"
        )
        assert service.end_lapsed_contracts() == []  # nothing lapsed yet
        # Medisoft's contract is terminated: the policy now says it ended yesterday.
        ended = AccessService(
            CoreDeps(
                db, with_contract_end(policy, CONTRACT_END - timedelta(days=2)), targets, clock
            )
        )
        assert sorted(ended.end_lapsed_contracts()) == sorted([active.id, waiting.id])
        assert ended.get(waiting.id).state == S.CANCELLED
        gone = ended.get(active.id)
        assert gone.state == S.ENDED and gone.ended_by == "wardkey"
        assert gone.end_reason is not None and "Medisoft Ltd contract ended" in gone.end_reason
        assert not targets["pharmacy-db"].holds("val", "pharmacy_read")
        assert ended.get(amiras.id).state == S.PENDING  # staff are untouched
        assert ended.end_lapsed_contracts() == []  # once only
        assert "revoke.started" in audit_actions(ended, active.id)
        started = last_event(ended, active.id, "revoke.started")
        assert started["cause"] == "contract_ended"


class TestNotesWithControlCharacters:
    """PostgreSQL cannot store NUL in text; SQLite can. Both refuse it the same way."""

    def test_a_nul_in_a_reason_is_refused_plainly(self, service: AccessService) -> None:
        with pytest.raises(InvalidRequest, match="Remove the control character from the reason"):
            service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), "fix\x00 the ward")
        with pytest.raises(InvalidRequest, match="Remove the control character from the reason"):
            service.break_glass(AMIRA, "pharmacy-db", "read", "pharmacy down\x00 in ED now")

    def test_a_nul_in_a_deny_reason_leaves_the_request_waiting(
        self, service: AccessService
    ) -> None:
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), WHY)
        with pytest.raises(InvalidRequest, match="Remove the control character from the reason"):
            service.deny(req.id, BEN, "not\x00 now")
        assert service.get(req.id).state == S.PENDING
        assert service.deny(req.id, BEN, "not now").state == S.DENIED

    def test_a_nul_in_a_review_or_revoke_note_or_a_ticket_is_refused(
        self, service: AccessService
    ) -> None:
        used = service.break_glass(CHLOE, "pharmacy-db", "read", "pharmacy system down in ED")
        with pytest.raises(InvalidRequest, match="Remove the control character from the note"):
            ReviewService(service).decide_review(
                used.id, HANA, justified=True, note="ED was down\x00 all night"
            )
        with pytest.raises(InvalidRequest, match="Remove the control character from the reason"):
            service.revoke(used.id, CHLOE, "done\x00")
        assert service.get(used.id).state == S.ACTIVE
        with pytest.raises(InvalidRequest, match="Remove the control character from the ticket"):
            service.request(AMIRA, "directory", "helpdesk", timedelta(hours=1), WHY, "INC\x00")

    def test_through_slack_a_nul_gets_a_plain_answer_never_a_server_error(
        self, service: AccessService
    ) -> None:
        """The issue's case end to end: a NUL typed into a command and into the deny dialog,
        through signed requests to the running app, on SQLite and PostgreSQL alike."""
        from app.requests.messages import DENY_ACTION, DENY_BLOCK, DENY_INPUT, DENY_VIEW
        from tests.slack_harness import ask, run_app

        for slack in run_app(service):
            asked = slack.command(
                "/jit", "request pharmacy-db:read 30m fix\x00 the ward", "U0AMIRA"
            )
            assert asked.status_code == 200
            assert "Remove the control character from the reason" in slack.replies(1)[-1]
            rid = ask(slack)
            slack.click(DENY_ACTION, str(rid), "U0BEN")
            meta = slack.fake.wait_for("views.open", 1)[0].args["view"]["private_metadata"]
            values = {DENY_BLOCK: {DENY_INPUT: {"value": "not\x00 now"}}}
            denied = slack.submit_view(DENY_VIEW, values, "U0BEN", meta)
            assert denied.status_code == 200
            answer = denied.json()
            assert answer["response_action"] == "errors"
            assert "Remove the control character" in json.dumps(answer["errors"])
            slack.settle()
            assert service.get(rid).state == S.PENDING
