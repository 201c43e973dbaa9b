"""Service accounts (non-human identities) under the same discipline as people: an owner, a
purpose, a time limit on every elevation, and an owner who confirms on a schedule that the
account is still needed (or retires it). An account whose owner is gone is flagged.

`IdentityService` works through the request core it is given (`AccessService`): its database
and clock, its turn of the hour, its ending of a retired account's requests, and the policy in
force (a policy reload replaces the core's). The check the request path makes before elevating
a service account (retired, or overdue where `block_unattested`) is the core's own
(`Requests.refuse_unattested`, `app.lifecycle.eligibility`): it is about the request, reads the
rounds this service writes, and so needs nothing of this package.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import audit
from app.access import FeatureService
from app.lifecycle.eligibility import RETIRED as RETIRED
from app.lifecycle.eligibility import STILL_NEEDED as STILL_NEEDED
from app.lifecycle.eligibility import latest_attestation
from app.lifecycle.errors import AlreadyDecided, NotAllowed, NotFound
from app.lifecycle.transitions import announce
from app.policy import rules
from app.policy.model import Identity
from app.policy.people import Person, person_key
from app.store.models import AccessRequest, Attestation, OrphanFlag, RequestState


class AttestationStep(StrEnum):
    ASKED = "asked"  # the owner gets a card: Still needed / Retire
    OVERDUE = "overdue"  # the owner did not answer in time: reported (and blocked, if set)


@dataclass(frozen=True)
class AttestationSnapshot:
    identity: str
    owner: str
    purpose: str
    asked_at: datetime
    due_at: datetime
    outcome: str | None
    decided_by: str | None
    # Requests a retirement cancelled or ended, for their requesters to be told.
    changed_requests: tuple[int, ...] = ()


@dataclass(frozen=True)
class OrphanFound:
    identity: str
    owner: str
    reason: str


def orphans_of_notices(facts: Sequence[Mapping[str, object]]) -> list[OrphanFound]:
    """One look's new orphan flags, as their notices (`orphans.found`) recorded them."""
    return [OrphanFound(str(f["identity"]), str(f["owner"]), str(f["reason"])) for f in facts]


def _due_step(
    latest: Attestation | None, identity: Identity, now: datetime
) -> AttestationStep | None:
    """What an identity's attestation needs now: a new round (never asked, or `attest_every`
    since the last yes), a report that the open round is overdue (once), or nothing."""
    if latest is None:
        return AttestationStep.ASKED
    if latest.outcome is None:
        overdue = now > latest.due_at and latest.overdue_reported_at is None
        return AttestationStep.OVERDUE if overdue else None
    if latest.outcome == RETIRED or latest.decided_at is None:
        return None
    return AttestationStep.ASKED if now >= latest.decided_at + identity.attest_every else None


