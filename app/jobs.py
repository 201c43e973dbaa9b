"""What a job is, so that each feature declares its jobs next to its code.

A feature's `jobs.py` (or that of the package whose work it is: the audit trail's checkpoints,
the Slack inbox, the outbox) holds `JOBS`: one `Job` per timer, with its name (the scheduler's
job id, logged at start-up), how often it ticks and what one tick does, given what the jobs
need (a `Needs` Protocol the module writes; the scheduler's `JobDeps` must satisfy it, which
mypy checks where app/scheduler gathers every JOBS). The scheduler registers one interval job
for each, guarded so a failing tick never stops the others; tests/scheduler/test_scheduler.py
finds every JOBS under app/ and checks that a real `serve` and `worker` register each one, so
a job that is declared but not gathered fails there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

# How often a job ticks: every second (expiry), every few seconds (takeover of lapsed claims;
# probes of targets with failed revokes), on the sweep interval, or on the checkpoint interval
# (WARDKEY_EXPIRY_SWEEP_SECONDS, _TAKEOVER_, _PROBE_, WARDKEY_SWEEP_SECONDS, _CHECKPOINT_).
Cadence = Literal["expiry", "takeover", "probe", "sweep", "checkpoint"]
# What a job is given. Contravariant: a job that needs less may run wherever more is given.
Needs = TypeVar("Needs", contravariant=True)


@dataclass(frozen=True)
class Job(Generic[Needs]):
    name: str
    cadence: Cadence
    run: Callable[[Needs], object]
