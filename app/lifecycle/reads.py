"""Reads of requests for the Slack layer and the features (one request, a person's own, those
awaiting a person's decision, counts and message references), and the record of who opened the
App Home lately (only their homes are redrawn when a request changes)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from app.lifecycle.deps import CoreDeps
from app.lifecycle.eligibility import is_requester
from app.lifecycle.snapshots import RequestSnapshot, load_request, snapshot, snapshots
from app.policy import rules
from app.policy.people import Person, person_key
from app.store.models import AccessRequest, Decision, HomeView, RequestMessage, RequestState


class Reads:
    """Reads of requests; each in its own read transaction."""

    def __init__(self, deps: CoreDeps) -> None:
        self.deps = deps

    def get(self, request_id: int) -> RequestSnapshot:
        with self.deps.db.read() as session:
            return snapshot(session, load_request(session, request_id))

    def requests_of(
        self, person: Person, states: tuple[RequestState, ...] = ()
    ) -> list[RequestSnapshot]:
        return self.requests_of_key(person_key(self.deps.policy, person), states)

    def requests_of_key(
        self, key: str, states: tuple[RequestState, ...] = ()
    ) -> list[RequestSnapshot]:
        """The newest 100 requests of the person with this key, optionally in these states."""
        with self.deps.db.read() as session:
            query = select(AccessRequest).where(AccessRequest.requester == key)
            if states:
                query = query.where(AccessRequest.state.in_([s.value for s in states]))
            rows = session.scalars(query.order_by(AccessRequest.id.desc()).limit(100)).all()
            return snapshots(session, rows)

    def awaiting_decision_by(self, person: Person, limit: int = 25) -> list[RequestSnapshot]:
        """Requests this person may decide on now, longest waiting first: pending ones, and
        extensions awaiting approval, on paths they approve at this instant, that they did not
        ask for and have not decided yet."""
        now = self.deps.clock.now()
        key = person_key(self.deps.policy, person)
        # Paths first, so the query reads only requests this person could decide.
        paths = [
            p for p in self.deps.policy.paths if rules.is_approver(self.deps.policy, p, person, now)
        ]
        # Vendors' requests wait for their sponsor too, whatever the path.
        sponsoring = [
            v.sponsor
            for v in self.deps.policy.vendors.values()
            if rules.is_member(self.deps.policy, person, [v.sponsor])
        ]
        if not paths and not sponsoring:
            return []
        decided_by_me = select(Decision.id).where(
            Decision.request_id == AccessRequest.id,
            Decision.approver == key,
            Decision.round == AccessRequest.approval_round,
        )
        with self.deps.db.read() as session:
            rows = session.scalars(
                select(AccessRequest)
                .where(
                    AccessRequest.path.in_(paths)
                    | (
                        AccessRequest.sponsor.in_(sponsoring)
                        & (AccessRequest.state == RequestState.PENDING.value)
                    ),
                    AccessRequest.requester != key,
                    ~decided_by_me.exists(),
                    (AccessRequest.state == RequestState.PENDING.value)
                    | (
                        (AccessRequest.state == RequestState.ACTIVE.value)
                        & AccessRequest.extension_seconds.is_not(None)
                    ),
                )
                .order_by(AccessRequest.id)
                .limit(limit + 20)  # room for requests filed under another account of mine
            ).all()
            mine = [r for r in rows if not is_requester(self.deps.policy, person, r)]
            return snapshots(session, mine[:limit])

    def elevations_since(self, requester: str, since: datetime) -> int:
        """How many grants this person (by person key) received since `since`."""
        with self.deps.db.read() as session:
            return int(
                session.scalar(
                    select(func.count()).where(
                        AccessRequest.requester == requester, AccessRequest.granted_at >= since
                    )
                )
                or 0
            )

    def messages_of(self, request_id: int, purpose: str) -> list[tuple[str, str]]:
        with self.deps.db.read() as session:
            rows = session.execute(
                select(RequestMessage.channel, RequestMessage.ts)
                .where(RequestMessage.request_id == request_id, RequestMessage.purpose == purpose)
                .order_by(RequestMessage.id)
            ).all()
        return [(channel, ts) for channel, ts in rows]

    def remember_home_opened(self, slack_user_id: str) -> None:
        insert = sqlite_insert if self.deps.db.is_sqlite else postgres_insert
        now = self.deps.clock.now()
        with self.deps.db.transaction() as session:
            session.execute(
                insert(HomeView)
                .values(slack_user_id=slack_user_id, opened_at=now)
                .on_conflict_do_update(index_elements=["slack_user_id"], set_={"opened_at": now})
            )

    def recent_home_viewers(self, slack_user_ids: set[str], within: timedelta) -> set[str]:
        """Those of these people who opened the App Home within `within`."""
        if not slack_user_ids:
            return set()
        with self.deps.db.read() as session:
            return set(
                session.scalars(
                    select(HomeView.slack_user_id).where(
                        HomeView.slack_user_id.in_(slack_user_ids),
                        HomeView.opened_at > self.deps.clock.now() - within,
                    )
                )
            )
