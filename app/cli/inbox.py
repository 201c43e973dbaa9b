"""`wardkey inbox`: acknowledged Slack requests whose work is not done, and an admin's way to
end one that can never be done (its work fails on every try, say after a bug)."""

from __future__ import annotations

import argparse
import sys

from app.cli.common import Commands, starting


def add_commands(commands: Commands) -> None:
    inbox = commands.add_parser(
        "inbox", help="acknowledged Slack requests not yet done"
    ).add_subparsers(metavar="ACTION")
    inbox.add_parser(
        "list", help="each one, oldest first: what it is, how long it waited, its tries"
    ).set_defaults(run=_list)
    give_up = inbox.add_parser(
        "give-up", help="an admin ends one that cannot be done (audited); the person is not told"
    )
    give_up.add_argument("key", help="its key, as `wardkey inbox list` prints it")
    give_up.add_argument("note", help="why it cannot be done, and what you told the person")
    give_up.add_argument("--by", required=True, metavar="EMAIL", help="your e-mail (an admin)")
    give_up.set_defaults(run=_give_up)


@starting
def _list(args: argparse.Namespace) -> int:
    from app.cli.configured import open_database
    from app.slack.intake import Intake
    from app.wording import plural

    waiting = Intake(open_database()).unfinished()
    for item in waiting:
        doing = "being done now" if item.running else plural(item.attempts, "try", "tries")
        minutes = round(item.waited.total_seconds() / 60)
        print(f"{item.key}  {item.what}  waited {plural(minutes, 'minute')}  {doing}")
    print(
        plural(len(waiting), "acknowledged request", zero="No acknowledged request")
        + " not yet done"
    )
    return 0


@starting
def _give_up(args: argparse.Namespace) -> int:
    from app.cli.configured import configured_policy, open_database
    from app.lifecycle.errors import InvalidRequest
    from app.lifecycle.validation import clean_note
    from app.policy import Person, person_key, rules
    from app.slack.intake import Intake
    from app.wording import plural

    policy = configured_policy()
    person = Person(email=args.by)
    if not rules.is_admin(policy, person):
        print("wardkey: only a WardKey admin can give up an acknowledged request", file=sys.stderr)
        return 1
    try:
        note = clean_note(args.note, "Say why it cannot be done, in a few words.")
    except InvalidRequest as exc:
        print(f"wardkey: {exc.message}", file=sys.stderr)
        return 1
    given_up = Intake(open_database()).give_up(args.key, person_key(policy, person), note)
    if given_up is None:
        print(
            "wardkey: no such request waiting, or a process is doing it right now (try again "
            "in a minute)",
            file=sys.stderr,
        )
        return 1
    tries = plural(given_up.attempts, "try", "tries")
    print(f"given up: {given_up.what}, after {tries}; recorded in the audit trail")
    return 0
