"""The request lifecycle as stories of the ward, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app import audit
from app.access import AccessService
from app.clock import ManualClock
from app.lifecycle.errors import (
    AlreadyDecided,
    InvalidRequest,
    NotAllowed,
    NotEligible,
    NotFound,
    SelfApproval,
)
from app.reviews.service import ReviewService
from app.store import AuditEvent
from app.store.models import RequestState as S
from tests.conftest import (
    AMIRA,
    BEN,
    CHLOE,
    DEV,
    ERIN,
    FARID,
    GITA,
    GITA_2ND,
    HANA,
    VAL,
)
from tests.conftest import (
    audit_actions as actions,
)
from tests.fakes.memory_adapter import MemoryTarget

REASON = "fix stuck order set on ward 12"


class TestClinicalRequest:
    def test_on_call_lead_approves_a_clinical_request_at_3am(
        self, service: AccessService, targets: dict[str, MemoryTarget], clock: ManualClock
    ) -> None:
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)
        assert req.state == S.PENDING
        assert req.account == "amira"
        assert req.approvals_needed == 1

        done = service.approve(req.id, BEN)

        assert done.state == S.ACTIVE
        assert done.granted_at == clock.now()
        assert done.expires_at == clock.now() + timedelta(minutes=30)
        assert done.preexisting is False
        assert [d.approver for d in done.approvals] == ["ben@ward.nhs.uk"]
        assert targets["pharmacy-db"].holds("amira", "pharmacy_read")
        assert actions(service, req.id) == [
            "request.created",
            "request.approved",
            "grant.started",
            "grant.succeeded",
        ]

    def test_access_ends_at_expiry_and_is_read_back_from_the_target(
        self, service: AccessService, targets: dict[str, MemoryTarget], clock: ManualClock
    ) -> None:
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)
        service.approve(req.id, BEN)
        clock.advance(timedelta(minutes=29))
        assert service.expire_due() == []

        clock.advance(timedelta(minutes=1))
        assert service.expire_due() == [req.id]

        ended = service.get(req.id)
        assert ended.state == S.ENDED
        assert ended.end_reason == "expired"
        assert not targets["pharmacy-db"].holds("amira", "pharmacy_read")
        assert targets["pharmacy-db"].calls[-1] == ("check", "amira", "pharmacy_read")
        assert actions(service, req.id)[-2:] == ["revoke.started", "revoke.succeeded"]

    def test_the_off_duty_analyst_is_not_an_approver_tonight(self, service: AccessService) -> None:
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)
        with pytest.raises(NotAllowed):
            service.approve(req.id, CHLOE)
        assert service.get(req.id).state == S.PENDING

    def test_after_handoff_the_next_on_call_can_approve(
        self, service: AccessService, clock: ManualClock
    ) -> None:
        clock.advance(timedelta(hours=4, minutes=50))  # 07:50, Ben's last minutes on call
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)
        clock.advance(timedelta(minutes=10))  # 08:00, hand-off to Chloe
        with pytest.raises(NotAllowed):
            service.approve(req.id, BEN)
        assert service.approve(req.id, CHLOE).state == S.ACTIVE

    def test_a_denied_request_never_touches_the_target(
        self, service: AccessService, targets: dict[str, MemoryTarget]
    ) -> None:
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)
        denied = service.deny(req.id, BEN, "use the ward 12 order set tool instead")
        assert denied.state == S.DENIED
        assert denied.end_reason == "use the ward 12 order set tool instead"
        assert targets["pharmacy-db"].calls == []
        with pytest.raises(AlreadyDecided):
            service.approve(req.id, BEN)

    def test_a_deny_needs_a_reason(self, service: AccessService) -> None:
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)
        with pytest.raises(InvalidRequest):
            service.deny(req.id, BEN, "   ")

    def test_requester_cancels_before_anyone_decides(self, service: AccessService) -> None:
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)
        with pytest.raises(NotAllowed):
            service.cancel(req.id, BEN)
        assert service.cancel(req.id, AMIRA).state == S.CANCELLED
        with pytest.raises(AlreadyDecided):
            service.cancel(req.id, AMIRA)

    def test_nobody_decides_within_the_time_out(
        self, service: AccessService, clock: ManualClock
    ) -> None:
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)
        clock.advance(timedelta(minutes=29))
        assert service.time_out_overdue() == []
        clock.advance(timedelta(minutes=1))
        assert service.time_out_overdue() == [req.id]
        assert service.get(req.id).state == S.TIMED_OUT
        with pytest.raises(AlreadyDecided, match="timed out"):
            service.approve(req.id, BEN)


class TestRefusals:
    def test_reason_of_one_word_is_refused(self, service: AccessService) -> None:
        with pytest.raises(InvalidRequest, match="at least 3 words"):
            service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), "urgent")

    def test_duration_above_the_cap_is_refused_with_the_cap(self, service: AccessService) -> None:
        with pytest.raises(InvalidRequest, match="2h allowed"):
            service.request(AMIRA, "pharmacy-db", "read", timedelta(hours=3), REASON)

    def test_not_eligible_for_the_role(self, service: AccessService) -> None:
        with pytest.raises(NotEligible, match="infrastructure"):
            service.request(AMIRA, "pharmacy-db", "owner", timedelta(hours=1), REASON, "CHG0000001")

    def test_unknown_target_and_role(self, service: AccessService) -> None:
        with pytest.raises(NotEligible, match="no target"):
            service.request(AMIRA, "nope", "read", timedelta(minutes=5), REASON)
        with pytest.raises(NotEligible, match="Its roles are: owner, read"):
            service.request(AMIRA, "pharmacy-db", "write", timedelta(minutes=5), REASON)

    def test_ticket_required_and_checked_on_the_admin_path(self, service: AccessService) -> None:
        with pytest.raises(InvalidRequest, match="needs a ticket"):
            service.request(AMIRA, "directory", "helpdesk", timedelta(hours=1), REASON)
        with pytest.raises(InvalidRequest, match="does not look like a ticket"):
            service.request(AMIRA, "directory", "helpdesk", timedelta(hours=1), REASON, "12345")
        ok = service.request(
            AMIRA, "directory", "helpdesk", timedelta(hours=1), REASON, "INC0012345"
        )
        assert ok.ticket == "INC0012345"

    def test_a_second_request_for_the_same_access_is_refused(self, service: AccessService) -> None:
        first = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)
        with pytest.raises(InvalidRequest, match=f"#{first.id}"):
            service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)

    def test_unknown_request(self, service: AccessService) -> None:
        with pytest.raises(NotFound):
            service.approve(999, BEN)


class TestNoSelfApproval:
    def test_an_approver_cannot_approve_their_own_request(self, service: AccessService) -> None:
        req = service.request(
            ERIN, "pharmacy-db", "owner", timedelta(hours=1), REASON, "CHG0000001"
        )
        with pytest.raises(SelfApproval):
            service.approve(req.id, ERIN)
        assert service.get(req.id).approvals == ()

    def test_nor_with_a_second_slack_account_of_the_same_person(
        self, service: AccessService
    ) -> None:
        # Gita is an infra lead; her second Slack account is listed as hers in the policy.
        req = service.request(DEV, "pharmacy-db", "owner", timedelta(hours=1), REASON, "CHG0000001")
        service.approve(req.id, GITA)
        with pytest.raises(AlreadyDecided):
            service.approve(req.id, GITA_2ND)
        assert len(service.get(req.id).approvals) == 1

    def test_nor_with_an_account_that_shares_the_e_mail(self, service: AccessService) -> None:
        req = service.request(
            ERIN, "pharmacy-db", "owner", timedelta(hours=1), REASON, "CHG0000001"
        )
        other_workspace = type(ERIN)(slack_user_id="W0ERINGRID", email="ERIN@ward.nhs.uk")
        with pytest.raises(SelfApproval):
            service.approve(req.id, other_workspace)


class TestEngineeringTwoApprovals:
    def test_two_distinct_approvals_are_needed(
        self, service: AccessService, targets: dict[str, MemoryTarget]
    ) -> None:
        req = service.request(DEV, "pharmacy-db", "owner", timedelta(hours=1), REASON, "CHG0000001")
        assert req.approvals_needed == 2

        one = service.approve(req.id, ERIN)
        assert one.state == S.PENDING
        assert len(one.approvals) == 1
        with pytest.raises(AlreadyDecided):
            service.approve(req.id, ERIN)
        assert not targets["pharmacy-db"].holds("dev", "pharmacy_owner")

        two = service.approve(req.id, FARID)
        assert two.state == S.ACTIVE
        assert {d.approver for d in two.approvals} == {"erin@ward.nhs.uk", "farid@ward.nhs.uk"}
        assert targets["pharmacy-db"].holds("dev", "pharmacy_owner")

    def test_one_deny_ends_it(self, service: AccessService) -> None:
        req = service.request(DEV, "pharmacy-db", "owner", timedelta(hours=1), REASON, "CHG0000001")
        service.approve(req.id, ERIN)
        assert service.deny(req.id, FARID, "change freeze this week").state == S.DENIED


class TestExtend:
    def test_clinical_extension_is_continuous_and_capped(
        self, service: AccessService, targets: dict[str, MemoryTarget], clock: ManualClock
    ) -> None:
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(hours=2), REASON)
        service.approve(req.id, BEN)
        clock.advance(timedelta(hours=1, minutes=50))
        grants_before = sum(1 for c in targets["pharmacy-db"].calls if c[0] == "grant")

        extended = service.extend(req.id, AMIRA, timedelta(hours=1))

        assert extended.state == S.ACTIVE
        assert extended.expires_at == extended.granted_at + timedelta(hours=3)  # type: ignore[operator]
        calls = targets["pharmacy-db"].calls
        assert not any(c[0] == "revoke" for c in calls), "extension must never revoke"
        assert sum(1 for c in calls if c[0] == "grant") == grants_before + 1
        with pytest.raises(InvalidRequest, match="at most 1h"):
            service.extend(req.id, AMIRA, timedelta(hours=2))  # 5h > 4h total cap

    def test_an_absurd_extension_is_refused_plainly(self, service: AccessService) -> None:
        """Not an overflow deep in date arithmetic ("unexpected error"), a plain no."""
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(hours=1), REASON)
        service.approve(req.id, BEN)
        with pytest.raises(InvalidRequest, match="more than a year"):
            service.extend(req.id, AMIRA, timedelta(days=999_999_999))
        assert service.get(req.id).state == S.ACTIVE

    def test_only_the_holder_extends(self, service: AccessService) -> None:
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(hours=1), REASON)
        service.approve(req.id, BEN)
        with pytest.raises(NotAllowed):
            service.extend(req.id, BEN, timedelta(minutes=30))

    def test_engineering_extension_needs_two_approvals_again(
        self, service: AccessService, clock: ManualClock
    ) -> None:
        req = service.request(DEV, "pharmacy-db", "owner", timedelta(hours=1), REASON, "CHG0000001")
        service.approve(req.id, ERIN)
        service.approve(req.id, FARID)
        expiry = service.get(req.id).expires_at

        asked = service.extend(req.id, DEV, timedelta(minutes=30))
        assert asked.extension == timedelta(minutes=30)
        assert asked.expires_at == expiry
        assert service.approve(req.id, ERIN).expires_at == expiry
        done = service.approve(req.id, GITA)
        assert done.extension is None
        assert done.expires_at == expiry + timedelta(minutes=30)  # type: ignore[operator]

    def test_a_denied_extension_leaves_the_grant_as_it_was(self, service: AccessService) -> None:
        req = service.request(DEV, "pharmacy-db", "owner", timedelta(hours=1), REASON, "CHG0000001")
        service.approve(req.id, ERIN)
        granted = service.approve(req.id, FARID)
        service.extend(req.id, DEV, timedelta(minutes=30))
        after = service.deny(req.id, FARID, "finish tomorrow in hours")
        assert after.state == S.ACTIVE
        assert after.expires_at == granted.expires_at
        assert after.extension is None


class TestRevoke:
    def test_holder_revokes_early(
        self, service: AccessService, targets: dict[str, MemoryTarget]
    ) -> None:
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(hours=1), REASON)
        service.approve(req.id, BEN)
        targets["pharmacy-db"].sessions["amira"] = 2
        done = service.revoke(req.id, AMIRA, "finished early")
        assert done.state == S.ENDED
        assert done.ended_by == "amira@ward.nhs.uk"
        assert targets["pharmacy-db"].sessions["amira"] == 0
        assert not targets["pharmacy-db"].holds("amira", "pharmacy_read")

    def test_an_admin_revokes_but_a_bystander_cannot(self, service: AccessService) -> None:
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(hours=1), REASON)
        service.approve(req.id, BEN)
        with pytest.raises(NotAllowed):
            service.revoke(req.id, DEV)
        assert service.revoke(req.id, GITA, "leaver").state == S.ENDED

    def test_access_that_existed_before_the_grant_survives_expiry(
        self, service: AccessService, targets: dict[str, MemoryTarget], clock: ManualClock
    ) -> None:
        targets["pharmacy-db"].members["pharmacy_read"].add("amira")
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)
        assert service.approve(req.id, BEN).preexisting is True
        clock.advance(timedelta(minutes=30))
        service.expire_due()
        ended = service.get(req.id)
        assert ended.state == S.ENDED
        assert "left in place" in (ended.revoke_detail or "")
        assert targets["pharmacy-db"].holds("amira", "pharmacy_read")
        assert not any(c[0] == "revoke" for c in targets["pharmacy-db"].calls)

    def test_target_down_at_expiry_is_a_failed_revoke_never_ended(
        self, service: AccessService, targets: dict[str, MemoryTarget], clock: ManualClock
    ) -> None:
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)
        service.approve(req.id, BEN)
        targets["pharmacy-db"].down = True
        clock.advance(timedelta(minutes=30))
        service.expire_due()
        failed = service.get(req.id)
        assert failed.state == S.REVOKE_FAILED
        assert failed.revoke_attempts == 1
        assert service.grants.retry_revoke(req.id).state == S.REVOKE_FAILED
        assert service.get(req.id).revoke_attempts == 2

        targets["pharmacy-db"].down = False
        assert service.grants.retry_revoke(req.id).state == S.ENDED
        assert not targets["pharmacy-db"].holds("amira", "pharmacy_read")

    def test_a_target_that_keeps_the_access_after_revoke_is_a_failure(
        self, service: AccessService, targets: dict[str, MemoryTarget], clock: ManualClock
    ) -> None:
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)
        service.approve(req.id, BEN)
        targets["pharmacy-db"].sticky = True
        clock.advance(timedelta(minutes=30))
        service.expire_due()
        failed = service.get(req.id)
        assert failed.state == S.REVOKE_FAILED
        assert "still shows the access" in (failed.revoke_detail or "")

    def test_an_admin_resolves_a_failed_revoke_by_hand(
        self, service: AccessService, targets: dict[str, MemoryTarget], clock: ManualClock
    ) -> None:
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)
        service.approve(req.id, BEN)
        targets["pharmacy-db"].down = True
        clock.advance(timedelta(minutes=30))
        service.expire_due()
        with pytest.raises(NotAllowed):
            service.resolve_revoke_failure(req.id, BEN, "removed it in pgadmin by hand")
        done = service.resolve_revoke_failure(req.id, GITA, "removed it in pgadmin by hand")
        assert done.state == S.ENDED
        assert actions(service, req.id)[-1] == "revoke.resolved_by_person"

    def test_target_down_during_grant_is_never_shown_active(
        self, service: AccessService, targets: dict[str, MemoryTarget]
    ) -> None:
        targets["pharmacy-db"].down = True
        req = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)
        failed = service.approve(req.id, BEN)
        assert failed.state == S.GRANT_FAILED
        assert "unreachable" in (failed.grant_detail or "")


class TestBreakGlass:
    def test_break_glass_grants_at_once_and_opens_a_review(
        self, service: AccessService, targets: dict[str, MemoryTarget], clock: ManualClock
    ) -> None:
        used = service.break_glass(AMIRA, "pharmacy-db", "read", "pharmacy system down in ED now")
        assert used.state == S.ACTIVE
        assert used.path == "breakglass"
        assert used.expires_at == clock.now() + timedelta(hours=1)
        assert used.review is not None and used.review.state == "open"
        assert used.review.due_at == clock.now() + timedelta(hours=24)
        assert targets["pharmacy-db"].holds("amira", "pharmacy_read")
        assert actions(service, used.id) == ["breakglass.started", "grant.succeeded"]

    def test_only_roles_that_allow_it(self, service: AccessService) -> None:
        with pytest.raises(NotEligible, match="Break-glass is not allowed"):
            service.break_glass(DEV, "pharmacy-db", "owner", "database is on fire now")

    def test_reviewed_by_a_manager_never_by_the_user(self, service: AccessService) -> None:
        used = service.break_glass(AMIRA, "pharmacy-db", "read", "pharmacy system down in ED now")
        reviews = ReviewService(service)
        with pytest.raises(SelfApproval):
            reviews.decide_review(used.id, AMIRA, justified=True, note="it was really needed")
        with pytest.raises(NotAllowed):
            reviews.decide_review(used.id, BEN, justified=True, note="it was really needed")
        with pytest.raises(InvalidRequest):
            reviews.decide_review(used.id, HANA, justified=True, note="ok")
        done = reviews.decide_review(
            used.id, HANA, justified=True, note="ED outage confirmed by CAD"
        )
        assert done.review is not None and done.review.state == "justified"
        assert done.review.reviewer == "hana@ward.nhs.uk"
        with pytest.raises(AlreadyDecided):
            reviews.decide_review(
                used.id, GITA, justified=False, note="second opinion differs here"
            )

    def test_break_glass_cannot_be_extended(self, service: AccessService) -> None:
        used = service.break_glass(AMIRA, "pharmacy-db", "read", "pharmacy system down in ED now")
        with pytest.raises(NotAllowed):
            service.extend(used.id, AMIRA, timedelta(minutes=10))


class TestVendorsAndIdentities:
    def test_vendor_grant_is_capped_at_contract_end(
        self, service: AccessService, clock: ManualClock
    ) -> None:
        # Medisoft's contract ends at midnight at the end of 30 Nov (London); it is 23:15.
        clock.advance(timedelta(hours=20, minutes=15))
        with pytest.raises(InvalidRequest, match="the 45m allowed"):
            service.request(VAL, "pharmacy-db", "read", timedelta(hours=2), REASON)
        assert service.request(VAL, "pharmacy-db", "read", timedelta(minutes=45), REASON)

    def test_expired_contract_cannot_request(
        self, service: AccessService, clock: ManualClock
    ) -> None:
        clock.advance(timedelta(days=1))
        with pytest.raises(NotEligible, match="contract ended"):
            service.request(VAL, "pharmacy-db", "read", timedelta(minutes=30), REASON)

    def test_owner_elevates_their_service_account(
        self, service: AccessService, targets: dict[str, MemoryTarget]
    ) -> None:
        req = service.request(
            DEV,
            "pharmacy-db",
            "owner",
            timedelta(hours=1),
            REASON,
            "CHG0000002",
            identity="svc-lab",
        )
        assert req.account == "svc_lab"
        with pytest.raises(InvalidRequest, match="1h allowed"):
            service.request(
                DEV,
                "pharmacy-db",
                "owner",
                timedelta(hours=2),
                REASON,
                "CHG0000002",
                identity="svc-lab",
            )
        service.approve(req.id, ERIN)
        service.approve(req.id, FARID)
        assert targets["pharmacy-db"].holds("svc_lab", "pharmacy_owner")

    def test_only_the_owner(self, service: AccessService) -> None:
        with pytest.raises(NotEligible, match="owner"):
            service.request(
                ERIN,
                "pharmacy-db",
                "owner",
                timedelta(hours=1),
                REASON,
                "CHG0000002",
                identity="svc-lab",
            )


class TestAuditOfTheLifecycle:
    def test_every_transition_has_exactly_one_event_and_the_chain_verifies(
        self, service: AccessService, clock: ManualClock
    ) -> None:
        a = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)
        service.approve(a.id, BEN)
        b = service.request(DEV, "pharmacy-db", "owner", timedelta(hours=1), REASON, "CHG0000001")
        service.approve(b.id, ERIN)
        service.deny(b.id, FARID, "not during the pharmacy stock take")
        clock.advance(timedelta(hours=1))
        service.expire_due()
        with service.db.read() as session:
            for view in (service.get(a.id), service.get(b.id)):
                count = session.scalar(select(func.count()).where(AuditEvent.request_id == view.id))
                from app.store import AccessRequest

                version = session.get(AccessRequest, view.id).version  # type: ignore[union-attr]
                assert count == version
        result = audit.verify(service.db)
        assert result.ok, result.summary()
        assert result.checked == len(actions(service, a.id)) + len(actions(service, b.id))

    def test_events_say_who_what_why_and_who_approved(self, service: AccessService) -> None:
        import json

        a = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REASON)
        service.approve(a.id, BEN)
        with service.db.read() as session:
            body = session.scalar(
                select(AuditEvent.body).where(AuditEvent.action == "request.approved")
            )
        event = json.loads(body or "{}")
        assert event["actor"] == "ben@ward.nhs.uk"
        assert event["data"]["requester"] == "amira@ward.nhs.uk"
        assert event["data"]["target"] == "pharmacy-db"
        assert event["data"]["reason"] == REASON
        assert event["data"]["approvals"] == ["ben@ward.nhs.uk"]
        assert event["at"].endswith("Z")
