"""Signed checkpoints of the chain's head, written off the box on a schedule, and the check an
auditor runs (`wardkey audit verify`): the chain, then its tail against the newest checkpoint
that can be trusted, then whether that checkpoint is as recent as the schedule promises.

Someone who can write the database and the checkpoint directory, but has no key, can cut the
tail and then delete, rename or plant checkpoint files. So with a key every file must carry a
valid signature (an unsigned or badly signed one is reported, never used), the checkpoint used
is the one with the highest sequence number (never the file name), and a newest checkpoint older
than the schedule allows is a warning: the events after it could have been cut unseen.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from app.audit.chain import Checkpoint, CheckpointError, VerifyResult, head, verify
from app.clock import Clock, SystemClock
from app.store.db import Database

FILE_GLOB = "wardkey-checkpoint-*.json"
# A slow sweep or a restart may miss a checkpoint or two, and clocks drift a little: only a
# newest checkpoint older than two intervals and a minute means the schedule has stopped.
MISSED_SWEEPS_ALLOWED = 2
CLOCK_SLACK = timedelta(minutes=1)
_MAX_FILE_BYTES = 64 * 1024  # a checkpoint is ~300 bytes; a planted huge file is not read whole
_EARLIEST = datetime.min.replace(tzinfo=UTC)

OK, WARNING, BROKEN = "OK", "WARNING", "BROKEN"
EXIT_CODES = {OK: 0, BROKEN: 1, WARNING: 3}


class CheckpointSetupError(Exception):
    """Verify cannot start: what the operator must fix (a path, a missing key)."""


def current_checkpoint(db: Database, key: bytes | None, clock: Clock) -> Checkpoint | None:
    """The chain's head now, saying when it was taken, signed when there is a key."""
    now = head(db)
    if now is None:
        return None
    stamped = replace(now, written_at=clock.now())
    return stamped.signed(key) if key else stamped


def write_signed_checkpoint(
    db: Database, directory: Path, key: bytes, *, clock: Clock | None = None
) -> Path | None:
    """Sign the chain's head and write it to `directory` (a mount of another machine or a
    write-once store) as a new file named by its sequence number and time, so no file is
    ever overwritten; None when the trail is empty. The file is written whole or not at all."""
    checkpoint = current_checkpoint(db, key, clock or SystemClock())
    if checkpoint is None or checkpoint.written_at is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    stamp = checkpoint.written_at.strftime("%Y%m%dT%H%M%SZ")
    path = directory / f"wardkey-checkpoint-{checkpoint.seq:012d}-{stamp}.json"
    partial = path.with_suffix(".partial")
    partial.write_text(checkpoint.to_json() + "\n", encoding="utf-8")
    os.replace(partial, path)
    return path


@dataclass(frozen=True)
class CheckpointFile:
    name: str
    checkpoint: Checkpoint | None
    problem: str = ""  # why it is not used; "" when it can be trusted


def read_checkpoints(place: Path, key: bytes | None) -> list[CheckpointFile]:
    """Every checkpoint in `place` (a file, or a directory of scheduled ones), each checked
    with `key`. Without a key, unsigned files are used as they are and a signed one is a setup
    error (its signature could not be checked)."""
    if place.is_dir():
        paths = sorted(place.glob(FILE_GLOB))
    elif place.is_file():
        paths = [place]
    else:
        raise CheckpointSetupError(
            f"no checkpoint at {place}: give a file from `wardkey audit checkpoint` or the "
            "directory the scheduled ones are written to"
        )
    files = [_read(path, key) for path in paths]
    if key is None and any(f.checkpoint and f.checkpoint.signature for f in files):
        raise CheckpointSetupError(
            "the checkpoints are signed; set WARDKEY_CHECKPOINT_KEY to check them"
        )
    return files


def _read(path: Path, key: bytes | None) -> CheckpointFile:
    # Anyone who can write the directory chooses file names: never print control characters.
    name = path.name if path.name.isprintable() else ascii(path.name)
    name = name if len(name) <= 120 else name[:117] + "..."
    try:
        with path.open("rb") as handle:
            raw = handle.read(_MAX_FILE_BYTES + 1)
        if len(raw) > _MAX_FILE_BYTES:
            raise CheckpointError("far too large")
        checkpoint = Checkpoint.from_json(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, CheckpointError) as exc:
        why = exc if isinstance(exc, CheckpointError) else type(exc).__name__
        return CheckpointFile(
            name, None, f"{name} cannot be read as a checkpoint ({why}); not used"
        )
    if key is None:
        return CheckpointFile(name, checkpoint)
    if checkpoint.signature is None:
        return CheckpointFile(
            name,
            checkpoint,
            f"{name} is not signed; not used "
            "(with WARDKEY_CHECKPOINT_KEY set every checkpoint must be signed)",
        )
    if not checkpoint.signature_ok(key):
        return CheckpointFile(
            name,
            checkpoint,
            f"{name} does not carry a valid signature: it was altered, or signed with another "
            "key; not used",
        )
    return CheckpointFile(name, checkpoint)


