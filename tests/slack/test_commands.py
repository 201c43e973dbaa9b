"""`/jit` in the shell: the first word picks the subcommand a feature added, the rest is its;
what no feature added is answered with the usage, before anything is recorded as work."""

from __future__ import annotations

from typing import Any

import pytest

from app.slack.commands import JitCommands, Slash
from app.slack.parsing import MAX_TEXT, REQUEST_EXAMPLE, UsageError


class Acks:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> None:
        self.calls.append(kwargs)


def jit(commands: JitCommands, text: str) -> list[dict[str, Any]]:
    ack = Acks()
    commands.dispatch(ack, {"text": text}, None, None, None)  # type: ignore[arg-type]
    return ack.calls


def recording(name: str, seen: list[tuple[str, list[str]]]) -> Any:
    def run(slash: Slash) -> None:
        seen.append((name, slash.words))
        slash.ack()

    return run


def test_the_first_word_picks_the_subcommand_and_the_rest_is_its_words() -> None:
    commands, seen = JitCommands(), []
    commands.add("", recording("form", seen))
    commands.add("lockdown", recording("lockdown", seen))
    assert jit(commands, "") == [{}]
    assert jit(commands, '  LockDown pharmacy-db "why"') == [{}]
    assert seen == [("form", []), ("lockdown", ["pharmacy-db", '"why"'])]


def test_a_word_no_feature_added_is_answered_with_the_usage() -> None:
    calls = jit(JitCommands(), "reqest pharmacy-db:read 30m why")
    assert calls == [
        {
            "response_type": "ephemeral",
            "text": "I don't know 'reqest'. Try request, status, cancel, extend, revoke, "
            f"targets or help.\nFor example: `{REQUEST_EXAMPLE}`",
        }
    ]


def test_too_long_is_refused_before_any_subcommand_runs() -> None:
    commands, seen = JitCommands(), []
    commands.add("request", recording("request", seen))
    calls = jit(commands, "request " + "x" * MAX_TEXT)
    assert seen == []
    assert calls[0]["text"].startswith("That is 2,008 characters; keep it under 2,000.")


def test_a_subcommands_usage_error_is_the_ack() -> None:
    commands = JitCommands()

    def extend(slash: Slash) -> None:
        raise UsageError("Give the request number and how much longer.", "/jit extend 42 30m")

    commands.add("extend", extend)
    assert jit(commands, "extend 42") == [
        {
            "response_type": "ephemeral",
            "text": "Give the request number and how much longer.\n"
            "For example: `/jit extend 42 30m`",
        }
    ]


def test_a_subcommand_is_added_once() -> None:
    commands = JitCommands()
    commands.add("standing", recording("standing", []))
    with pytest.raises(ValueError, match="added twice"):
        commands.add("standing", recording("standing", []))
