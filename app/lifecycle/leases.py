"""Leases on a request's work: a sweep locks the rows it takes, skipping those another worker
holds (`skip_locked`, `lock_request`); a worker calling a target holds a lease on the request's
row (`claimed_by`, `claimed_until`: `lease_values`, `holds_lease`) and renews it while the call
runs (`Heartbeat`, `keeping_leases`), so a lease outlives any slow call of a living worker and
lapses within one lease of its death, when another takes the work over; and each target's calls
run in its own lane (`TargetLanes`), so a hung target holds up only its own work."""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from sqlalchemy import Select, select, update
from sqlalchemy.orm import Session

from app.clock import Clock
from app.store.db import Database, is_database_error
from app.store.models import AccessRequest, RequestState

log = logging.getLogger(__name__)
T = TypeVar("T")
T_row = TypeVar("T_row", bound=tuple[Any, ...])


def skip_locked(query: Select[T_row]) -> Select[T_row]:
    """Lock the rows a sweep takes; rows another worker holds are skipped, not waited for.
    (SQLite has no row locks: its single writer and the conditional update suffice.)"""
    return query.with_for_update(skip_locked=True)


def lock_request(session: Session, request_id: int) -> AccessRequest | None:
    """The request's row, locked for this transaction; None while another worker holds it."""
    return session.scalars(
        skip_locked(select(AccessRequest).where(AccessRequest.id == request_id))
    ).first()


def lease_values(worker: str, lease: timedelta, now: datetime) -> dict[str, object]:
    """The lease a worker takes on a request when it starts calling a target for it."""
    return {"claimed_by": worker, "claimed_until": now + lease}


def holds_lease(req: AccessRequest, worker: str) -> bool:
    """Is this worker the one to call the target now? (Rows from before leases have none.)"""
    return req.claimed_by in (None, worker)


class Leaseholder(Protocol):
    """What a heartbeat renews leases for: this worker's name, its lease, the database."""

    db: Database
    clock: Clock
    lease: timedelta
    worker: str


class TargetLanes:
    """Each target's own threads for its calls: a slow or hung target fills only its own lane,
    never another's. `room` says how many more calls a target's lane takes now."""

    def __init__(self, per_target: int) -> None:
        self.per_target = per_target
        self._lock = threading.Lock()
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._busy: dict[str, int] = defaultdict(int)
        self._freed = threading.Condition(self._lock)

    def room(self, target: str) -> int:
        with self._lock:
            return self.per_target - self._busy[target]

    def full(self, targets: Iterable[str]) -> list[str]:
        with self._lock:
            return [t for t in targets if self._busy[t] >= self.per_target]

    def submit(self, target: str, call: Callable[[], T]) -> Future[T]:
        with self._lock:
            pool = self._pools.get(target)
            if pool is None:
                pool = self._pools[target] = ThreadPoolExecutor(
                    self.per_target, thread_name_prefix=f"lane-{target}"[:40]
                )
            self._busy[target] += 1
        future = pool.submit(call)
        future.add_done_callback(lambda _f: self._done(target))
        return future

    def wait_for_room(self, targets: Iterable[str], timeout: float) -> bool:
        """Wait up to `timeout` seconds until one of these targets' lanes has room."""
        wanted = list(targets)
        with self._freed:
            return self._freed.wait_for(
                lambda: any(self._busy[t] < self.per_target for t in wanted), timeout
            )

    def _done(self, target: str) -> None:
        with self._freed:
            self._busy[target] -= 1
            self._freed.notify_all()


class Heartbeat:
    """Renews this worker's leases on the rows it is working on, every third of the lease,
    in one UPDATE for all of them; so a lease outlives any slow call of a living worker and
    lapses within one lease of its worker's death."""

    def __init__(self, service: Leaseholder) -> None:
        self.service = service
        self.every = max(service.lease.total_seconds() / 3, 0.05)
        self._lock = threading.Lock()
        self._held: dict[int, int] = defaultdict(int)  # request -> holders in this process
        self._thread: threading.Thread | None = None

    def hold(self, request_ids: Iterable[int]) -> None:
        with self._lock:
            for rid in request_ids:
                self._held[rid] += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="lease-heartbeat")
                self._thread.daemon = True
                self._thread.start()

    def release(self, request_ids: Iterable[int]) -> None:
        with self._lock:
            for rid in request_ids:
                self._held[rid] -= 1
                if self._held[rid] <= 0:
                    del self._held[rid]

    def held(self) -> list[int]:
        with self._lock:
            return sorted(self._held)

    def _run(self) -> None:
        while True:
            time.sleep(self.every)
            ids = self.held()
            if ids:
                self.renew(ids)

    def renew(self, ids: list[int]) -> int:
        """Push the leases this worker still holds on these rows one lease further."""
        svc = self.service
        began = svc.db.outage.call_began()
        try:
            with svc.db.transaction() as session:
                mine = (
                    AccessRequest.id.in_(ids),
                    AccessRequest.claimed_by == svc.worker,
                    AccessRequest.state.in_(
                        [RequestState.GRANTING.value, RequestState.REVOKING.value]
                    ),
                )
                # Rows another transaction has locked are skipped, never waited for: it is
                # recording their outcome or taking them over, and one renewal stuck behind
                # it let every other lease this worker held lapse (renewal waits of 10 s in a
                # wave on two CPUs). A row skipped now is renewed on the next beat, a third of
                # a lease later. Locked in id order, as every multi-row write of requests is.
                locked = list(
                    session.scalars(
                        skip_locked(
                            select(AccessRequest.id).where(*mine).order_by(AccessRequest.id)
                        )
                    )
                )
                renewed = 0
                if locked:
                    result = session.execute(
                        update(AccessRequest)
                        .where(AccessRequest.id.in_(locked), *mine)
                        .values(claimed_until=svc.clock.now() + svc.lease)
                        .execution_options(synchronize_session=False)
                    )
                    renewed = int(result.rowcount)  # type: ignore[attr-defined]
        except Exception as exc:
            if not is_database_error(exc):
                log.exception("event=lease_renewal_failed")
            else:
                svc.db.outage.failed("lease_renewal", exc)
            return 0
        svc.db.outage.answered(began)
        return renewed


@contextmanager
def keeping_leases(heartbeat: Heartbeat | None, *request_ids: int) -> Iterator[None]:
    """Keep this worker's leases on these rows alive while it works on them (a process has a
    heartbeat; tests on a ManualClock need none)."""
    if heartbeat is None:
        yield
        return
    heartbeat.hold(request_ids)
    try:
        yield
    finally:
        heartbeat.release(request_ids)