class IdentityService(FeatureService):
    """Service accounts' use cases: attestation rounds, the owner's answer, orphan flags."""

    # ---------------------------------------------------------------------- attestations

    def attestation_follow_ups(self) -> list[tuple[str, AttestationStep]]:
        """Ask owners whose identity is due (never attested, or `attest_every` since the last
        yes), and report rounds past `attest_within`, once each. Two workers never ask twice:
        one open round per identity is enforced by the database."""
        now = self.clock.now()
        steps: list[tuple[str, AttestationStep]] = []
        for name, identity in sorted(self.policy.identities.items()):
            try:
                step = self._follow_up_identity(name, identity, now)
            except IntegrityError:  # another worker opened the round
                continue
            if step is not None:
                steps.append((name, step))
        return steps

    def _follow_up_identity(
        self, name: str, identity: Identity, now: datetime
    ) -> AttestationStep | None:
        with self.db.read() as session:  # most ticks find nothing due: no write lock
            if _due_step(latest_attestation(session, name), identity, now) is None:
                return None
        with self.db.transaction() as session:
            latest = latest_attestation(session, name)
            step = _due_step(latest, identity, now)
            if step == AttestationStep.OVERDUE:
                assert latest is not None
                changed = session.execute(
                    update(Attestation)
                    .where(Attestation.id == latest.id, Attestation.version == latest.version)
                    .values(overdue_reported_at=now, version=latest.version + 1)
                    .execution_options(synchronize_session=False)
                ).rowcount  # type: ignore[attr-defined]
                if changed != 1:
                    return None
                self._audit(session, "identity.attestation_overdue", name, identity, now)
                announce(session, f"identity:{name}", "attestation.overdue", {"name": name}, at=now)
            elif step == AttestationStep.ASKED:
                session.add(
                    Attestation(
                        identity=name,
                        owner=identity.owner,
                        asked_at=now,
                        due_at=now + identity.attest_within,
                        version=1,
                    )
                )
                session.flush()
                self._audit(session, "identity.attestation_requested", name, identity, now)
                announce(session, f"identity:{name}", "attestation.asked", {"name": name}, at=now)
            return step

    def attest(self, name: str, person: Person, *, still_needed: bool) -> AttestationSnapshot:
        """The owner says the identity is still needed, or retires it (its elevations end)."""
        identity = self.policy.identities.get(name)
        if identity is None:
            raise NotFound(f"There is no service account called '{name}'.")
        if not rules.is_member(self.policy, person, [identity.owner]):
            raise NotAllowed(f"Only the owner of {name} ({identity.owner}) can answer for it.")
        now = self.clock.now()
        key = person_key(self.policy, person)
        outcome = STILL_NEEDED if still_needed else RETIRED
        with self.db.transaction() as session:
            latest = latest_attestation(session, name)
            if latest is None or latest.outcome is not None:
                raise AlreadyDecided(f"{name} has no open attestation; nothing was changed.")
            changed = session.execute(
                update(Attestation)
                .where(Attestation.id == latest.id, Attestation.version == latest.version)
                .values(outcome=outcome, decided_by=key, decided_at=now, version=latest.version + 1)
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            if changed != 1:
                raise AlreadyDecided(f"{name} was answered for at the same moment.")
            action = "identity.attested" if still_needed else "identity.retired"
            self._audit(session, action, name, identity, now, actor=key)
            session.expire(latest)
            view = self._attestation_view(latest_attestation(session, name), identity)
        if not still_needed:
            view = replace(view, changed_requests=self._end_elevations(name, key))
        return view

    def _end_elevations(self, name: str, owner: str) -> tuple[int, ...]:
        """A retired identity keeps nothing: its waiting requests are cancelled and its
        elevations end. (One being granted at this moment is stopped by the check just
        before the grant.)"""
        with self.db.read() as session:
            live = session.scalars(
                select(AccessRequest.id)
                .where(
                    AccessRequest.identity == name,
                    AccessRequest.state.in_(
                        [
                            RequestState.PENDING.value,
                            RequestState.APPROVED.value,
                            RequestState.ACTIVE.value,
                        ]
                    ),
                )
                .order_by(AccessRequest.id)
            ).all()
        why = f"{name} was retired by its owner"
        return tuple(
            rid for rid in live if self.core.end_access(rid, why, "identity_retired", actor=owner)
        )

    def attestation(self, name: str) -> AttestationSnapshot | None:
        identity = self.policy.identities.get(name)
        if identity is None:
            return None
        with self.db.read() as session:
            latest = latest_attestation(session, name)
            return self._attestation_view(latest, identity) if latest is not None else None

    # --------------------------------------------------------------------------- orphans

    def flag_orphans(self, owner_gone: Callable[[str], str | None]) -> list[OrphanFound]:
        """Identities whose owner is no longer a current person: in no group of the policy,
        or (`owner_gone`, from the directory) deleted or unknown. New flags are recorded,
        audited and returned; flags whose owner is back are cleared."""
        now = self.clock.now()
        members = {m for group in self.policy.groups for m in self.policy.members_of(group)}
        new: list[OrphanFound] = []
        for name, identity in sorted(self.policy.identities.items()):
            reason = (
                None
                if identity.owner in members
                else f"owner {identity.owner} is in no group of the policy"
            ) or owner_gone(identity.owner)
            with self.db.transaction() as session:
                flag = session.get(OrphanFlag, name)
                if reason is None and flag is not None:
                    session.delete(flag)
                    self._audit(session, "identity.owner_restored", name, identity, now)
                elif reason is not None and flag is None:
                    session.add(
                        OrphanFlag(
                            identity=name, owner=identity.owner, reason=reason, flagged_at=now
                        )
                    )
                    self._audit(session, "identity.orphaned", name, identity, now, reason=reason)
                    announce(
                        session,
                        "security",
                        "orphans.found",
                        {"identity": name, "owner": identity.owner, "reason": reason},
                        at=now,
                    )
                    new.append(OrphanFound(name, identity.owner, reason))
        return new

    def orphans_due(self, owner_gone: Callable[[str], str | None]) -> list[OrphanFound] | None:
        """This hour's look for orphaned identities, unless another worker has taken it."""
        now = self.clock.now()
        period = now.replace(minute=0, second=0, microsecond=0).isoformat()
        if not self.core.take_turn("orphans", period, now):
            return None
        return self.flag_orphans(owner_gone)

    def orphans(self) -> list[OrphanFound]:
        with self.db.read() as session:
            return [
                OrphanFound(f.identity, f.owner, f.reason)
                for f in session.scalars(select(OrphanFlag).order_by(OrphanFlag.identity))
            ]

    # --------------------------------------------------------------------------- helpers

    def _attestation_view(self, row: Attestation | None, identity: Identity) -> AttestationSnapshot:
        assert row is not None
        return AttestationSnapshot(
            identity=row.identity,
            owner=row.owner,
            purpose=identity.purpose,
            asked_at=row.asked_at,
            due_at=row.due_at,
            outcome=row.outcome,
            decided_by=row.decided_by,
        )

    @staticmethod
    def _audit(
        session: Session,
        action: str,
        name: str,
        identity: Identity,
        now: datetime,
        actor: str = "wardkey",
        reason: str | None = None,
    ) -> None:
        data: dict[str, object] = {
            "identity": name,
            "owner": identity.owner,
            "purpose": identity.purpose,
            "target": identity.target,
            "role": identity.role,
            "account": identity.account,
        }
        if reason is not None:
            data["orphan_reason"] = reason
        audit.append(session, at=now, action=action, actor=actor, data=data)
