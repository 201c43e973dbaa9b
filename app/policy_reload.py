"""Reload the policy file (WARDKEY_POLICY) without a restart: on SIGHUP, and when the file
changes (a cheap stat of it on a tick; a Kubernetes ConfigMap mounted as a directory is swapped
in place by the kubelet and seen the same way). Every `serve`, `worker` and `socket` process
watches the file itself, so every instance converges on the same version.

A changed file is checked as at start-up before anything changes: the manifest (every problem,
with its field), the adapters its targets need (their secrets and connection settings), and
that no target with open requests has been removed (their revokes would have nowhere to go).
A file that fails is not used: the policy in force stays, one log line names the first problem's
field and reason, and the security channel is told once (the alert is keyed on the file's
hash, so however many instances refuse it, one message is posted). A file that passes replaces
the policy and the adapters at once (unchanged targets keep theirs), is logged, and the security
channel is told once that the policy changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Literal, Protocol

from sqlalchemy import func, select

from app.access import AccessService
from app.adapters.base import Adapter
from app.adapters.registry import AdapterConfigError, build_adapters
from app.blockkit import escape
from app.outbox_records import POST, OutCall
from app.policy import Policy, PolicyError
from app.policy_targets import parse_policy, policy_warnings
from app.store.models import OPEN_STATES, AccessRequest
from app.wording import plural

log = logging.getLogger(__name__)
Outcome = Literal["unchanged", "reloaded", "refused", "settling"]
# A file written in place is read once it has been still this long, not half-written.
SETTLE_SECONDS = 1.0
# However the file changed, it is read and hashed at least this often (a stat can miss an
# in-place rewrite of the same size within the same clock tick).
REHASH_SECONDS = 60.0


class Alerts(Protocol):
    """Where the security channel's messages go (app/notify/outbox.py `Outbox`)."""

    def enqueue(self, lane: str, calls: list[OutCall], key: str | None = None) -> None: ...


@dataclass(frozen=True)
class Refusal:
    """Why a changed file was not used: the first problem's field and reason."""

    field: str
    reason: str
    line: int | None = None
    problems: int = 1

    def __str__(self) -> str:
        at = f" (line {self.line})" if self.line else ""
        more = f", and {self.problems - 1} more" if self.problems > 1 else ""
        return f"{self.field}: {self.reason}{at}{more}"


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _stat(path: Path) -> tuple[int, int, int, int] | None:
    try:
        found = os.stat(path)  # follows symlinks: a ConfigMap's ..data swap is a new inode
    except OSError:
        return None
    return (found.st_mtime_ns, found.st_size, found.st_ino, found.st_dev)


def _code(text: str) -> str:
    """The operator's own words (a field of their file) in a code span, as they wrote them:
    no mention or link, and no backtick to end the span early."""
    return escape(text).replace("`", "\u02cb")


def _changed_sections(old: Policy, new: Policy) -> list[str]:
    before, after = old.model_dump(mode="json"), new.model_dump(mode="json")
    names = sorted(set(before) | set(after))
    return [name for name in names if before.get(name) != after.get(name)]


