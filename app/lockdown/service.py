"""Lockdown use cases. A lockdown is a durable row (`lockdowns`, at most one in force per
target): every instance reads it before letting anyone ask for, extend, approve, grant or
break glass on the target (`app.lifecycle.eligibility.lockdown_refusal`), so it holds wherever
a request lands. Its grants are revoked through the normal lifecycle (leased in one statement,
revoked in the target's lane, batched where the target can, each outcome recorded by the one
transition function with its audit event and requester notice); a failed revoke stays
`revoke_failed` and is retried by the retry sweep like any other."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import audit
from app.access import AccessService
from app.lifecycle import transitions
from app.lifecycle.errors import InvalidRequest, NotAllowed, NotFound
from app.lifecycle.leases import skip_locked
from app.lifecycle.validation import MAX_NOTE_CHARS, clean_text
from app.policy import rules
from app.policy.people import Person, person_key
from app.store.models import AccessRequest, Lockdown, OutboxItem, RequestState

LOCKDOWN_CAUSE = "lockdown"
# Active grants leased per round of a lockdown (more are found by the next round).
ROUND = 1000
MIN_REASON_WORDS = 2
SHOWN_FAILURES = 10


def lane(lockdown_id: int) -> str:
    """The outbox lane of a lockdown's messages to the security channel."""
    return f"lockdown:{lockdown_id}"


@dataclass(frozen=True)
class LockdownSnapshot:
    id: int
    target: str
    reason: str
    started_by: str
    started_at: datetime
    grants: int
    lifted_by: str | None
    lifted_at: datetime | None
    lift_reason: str | None

    @classmethod
    def of(cls, row: Lockdown) -> LockdownSnapshot:
        return cls(
            row.id,
            row.target,
            row.reason,
            row.started_by,
            row.started_at,
            row.grants,
            row.lifted_by,
            row.lifted_at,
            row.lift_reason,
        )

    @property
    def in_force(self) -> bool:
        return self.lifted_at is None


@dataclass(frozen=True)
class FailedRevoke:
    request_id: int
    account: str
    detail: str
    attempts: int


@dataclass(frozen=True)
class Preview:
    """What a lockdown of the target would do now."""

    target: str
    grants: int  # active grants it would revoke
    waiting: int  # requests waiting for approval or a grant it would cancel
    in_force: LockdownSnapshot | None


@dataclass(frozen=True)
class Progress:
    lockdown: LockdownSnapshot
    total: int  # grants this lockdown is taking away
    removed: int  # ended, with the target read back
    working: int  # being revoked now, or still to be taken
    failed: list[FailedRevoke] = field(default_factory=list)
    cancelled: int = 0  # waiting requests cancelled

    @property
    def done(self) -> bool:
        return self.working == 0 and not self.failed

    def key(self) -> str:
        """What the last message said, to say it again only when it changed."""
        lifted = "lifted" if self.lockdown.lifted_at else "in_force"
        return f"{self.total}/{self.removed}/{self.working}/{len(self.failed)}/{lifted}"


