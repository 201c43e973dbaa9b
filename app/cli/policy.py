"""`wardkey policy check FILE [--slack]` and `wardkey policy schema`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from app.cli.common import Commands, write_output
from app.clock import SystemClock
from app.wording import plural

if TYPE_CHECKING:
    from app.policy import Policy
    from app.policy.model import TicketSystem


def add_commands(commands: Commands) -> None:
    policy = commands.add_parser(
        "policy", help="check a policy manifest, or print its JSON Schema"
    ).add_subparsers(metavar="ACTION")
    check = policy.add_parser(
        "check",
        help="validate a manifest and print a summary",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit codes:\n"
        "  0  the manifest is valid (and with --slack, everyone it names is a usable account)\n"
        "  1  problems found: each is listed with its place and line\n"
        "  2  --slack could not ask Slack (token, address, scopes)",
    )
    check.add_argument("file", type=Path, help="the policy manifest (YAML) to check")
    check.add_argument(
        "--slack",
        action="store_true",
        help="also look up every person the policy names in Slack (SLACK_BOT_TOKEN, "
        "SLACK_API_URL) and report the unknown, deactivated, guest and bot accounts",
    )
    check.set_defaults(run=_check)
    schema = policy.add_parser(
        "schema",
        help="print the manifest's JSON Schema, for editors that check policy.yaml as you type",
    )
    schema.add_argument("--output", type=Path, help="file to write (default: standard output)")
    schema.set_defaults(run=_schema)


def _check(args: argparse.Namespace) -> int:
    from app.policy import PolicyError
    from app.policy_targets import load_policy, policy_warnings  # and every adapter's checks

    try:
        policy = load_policy(args.file)
    except PolicyError as exc:
        print(f"{exc.source}: {plural(len(exc.issues), 'problem')}", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        if not exc.complete:
            print(
                "Names, caps and approval rules are checked once these are fixed.", file=sys.stderr
            )
        return 1
    for issue in policy_warnings(policy):
        print(f"warning: {issue}", file=sys.stderr)
    print("OK")
    print_summary(policy, sys.stdout)
    if args.slack:
        return _people_in_slack(policy, args.file)
    return 0


def _people_in_slack(policy: Policy, file: Path) -> int:
    """`policy check --slack`: everyone the policy names, looked up in Slack; each unusable
    account at its place in the file. 0: all usable; 1: some are not; 2: Slack not asked."""
    from app.cli.policy_slack import SlackCheckError, check_people
    from app.config import Settings
    from app.directory import Workspace
    from app.policy.loader import LineIndex
    from app.slack.app import web_client
    from app.startup import MISSING

    settings = Settings()
    if not settings.slack_bot_token:
        print(f"wardkey: {MISSING['slack_bot_token']}", file=sys.stderr)
        return 2
    client = web_client(settings.slack_bot_token, settings.slack_api_url)
    workspace = Workspace.configured(settings.slack_team_ids, settings.slack_enterprise_id)
    sdk = logging.getLogger("slack_sdk")
    level = sdk.level
    sdk.setLevel(logging.CRITICAL)  # a line per retried call would bury the answer
    try:
        found = check_people(policy, client, workspace)
    except SlackCheckError as exc:
        print(f"wardkey: {exc}", file=sys.stderr)
        return 2
    finally:
        sdk.setLevel(level)
    lines = LineIndex.of(file.read_text(encoding="utf-8"))
    people = plural(found.looked_up, "account")
    if not found.problems and not found.nobody_left:
        print(f"Slack: all {people} the policy names are active people of this workspace.")
        return 0
    print(f"Slack: {people} looked up; {len(found.problems)} cannot use WardKey (below).")
    print(
        f"{file}: {plural(len(found.problems), 'account')} WardKey cannot act for", file=sys.stderr
    )
    for problem in found.problems:
        for place in problem.places:
            where = ".".join(str(part) for part in place.loc)
            print(
                f"  {where}: {problem.member} {problem.problem} (line {lines.key_line(place.loc)})",
                file=sys.stderr,
            )
    for loc, paths in found.nobody_left.items():
        kind = "group" if loc[0] == "groups" else "rota"
        relies = f"; {', '.join(paths)} would find no approver from it" if paths else ""
        print(
            f"  {'.'.join(map(str, loc))}: nobody in this {kind} can act in Slack{relies} "
            f"(line {lines.key_line(loc)})",
            file=sys.stderr,
        )
    return 1


def _schema(args: argparse.Namespace) -> int:
    from app.policy.model import policy_schema

    text = json.dumps(policy_schema(), indent=2, ensure_ascii=False) + "\n"
    return write_output(text, args.output)


def print_summary(policy: Policy, out: TextIO) -> None:
    from app.groups import describe as describe_group
    from app.oncall import describe as describe_rota
    from app.policy import format_duration
    from app.policy.rules import approvers_at

    now = SystemClock().now()
    print(f"{policy.organisation or 'Policy'} ({policy.timezone})", file=out)
    print(
        f"  {plural(len(policy.groups), 'group')}, {plural(len(policy.oncall), 'rota')}, "
        f"{plural(len(policy.targets), 'target')}, "
        f"{plural(sum(len(t.roles) for t in policy.targets.values()), 'role')}, "
        f"{plural(len(policy.identities), 'service account')}, "
        f"{plural(len(policy.vendors), 'vendor')}",
        file=out,
    )
    print("  paths:", file=out)
    for name, path in policy.paths.items():
        who = ", ".join(
            f"group {s.group}" if s.group else f"rota {s.rota}"
            for s in (path.approvers or path.reviewers)
        )
        rule = (
            f"reviewed by {who} within {format_duration(path.review_within)}"
            if path.review_within
            else f"{path.approvals} of {who}"
        )
        ticket = ", ticket" if path.ticket_required else ""
        if path.ticket is not None:
            ticket = f", ticket checked in {path.ticket.system}"
        print(
            f"    {name:<12} {path.risk:<8} max {format_duration(path.max_duration):<6} "
            f"{rule}{ticket}",
            file=out,
        )
    print("  targets:", file=out)
    for name, target in policy.targets.items():
        roles = ", ".join(
            f"{r}→{role.path}{' (break-glass)' if role.break_glass else ''}"
            for r, role in target.roles.items()
        )
        print(f"    {name:<20} {target.kind:<8} {roles}", file=out)
    if policy.oncall:
        print("  on call now:", file=out)
        for name in policy.paths:
            people = approvers_at(policy, name, now)
            if people and any(s.rota for s in policy.paths[name].approvers):
                print(f"    {name:<12} {', '.join(people)}", file=out)
        print("  rotas:", file=out)
        for name in policy.oncall:
            print(f"    {name:<20} {describe_rota(policy, name)}", file=out)
    if policy.directory_groups():
        print("  groups from the directory:", file=out)
        for name in policy.directory_groups():
            print(f"    {name:<20} {describe_group(policy, name)}", file=out)
    for name, vendor in policy.vendors.items():
        print(f"  vendor {name}: {vendor.company}, contract ends {vendor.contract_end}", file=out)
    if policy.ticket_systems:
        print("  ticket systems:", file=out)
        for name, system in policy.ticket_systems.items():
            print(f"    {name:<20} {describe_ticket_system(policy, name, system)}", file=out)


def describe_ticket_system(policy: Policy, name: str, system: TicketSystem) -> str:
    """'ServiceNow https://trust.service-now.com, table incident, basic auth; clinical (open,
    assigned to the requester or their group; access ends with the ticket; notes)'."""
    if system.servicenow is not None:
        sn = system.servicenow
        where = f"{sn.instance_url}, table {sn.table}"
        auth = "OAuth token" if sn.token_env else "basic auth"
    else:
        assert system.jira is not None
        where = f"{system.jira.url}, REST API v{system.jira.api_version}"
        auth = "API token" if system.jira.email_env else "bearer token"
    rules = {
        "any": "open",
        "requester": "open, assigned to the requester",
        "requester_or_group": "open, assigned to the requester or their group",
    }
    uses = []
    for path_name, path in policy.paths.items():
        if path.ticket is None or path.ticket.system != name:
            continue
        more = [rules[path.ticket.assigned]]
        if path.ticket.ends_access:
            more.append("access ends with the ticket")
        if path.ticket.notes:
            more.append("notes on the ticket")
        if path.ticket.when_down == "approver_checks":
            more.append("approvers check it when it does not answer")
        uses.append(f"{path_name} ({'; '.join(more)})")
    used = "; ".join(uses) if uses else "no path uses it"
    return f"{system.label} {where}, {auth}; {used}"
