"""Tables. Requests and reviews change only through `app.lifecycle.transitions`."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on the way in and out, on every backend (SQLite has no time zones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class RequestState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    GRANTING = "granting"
    ACTIVE = "active"
    REVOKING = "revoking"
    ENDED = "ended"
    DENIED = "denied"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    GRANT_FAILED = "grant_failed"
    REVOKE_FAILED = "revoke_failed"


# States in which the target may hold access that this request gave.
HOLDING_STATES = (
    RequestState.GRANTING,
    RequestState.ACTIVE,
    RequestState.REVOKING,
    RequestState.REVOKE_FAILED,
)
# States in which a request is still open: at most one per access (target, role, account).
OPEN_STATES = (RequestState.PENDING, RequestState.APPROVED, *HOLDING_STATES)
_OPEN_SQL = "state IN ({})".format(", ".join(f"'{s.value}'" for s in OPEN_STATES))
FINAL_STATES = (
    RequestState.ENDED,
    RequestState.DENIED,
    RequestState.CANCELLED,
    RequestState.TIMED_OUT,
    RequestState.GRANT_FAILED,
)


class ReviewState(StrEnum):
    OPEN = "open"
    JUSTIFIED = "justified"
    NOT_JUSTIFIED = "not_justified"


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_name)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class AccessRequest(Base):
    __tablename__ = "access_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(20))
    # Bumped by every transition; conditional updates match on it so none applies twice.
    version: Mapped[int] = mapped_column(Integer, default=1)

    requester: Mapped[str] = mapped_column(String(320), index=True)  # person key
    requester_slack_id: Mapped[str | None] = mapped_column(String(32))
    requester_email: Mapped[str | None] = mapped_column(String(320))
    identity: Mapped[str | None] = mapped_column(String(100))  # service account, if on behalf

    target: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(100))
    path: Mapped[str] = mapped_column(String(50))
    entitlement: Mapped[str] = mapped_column(String(500))
    account: Mapped[str] = mapped_column(String(320))
    reason: Mapped[str] = mapped_column(Text)
    ticket: Mapped[str | None] = mapped_column(String(100))
    # What the path's ticket system said about the ticket when it was last checked (app/tickets):
    # shown on the approver card; the sweep that ends access when it closes updates it.
    ticket_system: Mapped[str | None] = mapped_column(String(50))
    ticket_title: Mapped[str | None] = mapped_column(String(300))
    ticket_state: Mapped[str | None] = mapped_column(String(100))
    ticket_url: Mapped[str | None] = mapped_column(String(500))
    ticket_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    requested_seconds: Mapped[int] = mapped_column(Integer)
    approvals_needed: Mapped[int] = mapped_column(Integer)
    # 0 for the first approval; each extension that needs approval opens the next round.
    approval_round: Mapped[int] = mapped_column(Integer, default=0)
    extension_seconds: Mapped[int | None] = mapped_column(Integer)  # awaiting approval
    extension_requested_by: Mapped[str | None] = mapped_column(String(320))

    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    granted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The expiry the holder was last warned about; an extension makes a new warning due.
    expiry_warned_for: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    state_changed_at: Mapped[datetime] = mapped_column(UTCDateTime())

    # Access the target already had before this grant is recorded and never removed by us.
    preexisting: Mapped[bool | None] = mapped_column(Boolean)
    grant_detail: Mapped[str | None] = mapped_column(Text)
    revoke_detail: Mapped[str | None] = mapped_column(Text)
    revoke_attempts: Mapped[int] = mapped_column(Integer, default=0)
    # 0 waiting, 1 approvers reminded (half the SLA), 2 escalated (the SLA passed).
    escalation_level: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    ended_by: Mapped[str | None] = mapped_column(String(320))
    end_reason: Mapped[str | None] = mapped_column(Text)
    # Why it ended, as a word WardKey acts on ("withdrawn_by_requester", "replaced_by_break_glass",
    # "identity_retired"…); set by cancellations. The reason in words is `end_reason`.
    end_cause: Mapped[str | None] = mapped_column(String(40))
    # A vendor's request also needs their sponsor's approval (a member of staff).
    sponsor: Mapped[str | None] = mapped_column(String(320))
    # The worker doing a grant or revoke right now, and until when; past that, another takes over.
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The lockdown that ended this grant or cancelled this request (app/lockdown), if one did.
    lockdown_id: Mapped[int | None] = mapped_column(Integer, index=True)

    __table_args__ = (
        Index("ix_access_requests_state_expires_at", "state", "expires_at"),
        Index("ix_access_requests_state_created_at", "state", "created_at"),
        # Two open requests for the same access would let one expiry pull access the other
        # still covers; the database refuses the second even when two arrive at once.
        Index(
            "uq_access_requests_open_access",
            "target",
            "role",
            "account",
            unique=True,
            sqlite_where=text(_OPEN_SQL),
            postgresql_where=text(_OPEN_SQL),
        ),
    )


class Decision(Base):
    """One approver's approve or deny, per approval round."""

    __tablename__ = "decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("access_requests.id"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    approver: Mapped[str] = mapped_column(String(320))  # person key
    approver_slack_id: Mapped[str | None] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(10))  # "approve" | "deny"
    reason: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The vendor's sponsor deciding as sponsor (counted apart from the path's approvals).
    as_sponsor: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    __table_args__ = (UniqueConstraint("request_id", "round", "approver"),)


