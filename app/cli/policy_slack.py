"""`wardkey policy check FILE --slack`: every person the policy names (and everyone its directory
groups have now), looked up in Slack.

A rota of people WardKey cannot reach is found before a night shift, not during it: each member
is looked up (`users.lookupByEmail` for an e-mail, `users.info` for a U… ID) and every one that
is unknown, deactivated, a guest, a bot or of another workspace is reported at its place in the
file. Composed above `app.policy`, which stays pure (DESIGN: it imports no Slack code).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from app.directory import SlackProfile, Workspace, slack_unwell
from app.oncall import OnCall
from app.policy import Policy
from app.policy.checks import Location
from app.policy.people import Mention, approver_paths, mentions

# What a Slack error says about the check itself (not about one person), and what to do.
_SETUP = {
    "invalid_auth": "SLACK_BOT_TOKEN was refused by Slack (invalid_auth): copy the Bot User "
    "OAuth Token (xoxb-…) again",
    "not_authed": "SLACK_BOT_TOKEN is not set",
    "account_inactive": "the bot token's app or user is deactivated (account_inactive)",
    "token_revoked": "SLACK_BOT_TOKEN has been revoked: reinstall the app and copy the new one",
    "missing_scope": "the bot token lacks a scope: users:read (and users:read.email for "
    "e-mail look-ups); add them under OAuth & Permissions and reinstall the app",
}


class SlackCheckError(Exception):
    """The check could not ask Slack at all: one line saying what to fix."""


@dataclass
class PersonProblem:
    member: str
    problem: str
    places: list[Mention] = field(default_factory=list)


@dataclass
class SlackCheck:
    looked_up: int = 0
    problems: list[PersonProblem] = field(default_factory=list)
    # group or rota -> the paths left with nobody to approve from it
    nobody_left: dict[Location, list[str]] = field(default_factory=dict)


def check_people(
    policy: Policy, client: WebClient, workspace: Workspace | None = None
) -> SlackCheck:
    """Look up everyone the policy names; `workspace` as SLACK_TEAM_IDS / SLACK_ENTERPRISE_ID
    set it (None: the workspace the bot token belongs to)."""
    places: dict[str, list[Mention]] = defaultdict(list)
    for mention in mentions(policy):
        places[mention.member].append(mention)
    # The people a directory group has now, as read from the directory (their e-mail, and a
    # Slack ID where the directory holds one): someone Slack does not know cannot act.
    for name in policy.directory_groups():
        for member in policy.members_of(name):
            places[member].append(Mention(member, ("groups", name)))
    # The people a rota's source (PagerDuty, Opsgenie, a rostering export) has on call now or
    # later: someone whose e-mail there is not their Slack one never gets the card.
    sourced = policy.on_call_lookup if isinstance(policy.on_call_lookup, OnCall) else None
    for name in sourced.rotas if sourced else []:
        assert sourced is not None
        for member in sourced.people(name):
            places[member].append(Mention(member, ("oncall", name)))
    ours = workspace or Workspace.of_token(_ask(client, "auth.test", client.auth_test))
    result = SlackCheck(looked_up=len(places))
    unusable: set[str] = set()
    for member, where in places.items():
        problem = _problem(client, member, ours)
        if problem is not None:
            unusable.add(member)
            result.problems.append(PersonProblem(member, problem, where))
    for name in policy.groups:
        members = policy.members_of(name)
        if members and set(members) <= unusable:
            result.nobody_left[("groups", name)] = approver_paths(policy, group=name)
    for name, rota in policy.oncall.items():
        people = sourced.people(name) if sourced and rota.source else rota.members
        if people and set(people) <= unusable:
            result.nobody_left[("oncall", name)] = approver_paths(policy, rota=name)
    return result


def _problem(client: WebClient, member: str, workspace: Workspace) -> str | None:
    if "@" in member:
        answer = _ask(
            client,
            "users.lookupByEmail",
            lambda: client.users_lookupByEmail(email=member),
            missing="users_not_found",
        )
        if answer is None:
            return "is not in Slack: no account has this e-mail address"
    else:
        answer = _ask(
            client, "users.info", lambda: client.users_info(user=member), missing="user_not_found"
        )
        if answer is None:
            return "is not in Slack: no account has this ID"
    profile = SlackProfile.from_slack(answer["user"])
    who = f" ({profile.name})" if profile.name and profile.name != member else ""
    if profile.deleted:
        return f"is deactivated in Slack{who}"
    if profile.is_bot:
        return f"is a bot, not a person{who}"
    if profile.restricted:
        return f"is a guest account{who}: guests cannot use WardKey"
    if profile.stranger or not workspace.admits([profile.team_id], profile.enterprise_id):
        return (
            f"is an account of another workspace or organisation{who}: WardKey only acts for "
            "people of its own"
        )
    return None


def _ask(
    client: WebClient, method: str, call: Callable[[], Any], missing: str | None = None
) -> Any:
    """One Web API call; None when Slack says the person is not there (`missing`)."""
    try:
        return call()
    except SlackApiError as exc:
        error = str(exc.response.get("error", ""))
        if missing is not None and error == missing:
            return None
        if slack_unwell(exc):
            raise SlackCheckError(
                f"Slack answered {method} with an error of its own ({error or 'HTTP '}"
                f"{'' if error else exc.response.status_code}); try again later"
            ) from None
        raise SlackCheckError(_SETUP.get(error, f"Slack refused {method}: {error}")) from None
    except OSError as exc:  # urllib's URLError, a time-out, a refused connection
        reason = getattr(exc, "reason", None) or exc
        raise SlackCheckError(
            f"Slack did not answer at {client.base_url}{method} ({reason}); check "
            "SLACK_API_URL and that this machine can reach it (a firewall, or a proxy to set "
            "in HTTPS_PROXY)"
        ) from None