class Lockdowns:
    """Lockdown use cases on the service's database, policy, clock and targets."""

    def __init__(self, service: AccessService) -> None:
        self.service = service

    # -------------------------------------------------------------------------- reads

    def in_force(self, target: str | None = None) -> list[LockdownSnapshot]:
        with self.service.db.read() as session:
            query = select(Lockdown).where(Lockdown.lifted_at.is_(None))
            if target is not None:
                query = query.where(Lockdown.target == target)
            return [LockdownSnapshot.of(r) for r in session.scalars(query.order_by(Lockdown.id))]

    def get(self, lockdown_id: int) -> LockdownSnapshot:
        with self.service.db.read() as session:
            row = session.get(Lockdown, lockdown_id)
            if row is None:
                raise NotFound(f"There is no lockdown #{lockdown_id}.")
            return LockdownSnapshot.of(row)

    def preview(self, person: Person, target: str) -> Preview:
        """How many grants a lockdown of `target` would remove now (for the confirmation)."""
        self._refuse_unless_security_admin(person)
        self._known_target(target)
        with self.service.db.read() as session:
            counts: dict[str, int] = {
                state: n
                for state, n in session.execute(
                    select(AccessRequest.state, func.count())
                    .where(
                        AccessRequest.target == target,
                        AccessRequest.state.in_(
                            [
                                RequestState.ACTIVE.value,
                                RequestState.PENDING.value,
                                RequestState.APPROVED.value,
                                RequestState.GRANTING.value,
                            ]
                        ),
                    )
                    .group_by(AccessRequest.state)
                ).tuples()
            }
        found = self.in_force(target)
        return Preview(
            target,
            grants=counts.get(RequestState.ACTIVE.value, 0)
            + counts.get(RequestState.GRANTING.value, 0),
            waiting=counts.get(RequestState.PENDING.value, 0)
            + counts.get(RequestState.APPROVED.value, 0),
            in_force=found[0] if found else None,
        )

    def progress(self, lockdown_id: int) -> Progress:
        with self.service.db.read() as session:
            row = session.get(Lockdown, lockdown_id)
            if row is None:
                raise NotFound(f"There is no lockdown #{lockdown_id}.")
            counts: dict[str, int] = {
                state: n
                for state, n in session.execute(
                    select(AccessRequest.state, func.count())
                    .where(AccessRequest.lockdown_id == lockdown_id)
                    .group_by(AccessRequest.state)
                ).tuples()
            }
            failed = [
                FailedRevoke(rid, account, detail or "no detail", attempts)
                for rid, account, detail, attempts in session.execute(
                    select(
                        AccessRequest.id,
                        AccessRequest.account,
                        AccessRequest.revoke_detail,
                        AccessRequest.revoke_attempts,
                    )
                    .where(
                        AccessRequest.lockdown_id == lockdown_id,
                        AccessRequest.state == RequestState.REVOKE_FAILED.value,
                    )
                    .order_by(AccessRequest.id)
                )
            ]
            view = LockdownSnapshot.of(row)
            # Grants on the target not taken yet (the round is about to lease them, or a grant
            # under way when the lockdown came has just finished): still to remove.
            left = 0
            if view.in_force:
                left = int(
                    session.scalar(
                        select(func.count()).where(
                            AccessRequest.target == view.target,
                            AccessRequest.state.in_(
                                [RequestState.ACTIVE.value, RequestState.GRANTING.value]
                            ),
                        )
                    )
                    or 0
                )
        removed = counts.get(RequestState.ENDED.value, 0)
        working = counts.get(RequestState.REVOKING.value, 0) + left
        total = removed + working + len(failed)
        return Progress(
            view, total, removed, working, failed, counts.get(RequestState.CANCELLED.value, 0)
        )

    def progress_message(self, lockdown_id: int) -> tuple[str, str] | None:
        """Where the lockdown's progress message was posted (channel, ts), once it was."""
        with self.service.db.read() as session:
            found = session.execute(
                select(OutboxItem.channel, OutboxItem.ts)
                .where(
                    OutboxItem.lane == lane(lockdown_id),
                    OutboxItem.kind == "call",
                    OutboxItem.ts.is_not(None),
                )
                .order_by(OutboxItem.id)
                .limit(1)
            ).first()
        return (str(found[0]), str(found[1])) if found else None

    # ------------------------------------------------------------------------ changes

    def start(self, person: Person, target: str, reason: str) -> tuple[LockdownSnapshot, bool]:
        """Lock the target down, durably, with its audit event and the security channel's
        progress message in the same transaction; True if this started it, False if it was
        already in force (a second lockdown of the same target is the first one)."""
        self._refuse_unless_security_admin(person)
        self._known_target(target)
        why = clean_text(
            reason,
            what="reason",
            min_words=MIN_REASON_WORDS,
            max_chars=MAX_NOTE_CHARS,
            too_short='Say why, e.g. "suspected compromise of the pharmacy admin account".',
            field="reason",
        )
        key = person_key(self.service.policy, person)
        now = self.service.clock.now()
        try:
            with self.service.db.transaction() as session:
                existing = self._in_force(session, target)
                if existing is not None:
                    return LockdownSnapshot.of(existing), False
                grants = session.scalar(
                    select(func.count()).where(
                        AccessRequest.target == target,
                        AccessRequest.state.in_(
                            [RequestState.ACTIVE.value, RequestState.GRANTING.value]
                        ),
                    )
                )
                row = Lockdown(
                    target=target, reason=why, started_by=key, started_at=now, grants=grants or 0
                )
                session.add(row)
                session.flush()
                audit.append(
                    session,
                    at=now,
                    action="lockdown.started",
                    actor=key,
                    data={
                        "lockdown": row.id,
                        "target": target,
                        "reason": why,
                        "by": key,
                        "by_slack_id": person.slack_user_id,
                        "active_grants": row.grants,
                    },
                )
                transitions.announce(
                    session,
                    lane(row.id),
                    "lockdown.started",
                    {"lockdown": row.id, "target": target},
                    at=now,
                )
                return LockdownSnapshot.of(row), True
        except IntegrityError:  # started at the same moment by someone else: that one holds
            found = self.in_force(target)
            if not found:
                raise
            return found[0], False

    def run(self, lockdown_id: int, on_progress: Callable[[], None] | None = None) -> Progress:
        """Take away every grant on the locked-down target and cancel every request waiting
        for it, round after round until none is left (a grant finishing meanwhile is caught
        by the next round, or by the sweep). Each recorded batch of outcomes reports progress
        to the security channel (`report`), then `on_progress` (ask for delivery)."""
        view = self.get(lockdown_id)
        service = self.service

        def recorded(_ids: list[int]) -> None:
            if self.report(lockdown_id) and on_progress is not None:
                on_progress()

        while view.in_force:
            leased, others = self._lease_round(view)
            if not leased:
                break
            for future in service.grants.revoke_leased(leased, others, on_recorded=recorded):
                future.result()
            view = self.get(lockdown_id)
        if self.report(lockdown_id) and on_progress is not None:
            on_progress()
        return self.progress(lockdown_id)

    def _lease_round(
        self, view: LockdownSnapshot
    ) -> tuple[list[AccessRequest], dict[int, int | None]]:
        """In one transaction: cancel the requests waiting for the target and mark up to
        ROUND of its active grants revoking (one statement each), unless it was lifted."""
        service = self.service
        now = service.clock.now()
        why = f"lockdown of {view.target}: {view.reason}"
        with service.db.transaction() as session:
            row = session.get(Lockdown, view.id)
            if row is None or row.lifted_at is not None:
                return [], {}
            for state in (RequestState.PENDING, RequestState.APPROVED):
                waiting = list(
                    session.scalars(
                        skip_locked(
                            select(AccessRequest)
                            .where(
                                AccessRequest.target == view.target,
                                AccessRequest.state == state.value,
                            )
                            .order_by(AccessRequest.id)
                        )
                    )
                )
                transitions.transition_many(
                    session,
                    waiting,
                    RequestState.CANCELLED,
                    at=now,
                    actor=view.started_by,
                    action="request.cancelled",
                    changes={
                        "ended_at": now,
                        "ended_by": view.started_by,
                        "end_reason": why,
                        "end_cause": LOCKDOWN_CAUSE,
                        "lockdown_id": view.id,
                    },
                    data=lambda _r: {
                        "by": view.started_by,
                        "cause": LOCKDOWN_CAUSE,
                        "why": why,
                        "lockdown": view.id,
                    },
                )
            active = list(
                session.scalars(
                    skip_locked(
                        select(AccessRequest)
                        .where(
                            AccessRequest.target == view.target,
                            AccessRequest.state == RequestState.ACTIVE.value,
                        )
                        .order_by(AccessRequest.id)
                        .limit(ROUND)
                    )
                )
            )
            service.grants.start_revokes(
                session,
                active,
                now,
                actor=view.started_by,
                why=why,
                data={
                    "cause": LOCKDOWN_CAUSE,
                    "note": why,
                    "lockdown": view.id,
                    "worker": service.worker,
                },
                more={"lockdown_id": view.id},
            )
            others = service.grants.other_holders(session, active)
        return active, others

    def report(self, lockdown_id: int) -> bool:
        """Tell the security channel how the lockdown stands, if that changed since it was
        last told: a progress notice in the lockdown's lane (the message is updated in place).
        A conditional update, so two processes never report the same change twice."""
        progress = self.progress(lockdown_id)
        key = progress.key()
        now = self.service.clock.now()
        with self.service.db.transaction() as session:
            row = session.get(Lockdown, lockdown_id)
            if row is None or row.reported == key:
                return False
            changed = session.execute(
                update(Lockdown)
                .where(
                    Lockdown.id == lockdown_id,
                    Lockdown.reported.is_(None)
                    if row.reported is None
                    else Lockdown.reported == row.reported,
                )
                .values(reported=key)
                .execution_options(synchronize_session=False)
            )
            if changed.rowcount != 1:  # type: ignore[attr-defined]
                return False
            transitions.announce(
                session,
                lane(lockdown_id),
                "lockdown.progress",
                {"lockdown": lockdown_id, "target": progress.lockdown.target, "said": key},
                at=now,
            )
        return True

    def lift(self, person: Person, target: str, note: str = "") -> LockdownSnapshot:
        """End the lockdown of `target`: people may ask for it again. Grants it removed stay
        removed (they ask again); failed revokes go on being retried."""
        self._refuse_unless_security_admin(person)
        self._known_target(target)
        cleaned = ""
        if note.strip():
            cleaned = clean_text(
                note,
                what="note",
                min_words=0,
                max_chars=MAX_NOTE_CHARS,
                too_short="Say why it is safe again.",
                field="note",
            )
        key = person_key(self.service.policy, person)
        now = self.service.clock.now()
        with self.service.db.transaction() as session:
            row = self._in_force(session, target)
            if row is None:
                raise InvalidRequest(f"{target} is not locked down.", field="target")
            lifted = session.execute(
                update(Lockdown)
                .where(Lockdown.id == row.id, Lockdown.lifted_at.is_(None))
                .values(lifted_by=key, lifted_at=now, lift_reason=cleaned or None)
                .execution_options(synchronize_session=False)
            )
            if lifted.rowcount != 1:  # type: ignore[attr-defined]
                raise InvalidRequest(f"{target} is not locked down.", field="target")
            audit.append(
                session,
                at=now,
                action="lockdown.lifted",
                actor=key,
                data={
                    "lockdown": row.id,
                    "target": target,
                    "by": key,
                    "by_slack_id": person.slack_user_id,
                    "note": cleaned,
                    "started_by": row.started_by,
                    "started_at": row.started_at,
                    "reason": row.reason,
                },
            )
            transitions.announce(
                session,
                lane(row.id),
                "lockdown.lifted",
                {"lockdown": row.id, "target": target},
                at=now,
            )
            lockdown_id = row.id
        return self.get(lockdown_id)

    def enforce(self, on_progress: Callable[[], None] | None = None) -> list[int]:
        """The sweep: every lockdown in force is applied again (a grant that finished after
        its round, a round whose process died), and every lockdown whose revokes changed
        (a failed one retried) reports it. Returns the lockdowns that had work."""
        worked: list[int] = []
        with self.service.db.read() as session:
            forced = list(
                session.execute(
                    select(Lockdown.id, Lockdown.target).where(Lockdown.lifted_at.is_(None))
                )
            )
            open_ids: set[int] = set(
                session.scalars(
                    select(func.coalesce(AccessRequest.lockdown_id, 0))
                    .where(
                        AccessRequest.lockdown_id.is_not(None),
                        AccessRequest.state.in_(
                            [RequestState.REVOKING.value, RequestState.REVOKE_FAILED.value]
                        ),
                    )
                    .distinct()
                )
            )
            leftover = {
                lid
                for lid, target in forced
                if session.scalar(
                    select(func.count()).where(
                        AccessRequest.target == target,
                        AccessRequest.state.in_(
                            [
                                RequestState.ACTIVE.value,
                                RequestState.PENDING.value,
                                RequestState.APPROVED.value,
                            ]
                        ),
                    )
                )
            }
        for lid in sorted(leftover):
            self.run(lid, on_progress)
            worked.append(lid)
        for lid in sorted((open_ids | {lid for lid, _ in forced}) - leftover):
            if self.report(lid) and on_progress is not None:
                on_progress()
        return worked

    # ------------------------------------------------------------------------ helpers

    def _refuse_unless_security_admin(self, person: Person) -> None:
        policy = self.service.policy
        if not rules.is_security_admin(policy, person):
            group = policy.security_admins or policy.admins
            raise NotAllowed(
                f"Only a security admin (the {group} group) can lock a target down or lift it."
            )

    def _known_target(self, target: str) -> None:
        if target not in self.service.policy.targets:
            known = ", ".join(sorted(self.service.policy.targets)[:20])
            raise InvalidRequest(f"There is no target called '{target[:60]}'. Targets: {known}.")

    @staticmethod
    def _in_force(session: Session, target: str) -> Lockdown | None:
        return session.scalars(
            select(Lockdown).where(Lockdown.target == target, Lockdown.lifted_at.is_(None))
        ).first()
