"""`wardkey audit verify|export|checkpoint`: the audit trail."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from app.cli.common import Commands, clock_of, starting, write_output

# `audit export --format`: app.audit.FORMATS, which a test keeps the same; named here so that
# the help does not load the audit trail (and with it the store).
EXPORT_FORMATS = ("jsonl", "csv", "fhir")


def add_commands(commands: Commands) -> None:
    trail = commands.add_parser("audit", help="the audit trail").add_subparsers(metavar="ACTION")
    verify = trail.add_parser("verify", help="recompute the hash chain; name the first break")
    verify.add_argument(
        "--checkpoint",
        type=Path,
        help="a checkpoint file from `audit checkpoint`, or the directory of scheduled ones "
        "(the valid one with the highest sequence number is used; default "
        "WARDKEY_CHECKPOINT_DIR): finds a cut-off tail; signatures are checked with "
        "WARDKEY_CHECKPOINT_KEY",
    )
    verify.set_defaults(run=_verify)
    export = trail.add_parser(
        "export", help="write events for a SIEM (jsonl), a spreadsheet (csv) or FHIR (fhir)"
    )
    export.add_argument(
        "--format",
        choices=list(EXPORT_FORMATS),
        default="jsonl",
        help="jsonl: one event per line; csv: a header and one row per event; fhir: FHIR R4 "
        "AuditEvent resources as NDJSON",
    )
    export.add_argument("--since", type=_instant, help="only events at or after (ISO 8601)")
    export.add_argument("--output", type=Path, help="file to write (default: standard output)")
    export.set_defaults(run=_export)
    checkpoint = trail.add_parser(
        "checkpoint", help="print the chain head (sequence and hash) to keep off this machine"
    )
    checkpoint.add_argument("--output", type=Path, help="file to write (default: standard output)")
    checkpoint.set_defaults(run=_checkpoint)


def _instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not an ISO 8601 time, e.g. 2026-11-01T00:00Z"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@starting
def _verify(args: argparse.Namespace) -> int:
    """Exit 0 when everything checked holds, 1 when tampering is found (chain, tail or a
    checkpoint file), 3 when nothing is found but a cut tail cannot be ruled out (no or stale
    checkpoint), 2 when it cannot start."""
    from app import audit
    from app.cli.configured import open_database
    from app.config import Settings

    settings = Settings()
    place = args.checkpoint
    if place is None and settings.wardkey_checkpoint_dir:
        place = Path(settings.wardkey_checkpoint_dir)  # the scheduled ones, where configured
    key = settings.wardkey_checkpoint_key
    try:
        report = audit.check_trail(
            open_database(),
            checkpoints=place,
            key=key.encode() if key else None,
            clock=clock_of(args),
            every=timedelta(seconds=settings.wardkey_checkpoint_seconds),
        )
    except audit.CheckpointSetupError as exc:
        print(f"wardkey: {exc}", file=sys.stderr)
        return 2
    print(report.text())
    return report.exit_code


@starting
def _export(args: argparse.Namespace) -> int:
    from app import audit
    from app.cli.configured import open_database

    db = open_database()
    try:
        if args.output is None:
            count = audit.export(db, sys.stdout, args.format, since=args.since)
        else:
            with args.output.open("w", encoding="utf-8", newline="") as out:
                count = audit.export(db, out, args.format, since=args.since)
    except audit.ExportError as exc:  # a corrupt event: say which, and that verify names it
        print(f"wardkey: {exc}", file=sys.stderr)
        return 1
    print(f"exported {count} events", file=sys.stderr)
    return 0


@starting
def _checkpoint(args: argparse.Namespace) -> int:
    from app import audit
    from app.cli.configured import open_database
    from app.config import Settings

    key = Settings().wardkey_checkpoint_key
    checkpoint = audit.current_checkpoint(
        open_database(), key.encode() if key else None, clock_of(args)
    )
    if checkpoint is None:
        print("the audit trail is empty; nothing to checkpoint", file=sys.stderr)
        return 1
    return write_output(checkpoint.to_json() + "\n", args.output)