class PolicyReloader:
    def __init__(
        self,
        path: str | Path,
        service: AccessService,
        alerts: Alerts | None = None,
        *,
        every: float = 5.0,
        build: Callable[[Policy], Mapping[str, Adapter]] = build_adapters,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.service = service
        self.alerts = alerts
        self.every = every
        self.build = build
        self.clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._asked = False
        self._thread: threading.Thread | None = None
        # What is in force: the file as it was when the process loaded it.
        self._seen = _stat(self.path)
        try:
            self.digest = digest_of(self.path.read_bytes())
        except OSError:
            self.digest = ""
        self._refused: str | None = None  # the hash of the last version refused
        self._hashed_at = self.clock()

    # ---------------------------------------------------------------- running in a process

    def start(self) -> PolicyReloader:
        """Watch the file on a thread of its own; reload at once on SIGHUP (when called from
        the main thread, where signal handlers are set)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, self._hang_up)
        self._thread = threading.Thread(target=self._run, name="wardkey-policy", daemon=True)
        self._thread.start()
        log.info(
            "event=policy_watch file=%s sha256=%s every=%gs signal=SIGHUP",
            self.path,
            self.digest[:12],
            self.every,
        )
        return self

    def _hang_up(self, _signum: int, _frame: FrameType | None) -> None:
        self._asked = True  # only a flag and a wake-up: the work is done on the thread
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.every)
            self._wake.clear()
            asked, self._asked = self._asked, False
            try:
                if self.check(asked=asked) == "settling":
                    self._wake.wait(SETTLE_SECONDS)
            except Exception:
                log.exception("event=policy_reload_failed file=%s", self.path)

    # ---------------------------------------------------------------------------- a check

    def check(self, asked: bool = False) -> Outcome:
        """Look at the file; reload it if it changed (or if `asked`, as SIGHUP does)."""
        with self._lock:
            seen = _stat(self.path)
            now = self.clock()
            due = now - self._hashed_at >= REHASH_SECONDS
            if not asked and not due and seen == self._seen:
                return "unchanged"
            if not asked and seen is not None and 0 <= now - seen[0] / 1e9 < SETTLE_SECONDS:
                return "settling"  # being written: read it once it is still
            self._seen, self._hashed_at = seen, now
            try:
                data = self.path.read_bytes()
            except OSError as exc:
                reason = f"cannot read the file: {exc.strerror or exc}"
                return self._refuse(f"unreadable:{seen}", Refusal("(file)", reason), asked)
            digest = digest_of(data)
            if digest == self.digest:
                self._refused = None
                if asked:
                    log.info("event=policy_unchanged file=%s sha256=%s", self.path, digest[:12])
                return "unchanged"
            if digest == self._refused and not asked:
                return "refused"  # said once already
            return self._load(data, digest, asked)

    def _load(self, data: bytes, digest: str, asked: bool) -> Outcome:
        old = self.service.policy
        try:
            new = parse_policy(data.decode("utf-8"), str(self.path))
        except UnicodeDecodeError as exc:
            return self._refuse(digest, Refusal("(file)", f"not UTF-8 text: {exc.reason}"), asked)
        except PolicyError as exc:
            first = exc.issues[0]
            return self._refuse(
                digest, Refusal(first.where, first.message, first.line, len(exc.issues)), asked
            )
        removed = self._removed_with_open_requests(old, new)
        if removed is not None:
            return self._refuse(digest, removed, asked)
        try:
            built = self.build(new)
        except AdapterConfigError as exc:
            field, _, reason = str(exc).partition(": ")
            return self._refuse(digest, Refusal(field, reason or field), asked)
        # Targets whose settings did not change keep their adapter (and its connections).
        adapters = {
            name: self.service.adapters[name]
            if name in self.service.adapters and old.targets.get(name) == new.targets.get(name)
            else adapter
            for name, adapter in built.items()
        }
        # The adapters first: a request checked against the new policy finds its target's.
        self.service.adapters = adapters
        self.service.policy = new
        previous, self.digest, self._refused = self.digest, digest, None
        changed = _changed_sections(old, new)
        # Told first, logged after: once every instance has logged it, all have told.
        self._alert(
            new,
            f"policy-loaded:{digest[:40]}",
            f"🔄 WardKey is now using a changed policy file (sha256 `{digest[:12]}`; changed: "
            f"{escape(', '.join(changed) or 'formatting only')}). It was checked before use.",
        )
        log.info(
            "event=policy_reloaded file=%s sha256=%s previous=%s changed=%s targets=%d paths=%d",
            self.path,
            digest[:12],
            previous[:12],
            ",".join(changed) or "-",
            len(new.targets),
            len(new.paths),
        )
        for issue in policy_warnings(new):
            log.warning("event=policy_warning file=%s %s", self.path, issue)
        return "reloaded"

    def _removed_with_open_requests(self, old: Policy, new: Policy) -> Refusal | None:
        removed = sorted(set(old.targets) - set(new.targets))
        if not removed:
            return None
        with self.service.db.read() as session:
            rows = session.execute(
                select(AccessRequest.target, func.count())
                .where(
                    AccessRequest.target.in_(removed),
                    AccessRequest.state.in_([s.value for s in OPEN_STATES]),
                )
                .group_by(AccessRequest.target)
            ).all()
        if not rows:
            return None
        target, count = sorted(rows)[0]
        return Refusal(
            f"targets.{target}",
            f"removed, but {plural(count, 'request')} on it {'is' if count == 1 else 'are'} "
            "still open (pending or holding "
            "access); end them first, or keep the target until they have ended",
            problems=len(rows),
        )

    def _refuse(self, digest: str, refusal: Refusal, asked: bool) -> Outcome:
        again = digest == self._refused
        self._refused = digest
        if not again or asked:
            self._alert(
                self.service.policy,
                f"policy-refused:{digest[:40]}",
                "⚠️ WardKey did not load the changed policy file "
                f"{escape(str(self.path))}: `{_code(refusal.field)}`: {escape(refusal.reason)}"
                + (f" (line {refusal.line})" if refusal.line else "")
                + (
                    f", and {plural(refusal.problems - 1, 'more problem')}"
                    if refusal.problems > 1
                    else ""
                )
                + ". The previous policy stays in force on every instance. Fix the file "
                f"(`wardkey policy check {escape(str(self.path))}` lists every problem).",
            )
        log.error(
            "event=policy_reload_refused file=%s sha256=%s field=%s reason=%s line=%s "
            "problems=%d kept=%s what=the policy in force is unchanged; run `wardkey policy "
            "check %s`",
            self.path,
            digest[:12] if len(digest) == 64 else "-",
            refusal.field,
            json.dumps(refusal.reason, ensure_ascii=False),
            refusal.line or "-",
            refusal.problems,
            self.digest[:12],
            self.path,
        )
        return "refused"

    def _alert(self, policy: Policy, key: str, text: str) -> None:
        if self.alerts is None:
            return
        try:
            self.alerts.enqueue(
                "security",
                [OutCall(POST, {"channel": policy.channels.security_alerts, "text": text})],
                key=key[:100],
            )
        except Exception as exc:  # the log line still says it
            log.warning("event=policy_alert_failed error=%s", type(exc).__name__)
