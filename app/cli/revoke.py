"""`wardkey revoke resolve`: an admin closes a failed revoke by hand."""

from __future__ import annotations

import argparse
import sys

from app.cli.common import Commands, starting


def add_commands(commands: Commands) -> None:
    revoke = commands.add_parser("revoke", help="failed revokes").add_subparsers(metavar="ACTION")
    resolve = revoke.add_parser(
        "resolve", help="an admin confirms a failed revoke's access is gone from the target"
    )
    resolve.add_argument("request_id", type=int, help="the request's number (#N)")
    resolve.add_argument("note", help="what you checked or did on the target")
    resolve.add_argument("--by", required=True, metavar="EMAIL", help="your e-mail (an admin)")
    resolve.set_defaults(run=_resolve)


@starting
def _resolve(args: argparse.Namespace) -> int:
    from app.access import AccessService
    from app.cli.configured import configured_policy, open_database
    from app.lifecycle.deps import CoreDeps
    from app.lifecycle.errors import ServiceError
    from app.policy import Person

    # No adapter is called: the person says the access is gone; the audit trail keeps their word.
    service = AccessService(CoreDeps(open_database(), configured_policy(), {}))
    try:
        view = service.resolve_revoke_failure(args.request_id, Person(email=args.by), args.note)
    except ServiceError as exc:
        print(f"wardkey: {exc.message}", file=sys.stderr)
        return 1
    print(f"#{view.id} {view.target}:{view.role} is now {view.state.value}, resolved by {args.by}")
    return 0