class Review(Base):
    """The after-the-fact review every break-glass use gets."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("access_requests.id"), unique=True)
    state: Mapped[str] = mapped_column(String(20), default=ReviewState.OPEN)
    version: Mapped[int] = mapped_column(Integer, default=1)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime())
    reviewer: Mapped[str | None] = mapped_column(String(320))
    note: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Set when the use has ended and its summary went to the reviewers.
    requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    reminders: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    reminded_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    escalated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Lockdown(Base):
    """A target locked down by a security admin during an incident: every grant on it revoked,
    and every request, extension and break-glass for it refused until it is lifted. At most one
    is in force (not lifted) per target, so a second lockdown of the same target is the first."""

    __tablename__ = "lockdowns"
    __table_args__ = (
        Index(
            "uq_lockdowns_in_force",
            "target",
            unique=True,
            sqlite_where=text("lifted_at IS NULL"),
            postgresql_where=text("lifted_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    target: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(Text)
    started_by: Mapped[str] = mapped_column(String(320))  # person key
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    grants: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # at the start
    lifted_by: Mapped[str | None] = mapped_column(String(320))
    lifted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lift_reason: Mapped[str | None] = mapped_column(Text)
    # The progress last reported to the security channel (app/lockdown: said again on change).
    reported: Mapped[str | None] = mapped_column(String(100))


class RequestMessage(Base):
    """Where a request's cards were posted in Slack, so every copy can be updated in place."""

    __tablename__ = "request_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("access_requests.id"), index=True)
    channel: Mapped[str] = mapped_column(String(32))
    ts: Mapped[str] = mapped_column(String(32))
    purpose: Mapped[str] = mapped_column(String(32))  # approver_card, requester_dm, review_card


class AuditEvent(Base):
    """Hash-chained, append-only. `body` is the canonical JSON; the other columns index it."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)  # /metrics counts by action
    request_id: Mapped[int | None] = mapped_column(Integer, index=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    body: Mapped[str] = mapped_column(Text)


class SweepRun(Base):
    """A once-per-period job (the daily digest) that one worker has done, so no other repeats it."""

    __tablename__ = "sweep_runs"

    job: Mapped[str] = mapped_column(String(50), primary_key=True)
    period: Mapped[str] = mapped_column(String(50), primary_key=True)
    done_at: Mapped[datetime] = mapped_column(UTCDateTime())
    done_by: Mapped[str] = mapped_column(String(100))


class StandingAccess(Base):
    """Access seen on a target that no grant covers: standing privilege, found by reconcile."""

    __tablename__ = "standing_access"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    target: Mapped[str] = mapped_column(String(100))
    entitlement: Mapped[str] = mapped_column(String(500))
    account: Mapped[str] = mapped_column(String(320))
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime())
    # Set when a later look no longer found it (taken away by hand, or by WardKey).
    cleared_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    removed_by_wardkey: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    __table_args__ = (UniqueConstraint("target", "entitlement", "account"),)


class Attestation(Base):
    """One round of an owner confirming a service account is still needed (or retiring it)."""

    __tablename__ = "attestations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    identity: Mapped[str] = mapped_column(String(100), index=True)
    owner: Mapped[str] = mapped_column(String(320))
    asked_at: Mapped[datetime] = mapped_column(UTCDateTime())
    due_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # still_needed | retired; null while open
    outcome: Mapped[str | None] = mapped_column(String(20))
    decided_by: Mapped[str | None] = mapped_column(String(320))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    overdue_reported_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    version: Mapped[int] = mapped_column(Integer, default=1)

    __table_args__ = (
        # One open round per identity, even when two workers ask at once.
        Index(
            "uq_attestations_open",
            "identity",
            unique=True,
            sqlite_where=text("outcome IS NULL"),
            postgresql_where=text("outcome IS NULL"),
        ),
    )


class OrphanFlag(Base):
    """A service account whose owner is gone (left, deleted in Slack): flagged once, until
    an owner is back."""

    __tablename__ = "orphan_flags"

    identity: Mapped[str] = mapped_column(String(100), primary_key=True)
    owner: Mapped[str] = mapped_column(String(320))
    reason: Mapped[str] = mapped_column(Text)
    flagged_at: Mapped[datetime] = mapped_column(UTCDateTime())


class InboxState(StrEnum):
    NEW = "new"  # recorded and acknowledged; its work not yet claimed
    WORKING = "working"  # claimed by a process until lease_until
    DONE = "done"  # its work is done; kept until seen_until to refuse replays


class KeptSlackProfile(Base):
    """Slack's last answer about a person who used WardKey (`users.info`, as JSON), kept so
    their clicks and commands are still done while Slack's Web API fails (app/directory.py)."""

    __tablename__ = "slack_profiles"

    user_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    profile: Mapped[str] = mapped_column(Text)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SeenRequest(Base):
    """The Slack inbox: every signed request, recorded before WardKey acknowledges it, in the
    same write that refuses a replay. The raw body and the headers needed to act on it again
    are kept until its work is done, so whichever process is alive can do that work if the one
    that acknowledged it dies. Kept for as long as its signature is valid."""

    __tablename__ = "seen_requests"
    __table_args__ = (Index("ix_seen_requests_state", "state", "received_at"),)

    signature: Mapped[str] = mapped_column(String(100), primary_key=True)
    seen_until: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    body: Mapped[str | None] = mapped_column(Text)
    headers: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), server_default=InboxState.DONE.value)
    received_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    outcome: Mapped[str | None] = mapped_column(String(200))


