"""`/jit` and `/breakglass`. Parse and ack at once; the service is called after the ack."""

from __future__ import annotations

from typing import Any

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient

from app.notify.blocks import clock_time, escape, outcome_line
from app.notify.views import no_access_modal, request_modal
from app.policy import format_duration
from app.policy.rules import requestable
from app.service import RequestView
from app.slack.deps import SlackDeps
from app.slack.errors import replying_on_error
from app.slack.parsing import (
    BreakGlass,
    Extend,
    Help,
    ListTargets,
    OpenModal,
    RequestAccess,
    Revoke,
    Status,
    UsageError,
    parse_breakglass,
    parse_jit,
)
from app.store.models import RequestState as S

HELP = (
    "*WardKey: just-in-time access*\n"
    "• `/jit request target:role 30m reason… [TICKET]` ask for access\n"
    "• `/jit status` your requests and access\n"
    "• `/jit extend 42 30m` more time on request 42\n"
    "• `/jit revoke 42` end access now\n"
    "• `/jit targets` what you may ask for\n"
    "• `/breakglass target:role reason…` emergency access now, reviewed afterwards"
)
LIVE = (S.PENDING, S.APPROVED, S.GRANTING, S.ACTIVE, S.REVOKING, S.REVOKE_FAILED)


def register(app: App, deps: SlackDeps) -> None:
    @app.command("/jit")
    def jit(ack: Ack, command: dict[str, Any], respond: Respond, client: WebClient) -> None:
        try:
            parsed = parse_jit(command.get("text", ""))
        except UsageError as exc:
            ack(response_type="ephemeral", text=exc.message)
            return
        if isinstance(parsed, Help):
            ack(response_type="ephemeral", text=HELP)
            return
        ack()
        user_id, team_id = command["user_id"], command.get("team_id")
        if isinstance(parsed, OpenModal):
            trigger_id = command["trigger_id"]

            def open_form() -> None:
                # The trigger_id lives for 3 s: this job is queued straight after the ack.
                with replying_on_error(respond):
                    open_request_form(deps, client, user_id, team_id, trigger_id)

            deps.after_ack(open_form)
            return
        deps.after_ack(lambda: _answer_jit(deps, parsed, user_id, team_id, respond))

    @app.command("/breakglass")
    def breakglass(ack: Ack, command: dict[str, Any], respond: Respond) -> None:
        try:
            parsed: BreakGlass = parse_breakglass(command.get("text", ""))
        except UsageError as exc:
            ack(response_type="ephemeral", text=exc.message)
            return
        ack(response_type="ephemeral", text="Break-glass: granting now…")
        user_id, team_id = command["user_id"], command.get("team_id")
        deps.after_ack(lambda: _break_glass(deps, parsed, user_id, team_id, respond))


def _answer_jit(
    deps: SlackDeps, parsed: object, user_id: str, team_id: str | None, respond: Respond
) -> None:
    """Everything `/jit` does after the ack: the service call, the reply, the notifications."""
    with replying_on_error(respond):
        person = deps.directory.person(user_id, team_id)
        service, notifier = deps.service, deps.notifier
        zone = service.policy.zone
        match parsed:
            case RequestAccess():
                view = service.request(
                    person,
                    parsed.target,
                    parsed.role,
                    parsed.duration,
                    parsed.reason,
                    parsed.ticket,
                )
                respond(
                    response_type="ephemeral",
                    text=(
                        f"Request #{view.id} for `{view.target}:{view.role}` "
                        f"({format_duration(view.requested)}) is with the {view.path} "
                        "approvers. I'll message you when someone decides."
                    ),
                )
                notifier.request_opened(view)
            case Status():
                views = service.requests_of(person, LIVE)
                respond(
                    response_type="ephemeral",
                    text=_status(views, zone) or "You have no open requests and no active access.",
                )
            case ListTargets():
                plans = requestable(service.policy, person, service.clock.now())
                lines = [
                    f"• `{p.target}:{p.role}` ({p.path}, up to "
                    f"{format_duration(p.cap)}{', ticket' if p.ticket_required else ''})"
                    for p in plans
                ]
                respond(
                    response_type="ephemeral",
                    text="\n".join(lines)
                    or "You are not eligible for any access yet; ask your manager.",
                )
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
            case Revoke():
                view = service.revoke(parsed.request_id, person, parsed.reason)
                respond(response_type="ephemeral", text=(f"#{view.id}: {outcome_line(view, zone)}"))
                notifier.request_changed(view)


def _break_glass(
    deps: SlackDeps, parsed: BreakGlass, user_id: str, team_id: str | None, respond: Respond
) -> None:
    with replying_on_error(respond):
        person = deps.directory.person(user_id, team_id)
        view = deps.service.break_glass(person, parsed.target, parsed.role, parsed.reason)
        zone = deps.service.policy.zone
        respond(
            response_type="ephemeral",
            text=(
                f"Break-glass #{view.id}: {outcome_line(view, zone)}. This use will be reviewed."
            ),
        )
        policy = deps.service.policy
        deps.notifier.client.chat_postMessage(
            channel=policy.channels.security_alerts,
            text=(
                f"🔴 Break-glass #{view.id}: {escape(view.requester)} took "
                f"`{view.target}:{view.role}` until {clock_time(view.expires_at, zone)}. "
                f"Reason: {escape(view.reason)}"
            ),
        )


def open_request_form(
    deps: SlackDeps, client: WebClient, user_id: str, team_id: str | None, trigger_id: str
) -> None:
    person = deps.directory.person(user_id, team_id)
    plans = requestable(deps.service.policy, person, deps.service.clock.now())
    view = request_modal(plans) if plans else no_access_modal()
    client.views_open(trigger_id=trigger_id, view=view)


def _status(views: list[RequestView], zone: Any) -> str:
    return "\n".join(f"• #{v.id} `{v.target}:{v.role}`: {outcome_line(v, zone)}" for v in views)
