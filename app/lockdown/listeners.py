"""Lockdown in Slack: `/jit lockdown TARGET "reason"` opens the confirmation dialog (with how
many grants it removes now), its submission locks the target down, and `/jit lockdown lift
TARGET [note]` lifts it.

The lockdown is recorded before the dialog's ack, so a refusal (no longer a security admin, a
reason too short) is shown in the dialog; removing the grants runs after the ack, recorded in the
inbox, so a process that dies mid-way has it finished by another (and the sweep)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from slack_bolt import Ack, App, BoltContext

from app.access import AccessService
from app.blockkit import Names, escape
from app.lockdown.flows import LockdownFlows
from app.lockdown.messages import (
    CONFIRM_VIEW,
    REASON_ACTION,
    REASON_BLOCK,
    already_text,
    confirm_modal,
)
from app.slack.commands import Slash
from app.slack.deps import Shell
from app.slack.gate import person_of
from app.slack.parsing import UsageError, target, unquoted

LOCKDOWN_EXAMPLE = '/jit lockdown pharmacy-db "suspected compromise of the admin account"'
LIFT_EXAMPLE = "/jit lockdown lift pharmacy-db checked with the vendor, safe again"


class Delivers(Protocol):
    def kick(self) -> None:
        """Ask the outbox to deliver what was recorded."""


class Tells(Protocol):
    """The notifier's outbox (to deliver what the lockdown recorded) and how it names people."""

    @property
    def outbox(self) -> Delivers: ...

    @property
    def names(self) -> Names: ...


class Needs(Protocol):
    """What the lockdown's listeners are given (app/listeners.py's ListenerDeps is one)."""

    @property
    def shell(self) -> Shell: ...

    @property
    def service(self) -> AccessService: ...

    @property
    def notifier(self) -> Tells: ...


@dataclass(frozen=True)
class Lockdown:
    """Security admins: revoke every grant on a target and refuse new ones until lifted."""

    target: str
    reason: str


@dataclass(frozen=True)
class LiftLockdown:
    target: str
    note: str


def parse_lockdown(words: list[str]) -> Lockdown | LiftLockdown:
    """The words after `/jit lockdown`: `TARGET reason…` or `lift TARGET [note…]`; a reason in
    quotes is taken without them."""
    if words and words[0].lower() == "lift":
        if len(words) < 2:
            raise UsageError("Name the target whose lockdown to lift.", LIFT_EXAMPLE)
        return LiftLockdown(target(words[1], LIFT_EXAMPLE), unquoted(words[2:]))
    if not words:
        raise UsageError("Name the target to lock down, then say why.", LOCKDOWN_EXAMPLE)
    name = target(words[0], LOCKDOWN_EXAMPLE)
    reason = unquoted(words[1:])
    if not reason:
        raise UsageError(f"Say why {name} is being locked down.", LOCKDOWN_EXAMPLE)
    return Lockdown(name, reason)


def flows(deps: Needs) -> LockdownFlows:
    return LockdownFlows(deps.service, deps.notifier.outbox.kick)


def register(app: App, deps: Needs) -> None:
    shell = deps.shell

    def lockdown(slash: Slash) -> None:
        parsed = parse_lockdown(slash.words)
        slash.ack()
        if isinstance(parsed, Lockdown):
            trigger = slash.command["trigger_id"]
            shell.open_dialog(slash.context, lambda: _confirm(deps, parsed, slash, trigger))
            return
        shell.after_ack(slash.context, lambda: _lift(deps, parsed, slash))

    shell.jit.add("lockdown", lockdown)

    @app.view(CONFIRM_VIEW)
    def confirmed(ack: Ack, view: dict[str, Any], context: BoltContext) -> None:
        target = str(json.loads(view.get("private_metadata") or "{}").get("target", ""))
        values = (view.get("state") or {}).get("values") or {}
        reason = str((values.get(REASON_BLOCK, {}).get(REASON_ACTION) or {}).get("value") or "")
        lockdown = flows(deps).start(person_of(context), target, reason)
        ack()
        shell.after_ack(context, lambda: _run(deps, lockdown.id))


def _confirm(deps: Needs, parsed: Lockdown, slash: Slash, trigger_id: str) -> None:
    """The confirmation dialog, with how many grants the lockdown removes now; a target
    already locked down is answered with how it stands (a second lockdown changes nothing)."""
    context = slash.context
    preview = flows(deps).preview(person_of(context), parsed.target)
    if preview.in_force is not None:
        found = preview.in_force
        progress = flows(deps).lockdowns.progress(found.id)
        zone, names = deps.service.policy.zone, deps.notifier.names
        slash.respond(response_type="ephemeral", text=already_text(found, progress, zone, names))
        return
    context.client.views_open(trigger_id=trigger_id, view=confirm_modal(preview, parsed.reason))


def _lift(deps: Needs, parsed: LiftLockdown, slash: Slash) -> None:
    lifted = flows(deps).lift(person_of(slash.context), parsed.target, parsed.note)
    slash.respond(
        response_type="ephemeral",
        text=(
            f"🔓 Lockdown of `{escape(lifted.target)}` lifted: people may ask for it "
            "again. The security channel has been told."
        ),
    )


def _run(deps: Needs, lockdown_id: int) -> None:
    flows(deps).run(lockdown_id)
