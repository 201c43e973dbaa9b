"""`/jit`: the shell reads the first word and hands the rest to the subcommand a feature added
for it (`JitCommands.add`, when the feature's listeners register); `/jit` with no text is the
subcommand named "". A subcommand parses its words and acks; a UsageError it raises before the
ack is the ack's answer, with the example it names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slack_bolt import Ack, BoltContext, Respond
from slack_sdk import WebClient

from app.slack.parsing import REQUEST_EXAMPLE, UsageError, clean


@dataclass(frozen=True)
class Slash:
    """One `/jit` as its subcommand gets it: the words after the subcommand's name, and what
    Bolt gave the command's listener."""

    words: list[str]
    ack: Ack
    command: dict[str, Any]
    respond: Respond
    client: WebClient
    context: BoltContext


Subcommand = Callable[[Slash], None]


class JitCommands:
    """`/jit`'s subcommands by name."""

    def __init__(self) -> None:
        self._subcommands: dict[str, Subcommand] = {}

    def add(self, name: str, run: Subcommand) -> None:
        if name in self._subcommands:
            raise ValueError(f"/jit {name} is added twice")
        self._subcommands[name] = run

    def dispatch(
        self,
        ack: Ack,
        command: dict[str, Any],
        respond: Respond,
        client: WebClient,
        context: BoltContext,
    ) -> None:
        try:
            words = clean(command.get("text", ""), REQUEST_EXAMPLE).split()
            name, rest = (words[0].lower(), words[1:]) if words else ("", [])
            run = self._subcommands.get(name)
            if run is None:
                raise UsageError(
                    f"I don't know '{words[0][:40] if words else ''}'. Try request, status, "
                    "cancel, extend, revoke, targets or help.",
                    REQUEST_EXAMPLE,
                )
            run(Slash(rest, ack, command, respond, client, context))
        except UsageError as exc:
            ack(response_type="ephemeral", text=exc.message)
