"""`wardkey report standing`: governance reports."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime

from app.cli.common import Commands, clock_of, starting
from app.startup import StartupError
from app.wording import plural


def add_commands(commands: Commands) -> None:
    report = commands.add_parser("report", help="governance reports").add_subparsers(
        metavar="REPORT"
    )
    standing = report.add_parser(
        "standing",
        help="who holds access on each target without an active grant (standing privilege)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit codes:\n"
        "  0  every target was read (now, or with --no-look within the last two hours)\n"
        "  3  some targets were not checked: they are named, with their last full read;\n"
        "     the report says nothing about them\n"
        "  2  cannot start (settings, policy, database)",
    )
    standing.add_argument(
        "--no-look",
        action="store_true",
        help="print what the last look found, without reading the targets now",
    )
    standing.add_argument(
        "--format",
        choices=["text", "csv"],
        default="text",
        help="text: per target and entitlement, with the targets read and not checked; csv: "
        "one row per account (targets not checked go to standard error)",
    )
    standing.set_defaults(run=_standing)


@starting
def _standing(args: argparse.Namespace) -> int:
    """Per target and entitlement, the accounts holding access with no active grant: read from
    the targets now (and recorded, as the hourly check does), or as last recorded. Never says
    clean for a target it did not read: those are named, with their last full read."""
    from app.access import AccessService
    from app.adapters.registry import AdapterConfigError, build_adapters
    from app.cli.configured import configured_policy, open_database
    from app.lifecycle.deps import CoreDeps
    from app.standing.service import StandingService, write_csv

    policy = configured_policy()
    try:
        adapters = {} if args.no_look else build_adapters(policy)
    except AdapterConfigError as exc:
        raise StartupError(str(exc)) from None
    clock = clock_of(args)
    standing = StandingService(AccessService(CoreDeps(open_database(), policy, adapters, clock)))
    why_not: dict[str, str] = {}
    if not args.no_look:
        looked = standing.find_standing()
        for target in policy.targets:
            if target not in adapters:
                why_not[target] = "WardKey has no way to read this kind of target"
            elif target in looked.unreadable:
                why_not[target] = f"could not read it now ({looked.unreadable[target]})"
    last = standing.standing_looks()
    for target, at in standing.unchecked_targets().items():
        if target not in why_not:
            # --no-look: a look older than two hourly checks is no evidence of now
            why_not[target] = "no recent look" if at is not None else "never read"
    holders = standing.standing_holders()
    zone = policy.zone

    def when(at: datetime | None) -> str:
        return f"{at.astimezone(zone):%Y-%m-%d %H:%M}" if at is not None else "never"

    unchecked = [
        f"{target}: not checked: {why}; last full read {when(last.get(target))}"
        for target, why in sorted(why_not.items())
    ]
    checked = sorted(t for t in policy.targets if t not in why_not)
    if args.format == "csv":
        write_csv(holders, sys.stdout)
        for line in unchecked:  # standard output stays CSV; the exit code says it is partial
            print(f"wardkey: {line}", file=sys.stderr)
        return STANDING_PARTIAL if unchecked else 0
    current = None
    for h in holders:
        if (h.target, h.entitlement) != current:
            current = (h.target, h.entitlement)
            print(f"{h.target}  {h.entitlement}")
        print(
            f"    {h.account:<32} since {h.first_seen.astimezone(zone):%Y-%m-%d %H:%M}, "
            f"seen {h.last_seen.astimezone(zone):%Y-%m-%d %H:%M}"
        )
    if holders:
        print(
            f"{plural(len(holders), 'account')} {'holds' if len(holders) == 1 else 'hold'} "
            "access without a WardKey grant."
        )
    elif not unchecked:
        print("No standing access: every account holding access on a target has a grant.")
    elif checked:
        print(f"No standing access on the targets checked ({', '.join(checked)}).")
    if checked:
        print(
            "Targets read: "
            + ", ".join(f"{t} ({when(last.get(t))})" for t in checked)
            + f" (times in {policy.timezone})"
        )
    if unchecked:
        print(f"NOT CHECKED: {plural(len(unchecked), 'target')}; nothing is known of them:")
        for line in unchecked:
            print(f"    {line}")
    return STANDING_PARTIAL if unchecked else 0


STANDING_PARTIAL = 3  # as audit verify: nothing more was found, but not everything was checked
