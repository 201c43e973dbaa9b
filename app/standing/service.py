"""Standing privilege: access on a target that no WardKey grant covers.

Reconcile reads each target's member lists and compares them with the grants that hold access
now. What is found is recorded (first and last seen), audited, and by the target's policy either
only reported or removed. Access found earlier and now gone is marked cleared. One worker does
it per hour: the first to take the hour's turn (`AccessService.take_turn`).

`StandingService` works through the request core it is given (`AccessService`): its database,
clock and worker name, the targets' adapters (with the core's retries) and the policy in force
(a policy reload replaces the core's).
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import audit
from app.access import FeatureService
from app.adapters.base import AdapterError
from app.audit.export import _no_formula
from app.lifecycle.errors import NotAllowed
from app.lifecycle.targets import StillPresent, describe_error
from app.lifecycle.transitions import announce
from app.policy import rules
from app.policy.people import Person
from app.store.models import HOLDING_STATES, AccessRequest, StandingAccess, SweepRun

log = logging.getLogger(__name__)
STANDING_JOB = "standing"
STANDING_EVERY = timedelta(hours=1)


@dataclass(frozen=True)
class StandingFinding:
    target: str
    entitlement: str
    account: str
    removed: bool
    detail: str = ""


@dataclass
class StandingReport:
    found: list[StandingFinding] = field(default_factory=list)  # new since the last look
    still: int = 0  # seen before and still there
    cleared: list[StandingFinding] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)  # target -> why


@dataclass(frozen=True)
class StandingHolder:
    target: str
    entitlement: str
    account: str
    first_seen: datetime
    last_seen: datetime


CSV_COLUMNS = ("target", "entitlement", "account", "first_seen", "last_seen")


def write_csv(holders: Iterable[StandingHolder], out: IO[str]) -> int:
    """The standing-access report as CSV; returns how many rows. Account names come from the
    targets, so every text cell is made formula-safe as the audit export's are."""
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    count = 0
    for h in holders:
        writer.writerow(
            [
                _no_formula(h.target),
                _no_formula(h.entitlement),
                _no_formula(h.account),
                h.first_seen.isoformat(),
                h.last_seen.isoformat(),
            ]
        )
        count += 1
    return count