class HomeView(Base):
    """When someone last opened WardKey's App Home. Changes redraw the homes of people who
    looked recently; anyone else's is drawn fresh when they next open it."""

    __tablename__ = "home_views"

    slack_user_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime())


class OutboxState(StrEnum):
    NEW = "new"  # waiting to be sent (from due_at)
    WORKING = "working"  # claimed by a process until lease_until
    DONE = "done"  # sent (a notice: turned into its messages)
    FAILED = "failed"  # Slack refused it for good (an archived channel, a deleted user)


class OutboxItem(Base):
    """The Slack outbox. A notice (what happened to a request, at which version) is written in
    the transaction of the state change that causes it; the deliverer turns it into messages,
    each its own row with a key, and sends them. Rows of one lane (one request, one person's
    home, the security channel) go out in order: `COALESCE(parent, id)`, then `step`."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_state_due_at", "state", "due_at"),
        Index("ix_outbox_lane", "lane", "state"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    lane: Mapped[str] = mapped_column(String(100))
    parent: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    step: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    kind: Mapped[str] = mapped_column(String(16))  # notice | call
    key: Mapped[str | None] = mapped_column(String(100), unique=True)
    action: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[int | None] = mapped_column(Integer)
    version: Mapped[int | None] = mapped_column(Integer)
    body: Mapped[str] = mapped_column(Text)  # JSON: a notice's facts, a call's method and args
    state: Mapped[str] = mapped_column(String(16), default=OutboxState.NEW.value)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    due_at: Mapped[datetime] = mapped_column(UTCDateTime())
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # A try may have reached Slack (a 5xx, a lost answer, a crash): look before posting again.
    uncertain: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    last_error: Mapped[str | None] = mapped_column(String(200))
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    channel: Mapped[str | None] = mapped_column(String(32))
    ts: Mapped[str | None] = mapped_column(String(32))


class StepUpSignIn(Base):
    """One step-up sign-in for one approval (app/stepup): made when an approver clicks Approve
    on a path that needs step-up, bound to that approver and that request. The link is used
    once (`opened_at`), the identity provider's answer taken once (`finished_at`); only
    hashes of the link and state are kept, so a database read cannot replay them."""

    __tablename__ = "step_up_sign_ins"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    link_hash: Mapped[str] = mapped_column(String(64), unique=True)
    state_hash: Mapped[str] = mapped_column(String(64), unique=True)
    nonce: Mapped[str] = mapped_column(String(100))
    code_verifier: Mapped[str] = mapped_column(String(128))
    request_id: Mapped[int] = mapped_column(Integer, ForeignKey("access_requests.id"), index=True)
    approver: Mapped[str] = mapped_column(String(320))  # the person key
    approver_slack_id: Mapped[str | None] = mapped_column(String(32))
    approver_email: Mapped[str | None] = mapped_column(String(320))
    approver_team_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    outcome: Mapped[str | None] = mapped_column(String(200))


class TicketNote(Base):
    """A work note (ServiceNow) or comment (Jira) to write on a request's ticket when access is
    granted or ends, written with that state change and delivered by a sweep with retries until
    the ticket system takes it (app/tickets); never lost, and a grant never waits for it."""

    __tablename__ = "ticket_notes"
    __table_args__ = (
        UniqueConstraint("request_id", "event", name="uq_ticket_notes_request_event"),
        Index("ix_ticket_notes_due", "delivered_at", "due_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("access_requests.id"))
    event: Mapped[str] = mapped_column(String(20))  # granted | ended
    system: Mapped[str] = mapped_column(String(50))
    ticket: Mapped[str] = mapped_column(String(100))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    due_at: Mapped[datetime] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(String(300))
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