@dataclass(frozen=True)
class TrailReport:
    """What `audit verify` found, in words that say what was and was not checked."""

    level: str  # OK, WARNING or BROKEN
    lines: tuple[str, ...]
    chain: VerifyResult

    @property
    def exit_code(self) -> int:
        """0 all holds; 1 tampering found (chain, tail or checkpoint files); 3 nothing
        tampered found but a cut tail could not be ruled out (no or stale checkpoint)."""
        return EXIT_CODES[self.level]

    def text(self) -> str:
        return "\n".join(self.lines)


def check_trail(
    db: Database,
    *,
    checkpoints: Path | None,
    key: bytes | None,
    clock: Clock,
    every: timedelta,
) -> TrailReport:
    """Verify the chain and its tail. `checkpoints` is a file or the directory of scheduled
    ones (only a directory is held to the schedule, `every`); `clock` says what "now" is."""
    files = read_checkpoints(checkpoints, key) if checkpoints is not None else []
    problems = tuple(f"PROBLEM: {f.problem}" for f in files if f.problem)
    trusted = [f.checkpoint for f in files if f.checkpoint is not None and not f.problem]
    newest = max(trusted, key=lambda c: (c.seq, c.written_at or _EARLIEST), default=None)
    result = verify(db, newest)
    if not result.ok:
        return TrailReport(BROKEN, (*problems, result.summary()), result)
    if checkpoints is None:
        line = (
            f"OK: {result.checked} events verified (chain only: events cut from the end would "
            "not be seen; pass --checkpoint or set WARDKEY_CHECKPOINT_DIR)"
        )
        return TrailReport(OK, (line,), result)
    if newest is None:
        what = "no checkpoint could be trusted" if files else f"no checkpoint in {checkpoints}"
        level = BROKEN if problems else WARNING
        line = (
            f"{level}: {result.checked} events verified, but {what}: events cut from the end "
            "would not be seen. Check that the checkpoint sweep runs and can write there."
        )
        return TrailReport(level, (*problems, line), result)
    level, says = _tail(result, newest, clock.now(), every if checkpoints.is_dir() else None)
    if problems:
        count = len(problems)
        level, says = (
            BROKEN,
            (
                f"{count} checkpoint file{'s' if count > 1 else ''} cannot be trusted (above): "
                f"someone wrote there without the key, or the key changed. {says}"
            ),
        )
    return TrailReport(level, (*problems, f"{level}: {says}"), result)


def _tail(
    result: VerifyResult, newest: Checkpoint, now: datetime, every: timedelta | None
) -> tuple[str, str]:
    """The level and the words for a chain that holds up to a trusted checkpoint."""
    kind = "signed" if newest.signature else "unsigned"
    checked = (
        f"{result.checked} events verified; tail checked against {kind} checkpoint seq {newest.seq}"
    )
    later = result.checked - newest.seq
    after = (
        ""
        if later == 0
        else f" (the {later} event{'' if later == 1 else 's'} after it "
        f"{'is' if later == 1 else 'are'} covered by the chain alone)"
    )
    unsigned = (
        ""
        if newest.signature
        else "; unsigned, it is only as safe as the place it was kept (set "
        "WARDKEY_CHECKPOINT_KEY to sign checkpoints)"
    )
    if newest.written_at is None:
        if every is None:
            return OK, f"{checked}{after}{unsigned}"
        return WARNING, (
            f"{checked}, but it does not say when it was written (an older WardKey wrote it), "
            "so events cut from the end since then might not be seen. Check that the "
            "checkpoint sweep runs."
        )
    age = now - newest.written_at
    if -age > CLOCK_SLACK:
        return WARNING, (
            f"{checked}, but it was written {span(-age)} after this machine's time now. "
            "Check the clocks of this machine and of the one that wrote it."
        )
    if every is not None and age > MISSED_SWEEPS_ALLOWED * every + CLOCK_SLACK:
        return WARNING, (
            f"{checked}, but it was written {span(age)} ago and checkpoints are due every "
            f"{span(every)}: events cut from the end since then would not be seen. Check that "
            "the checkpoint sweep runs and can write to the checkpoint directory."
        )
    return OK, f"{checked} written {span(max(age, timedelta(0)))} ago{after}{unsigned}"


def span(delta: timedelta) -> str:
    """A duration as a person reads it: 40 s, 11 min, 2 h 5 min, 3 days 4 h."""
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} days {hours} h" if hours else f"{days} days"
