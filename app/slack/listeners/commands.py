"""`/jit` and `/breakglass`. Parse and ack at once; the service is called after the ack."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from slack_bolt import Ack, App, BoltContext, Respond
from slack_sdk import WebClient
from slack_sdk.models.blocks import Block

from app.lifecycle.errors import InvalidRequest
from app.lifecycle.snapshots import RequestView
from app.lockdown.listeners import flows as lockdown_flows
from app.lockdown.messages import already_text, confirm_modal
from app.messages.blocks import (
    clock_time,
    contract_line,
    escape,
    outcome_line,
    requester_receipt,
)
from app.messages.views import no_access_modal, request_modal
from app.policy import Person, Policy, format_duration
from app.policy.rules import requestable
from app.slack.deps import OPENED, Progress, SlackDeps
from app.slack.gate import person_of
from app.slack.parsing import (
    IDENTITY_EXAMPLE,
    BreakGlass,
    Cancel,
    Extend,
    Help,
    LiftLockdown,
    ListTargets,
    Lockdown,
    OpenModal,
    RequestAccess,
    Revoke,
    Standing,
    Status,
    UsageError,
    parse_breakglass,
    parse_jit,
)
from app.standing.messages import holders_text
from app.store.models import RequestState
from app.wording import listed

HELP = (
    "*WardKey: just-in-time access*\n"
    "• `/jit request target:role 30m reason… [TICKET]` ask for access\n"
    "• `/jit status` your requests and access\n"
    "• `/jit cancel 42` withdraw request 42 while it waits for approval\n"
    "• `/jit extend 42 30m` more time on request 42\n"
    "• `/jit revoke 42` end access now\n"
    "• `/jit targets` what you may ask for\n"
    "• `/jit request … for svc-name` elevate a service account you own\n"
    "• `/jit standing` (admins) access held without a grant\n"
    '• `/jit lockdown target "reason"` (security admins) remove all access to a target now '
    "and refuse new access until `/jit lockdown lift target`\n"
    "• `/breakglass target:role reason…` emergency access now, reviewed afterwards"
)
BREAK_GLASS_ACK = (
    "Break-glass request recorded. I'll answer here as soon as access is active, or say why not."
)
LIVE = (
    RequestState.PENDING,
    RequestState.APPROVED,
    RequestState.GRANTING,
    RequestState.ACTIVE,
    RequestState.REVOKING,
    RequestState.REVOKE_FAILED,
)


def register(app: App, deps: SlackDeps) -> None:
    @app.command("/jit")
    def jit(
        ack: Ack,
        command: dict[str, Any],
        respond: Respond,
        client: WebClient,
        context: BoltContext,
    ) -> None:
        try:
            parsed = parse_jit(command.get("text", ""))
        except UsageError as exc:
            ack(response_type="ephemeral", text=exc.message)
            return
        if isinstance(parsed, Help):
            ack(response_type="ephemeral", text=HELP)
            return
        ack()
        if isinstance(parsed, Lockdown):
            trigger = command["trigger_id"]
            deps.open_dialog(
                context, lambda: _confirm_lockdown(deps, parsed, context, respond, trigger)
            )
            return
        if isinstance(parsed, OpenModal):
            trigger_id = command["trigger_id"]

            def open_form() -> None:
                open_request_form(deps, client, person_of(context), trigger_id)

            deps.open_dialog(context, open_form)
            return
        progress = deps.progress()  # read here, on the dispatching thread
        deps.after_ack(context, lambda: _answer_jit(deps, parsed, context, respond, progress))

    @app.command("/breakglass")
    def breakglass(
        ack: Ack, command: dict[str, Any], respond: Respond, context: BoltContext
    ) -> None:
        try:
            parsed: BreakGlass = parse_breakglass(command.get("text", ""))
        except UsageError as exc:
            ack(response_type="ephemeral", text=exc.message)
            return
        # Only what is true now: the request is recorded (the inbox row), nothing decided.
        ack(response_type="ephemeral", text=BREAK_GLASS_ACK)
        deps.after_ack(context, lambda: _break_glass(deps, parsed, context, respond))


def _answer_jit(
    deps: SlackDeps, parsed: object, context: BoltContext, respond: Respond, progress: Progress
) -> None:
    """Everything `/jit` does after the ack: the service call, the reply, the notifications."""
    person = person_of(context)
    service, notifier = deps.service, deps.notifier
    zone = service.policy.zone
    match parsed:
        case RequestAccess():
            if progress.outcome and progress.outcome.startswith(OPENED):
                # Redelivered after a crash: the request was made by the first try (its
                # cards are in the outbox with it); answer about it, not "already open".
                view = service.get(int(progress.outcome.removeprefix(OPENED)))
            else:
                identity, reason = _identity_and_reason(service.policy, parsed)
                view = service.request(
                    person,
                    parsed.target,
                    parsed.role,
                    parsed.duration,
                    reason,
                    parsed.ticket,
                    identity=identity,
                )
                progress.step(f"{OPENED}{view.id}")
            text, blocks = requester_receipt(view, zone)  # with Cancel while it waits
            respond(response_type="ephemeral", text=text, blocks=_json(blocks))
            notifier.request_opened(view)
        case Status():
            views = service.requests_of(person, LIVE)
            text = _status(views, zone) or "You have no open requests and no active access."
            respond(response_type="ephemeral", text=_with_contract(deps, person, text))
        case Standing():
            holders = deps.standing.standing_holders(person)
            unchecked = deps.standing.unchecked_targets()
            respond(response_type="ephemeral", text=holders_text(holders, unchecked, zone))
        case ListTargets():
            plans = requestable(service.policy, person, service.clock.now())
            lines = [
                f"• `{p.target}:{p.role}` ({p.path}, up to "
                f"{format_duration(p.cap)}{', ticket' if p.ticket_required else ''})"
                for p in plans
            ]
            text = "\n".join(lines) or "You are not eligible for any access yet; ask your manager."
            respond(response_type="ephemeral", text=_with_contract(deps, person, text))
        case Extend():
            view = service.extend(parsed.request_id, person, parsed.duration)
            if view.extension is not None:
                respond(
                    response_type="ephemeral",
                    text=(
                        f"Extension of #{view.id} by {format_duration(view.extension)} is "
                        f"with the {view.path} approvers; your access carries on meanwhile."
                    ),
                )
                notifier.request_opened(view)
            else:
                respond(
                    response_type="ephemeral",
                    text=(f"#{view.id} now ends at {clock_time(view.expires_at, zone)}."),
                )
        case Cancel():
            view = service.cancel(parsed.request_id, person, parsed.reason)
            respond(response_type="ephemeral", text=cancelled_text(view))
            notifier.request_changed(view)
        case Revoke():
            view = service.revoke(parsed.request_id, person, parsed.reason)
            respond(response_type="ephemeral", text=(f"#{view.id}: {outcome_line(view, zone)}"))
            notifier.request_changed(view)
        case LiftLockdown():
            lifted = lockdown_flows(deps).lift(person, parsed.target, parsed.note)
            respond(
                response_type="ephemeral",
                text=(
                    f"🔓 Lockdown of `{escape(lifted.target)}` lifted: people may ask for it "
                    "again. The security channel has been told."
                ),
            )


def _break_glass(
    deps: SlackDeps, parsed: BreakGlass, context: BoltContext, respond: Respond
) -> None:
    view = deps.service.break_glass(person_of(context), parsed.target, parsed.role, parsed.reason)
    zone = deps.service.policy.zone
    if view.state == RequestState.PENDING:  # held for a second person (app/service/breakglass.py)
        respond(response_type="ephemeral", text=held_text(deps, view))
        deps.notifier.break_glass_started(view)
        return
    text = f"Break-glass #{view.id}: {outcome_line(view, zone)}. This use will be reviewed."
    replaced = deps.service.replaced_request(view.id)
    if replaced is not None:
        text += (
            f" It replaces your request #{replaced[0]}, waiting since "
            f"{clock_time(replaced[1], zone)}, which is now cancelled; its approvers' "
            "cards will say so."
        )
    respond(response_type="ephemeral", text=text)
    deps.notifier.break_glass_started(view)


def held_text(deps: SlackDeps, view: RequestView) -> str:
    """What the person who broke glass is told at once when it needs a second person."""
    start = deps.service.break_glass_start(view.id)
    names = deps.notifier.names
    asked = listed([names.person(m, m) for m in start.confirmers], "or")
    return (
        f"Break-glass #{view.id} needs a second person before access is given: "
        f"{escape('; '.join(start.held_for))}. I have asked {asked} to confirm it in Slack; "
        "the first to confirm grants it at once, and I will message you the moment it is "
        "active. The security team can see the wait."
    )


def _confirm_lockdown(
    deps: SlackDeps, parsed: Lockdown, context: BoltContext, respond: Respond, trigger_id: str
) -> None:
    """The confirmation dialog, with how many grants the lockdown removes now; a target
    already locked down is answered with how it stands (a second lockdown changes nothing)."""
    preview = lockdown_flows(deps).preview(person_of(context), parsed.target)
    if preview.in_force is not None:
        found = preview.in_force
        progress = lockdown_flows(deps).lockdowns.progress(found.id)
        zone, names = deps.service.policy.zone, deps.notifier.names
        respond(response_type="ephemeral", text=already_text(found, progress, zone, names))
        return
    context.client.views_open(trigger_id=trigger_id, view=confirm_modal(preview, parsed.reason))


def open_request_form(deps: SlackDeps, client: WebClient, person: Person, trigger_id: str) -> None:
    plans = requestable(deps.service.policy, person, deps.service.clock.now())
    view = request_modal(plans) if plans else no_access_modal()
    client.views_open(trigger_id=trigger_id, view=view)


def _identity_and_reason(policy: Policy, parsed: RequestAccess) -> tuple[str | None, str]:
    """`… for svc-x` names a service account when the policy has one by that name; a name
    that looks like one but is not is refused rather than read as part of the reason."""
    name = parsed.for_identity
    if name is None:
        return None, parsed.reason
    if name in policy.identities:
        return name, parsed.reason
    if name.lower().startswith("svc"):
        raise InvalidRequest(
            f"There is no service account called '{name[:60]}'. For example: `{IDENTITY_EXAMPLE}`"
        )
    return None, f"{parsed.reason} for {name}"


def _with_contract(deps: SlackDeps, person: Person, text: str) -> str:
    line = contract_line(deps.service.policy, person, deps.service.clock.now())
    return f"{text}\n{line}" if line else text


def cancelled_text(view: RequestView) -> str:
    """What the requester is told when their cancel went through."""
    return (
        f"Request #{view.id} for `{view.target}:{view.role}` is cancelled: nothing was granted, "
        "and its approvers' cards will show that you cancelled it."
    )


def _json(blocks: Sequence[Block]) -> list[dict[str, Any]]:
    return [b.to_dict() for b in blocks]


def _status(views: list[RequestView], zone: Any) -> str:
    return "\n".join(f"• #{v.id} `{v.target}:{v.role}`: {outcome_line(v, zone)}" for v in views)