class StandingService(FeatureService):
    """Standing privilege's use cases: the hourly look, the report, and removal by policy."""

    def standing_holders(self, person: Person | None = None) -> list[StandingHolder]:
        """Who holds access on a target without a grant, as of the last look, per target and
        entitlement. From Slack only a WardKey admin may ask (`person` given)."""
        if person is not None and not rules.is_admin(self.policy, person):
            raise NotAllowed("Only WardKey admins can see the standing-privilege report.")
        with self.db.read() as session:
            rows = session.scalars(
                select(StandingAccess)
                .where(StandingAccess.cleared_at.is_(None))
                .order_by(StandingAccess.target, StandingAccess.entitlement, StandingAccess.account)
            ).all()
            return [
                StandingHolder(r.target, r.entitlement, r.account, r.first_seen, r.last_seen)
                for r in rows
            ]

    def standing_due(self) -> StandingReport | None:
        """This hour's look for standing access, unless another worker has taken it."""
        now = self.clock.now()
        period = now.replace(minute=0, second=0, microsecond=0).isoformat()
        if not self.core.take_turn(STANDING_JOB, period, now):
            return None
        return self.find_standing()

    def find_standing(self) -> StandingReport:
        report = StandingReport()
        for name, target in self.policy.targets.items():
            if name not in self.core.adapters:
                continue
            entitlements = sorted({role.entitlement for role in target.roles.values()})
            for entitlement in entitlements:
                try:
                    members = self._members(name, entitlement)
                except AdapterError as exc:
                    report.unreadable[name] = describe_error(exc)
                    log.warning("event=standing_unreadable target=%s error=%s", name, exc)
                    with self.db.transaction() as session:
                        announce(
                            session,
                            "security",
                            "standing.found",
                            {"target": name, "unreadable": report.unreadable[name]},
                            at=self.clock.now(),
                        )
                    break
                # Read the grants after the members, so a grant made meanwhile counts.
                allowed = set(target.standing_allowed)
                uncovered = {a for a in members if a not in allowed} - self._holders(
                    name, entitlement
                )
                self._record_standing(name, entitlement, uncovered, target.standing, report)
            else:  # every entitlement read: the target was checked now
                self._looked(name)
        return report

    def _members(self, target: str, entitlement: str) -> set[str]:
        return self.core.call_target(target, lambda a: a.list_members(entitlement))

    def _holders(self, target: str, entitlement: str) -> set[str]:
        with self.db.read() as session:
            return set(
                session.scalars(
                    select(AccessRequest.account).where(
                        AccessRequest.target == target,
                        AccessRequest.entitlement == entitlement,
                        AccessRequest.state.in_([s.value for s in HOLDING_STATES]),
                    )
                )
            )

    def _record_standing(
        self,
        target: str,
        entitlement: str,
        uncovered: set[str],
        mode: str,
        report: StandingReport,
    ) -> None:
        now = self.clock.now()
        with self.db.transaction() as session:
            known = {
                row.account: row
                for row in session.scalars(
                    select(StandingAccess).where(
                        StandingAccess.target == target,
                        StandingAccess.entitlement == entitlement,
                        StandingAccess.cleared_at.is_(None),
                    )
                )
            }
            for account, seen in known.items():
                if account in uncovered:
                    seen.last_seen = now
                    report.still += 1
                else:
                    seen.cleared_at = now
                    finding = StandingFinding(target, entitlement, account, removed=False)
                    self._audit_standing(session, "standing.cleared", finding, now)
                    report.cleared.append(finding)
        for account in sorted(uncovered - set(known)):
            removed, detail = (
                self._remove_standing(target, entitlement, account)
                if mode == "remove"
                else (False, "")
            )
            finding = StandingFinding(target, entitlement, account, removed, detail)
            with self.db.transaction() as session:
                row: StandingAccess | None = session.scalars(
                    select(StandingAccess).where(
                        StandingAccess.target == target,
                        StandingAccess.entitlement == entitlement,
                        StandingAccess.account == account,
                    )
                ).first()
                if row is None:
                    row = StandingAccess(
                        target=target,
                        entitlement=entitlement,
                        account=account,
                        first_seen=now,
                        last_seen=now,
                    )
                    session.add(row)
                row.last_seen = now
                row.cleared_at = now if removed else None
                row.removed_by_wardkey = removed
                self._audit_standing(session, "standing.found", finding, now)
                if removed:
                    self._audit_standing(session, "standing.removed", finding, now)
                announce(
                    session,
                    "security",
                    "standing.found",
                    {
                        "target": target,
                        "entitlement": entitlement,
                        "account": account,
                        "removed": removed,
                        "detail": detail,
                    },
                    at=now,
                )
            report.found.append(finding)

    def _remove_standing(self, target: str, entitlement: str, account: str) -> tuple[bool, str]:
        if account in self._holders(target, entitlement):  # a grant arrived meanwhile
            return False, "a grant now covers it"
        try:
            self.core.take_away(target, account, entitlement)
        except StillPresent:
            return False, "the target still shows it after the revoke"
        except AdapterError as exc:
            return False, f"removing it failed: {describe_error(exc)}"
        return True, "removed"

    @staticmethod
    def _audit_standing(
        session: Session, action: str, finding: StandingFinding, now: datetime
    ) -> None:
        audit.append(
            session,
            at=now,
            action=action,
            actor="wardkey",
            data={
                "target": finding.target,
                "entitlement": finding.entitlement,
                "account": finding.account,
                "removed": finding.removed,
                "detail": finding.detail,
            },
        )

    def standing_looks(self) -> dict[str, datetime | None]:
        """Per target of the policy, when its members were last read in full (None: never), so
        a report says how old its evidence is and never calls an unread target clean."""
        keys = {name: _look_key(name) for name in self.policy.targets}
        with self.db.read() as session:
            done = {
                row.period: row.done_at
                for row in session.scalars(select(SweepRun).where(SweepRun.job == LOOK_JOB))
            }
        return {name: done.get(key) for name, key in keys.items()}

    def unchecked_targets(self) -> dict[str, datetime | None]:
        """Targets with no full read in the last two hourly looks (None: never read), with
        their last full read: nothing said about standing access covers them now."""
        now = self.clock.now()
        return {
            target: at
            for target, at in self.standing_looks().items()
            if at is None or now - at > 2 * STANDING_EVERY
        }

    def _looked(self, target: str) -> None:
        now = self.clock.now()
        key = _look_key(target)
        for _ in range(2):  # a second look at the same moment may insert first: then update
            try:
                with self.db.transaction() as session:
                    row = session.get(SweepRun, (LOOK_JOB, key))
                    if row is None:
                        session.add(
                            SweepRun(
                                job=LOOK_JOB, period=key, done_at=now, done_by=self.core.worker
                            )
                        )
                    elif row.done_at < now:
                        row.done_at, row.done_by = now, self.core.worker
                return
            except IntegrityError:
                continue


# The last full read of each target is kept as a sweep run of this job, the target's name its
# period (a long name is shortened with a digest to fit the column).
LOOK_JOB = "standing_look"


def _look_key(target: str) -> str:
    if len(target) <= 50:
        return target
    return f"{target[:33]}~{hashlib.sha256(target.encode()).hexdigest()[:16]}"


def report_of_notices(facts: Iterable[Mapping[str, Any]]) -> StandingReport:
    """One look's findings, as the notices it wrote with them recorded them (`find_standing`:
    a target it could not read; `_record_standing`: an account found)."""
    report = StandingReport()
    for f in facts:
        if "unreadable" in f:
            report.unreadable[str(f["target"])] = str(f["unreadable"])
        else:
            report.found.append(
                StandingFinding(
                    str(f["target"]),
                    str(f["entitlement"]),
                    str(f["account"]),
                    bool(f["removed"]),
                    str(f.get("detail") or ""),
                )
            )
    return report
