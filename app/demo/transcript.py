"""Turn what the fake Slack recorded into a conversation a person can read: who said what to
whom, what the cards showed and which buttons they carried."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from app.demo.slack_fake import Call, FakeSlack

# Calls that are plumbing rather than conversation.
QUIET = frozenset(
    {"auth.test", "users.info", "users.lookupByEmail", "conversations.open", "conversations.info"}
)

# A mention or channel link as WardKey writes them: <@U…>, <#C…> (an optional |label after).
_MENTIONS = re.compile(r"<([@#])([UWCG][A-Z0-9]+)(?:\|[^>]*)?>")


def _plain(text: str) -> str:
    return html.unescape(text)


def render_blocks(
    blocks: Iterable[dict[str, Any]], plain: Callable[[str], str] = _plain
) -> list[str]:
    """Block Kit as lines of text: headers, sections, fields, context and buttons."""
    lines: list[str] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "header":
            lines.append(plain(block["text"]["text"]).upper())
        elif kind == "section":
            if block.get("fields"):
                parts = [plain(f["text"]).replace("\n", " ") for f in block["fields"]]
                lines.append(" · ".join(parts))
            if block.get("text"):
                lines.extend(plain(block["text"]["text"]).replace("*Why*\n", "Why: ").splitlines())
        elif kind == "context":
            lines.append(" · ".join(plain(e.get("text", "")) for e in block.get("elements", [])))
        elif kind == "actions":
            buttons = []
            for element in block.get("elements", []):
                label = element.get("text", {}).get("text", element.get("action_id", "?"))
                confirm = " (asks to confirm)" if element.get("confirm") else ""
                buttons.append(f"[{label}]{confirm}")
            lines.append(" ".join(buttons))
        elif kind == "input":
            lines.append(f"{block.get('label', {}).get('text', '')}: ________")
    return lines


class Transcript:
    """Prints each step (who did what, at what time) and then everything WardKey sent."""

    def __init__(
        self,
        fake: FakeSlack,
        out: TextIO,
        names: dict[str, str],
        channels: dict[str, str],
        now: Callable[[], datetime],
        zone: ZoneInfo,
        target_log: list[str] | None = None,
    ) -> None:
        self.fake = fake
        self.out = out
        self.names = names
        self.channels = channels
        self.now = now
        self.zone = zone
        self.target_log = target_log if target_log is not None else []
        self._calls_seen = 0
        self._log_seen = 0
        self._actor = ""

    # ------------------------------------------------------------------------ output

    def _print(self, line: str = "") -> None:
        print(line, file=self.out)

    def _who(self, channel: str) -> str:
        if channel in self.channels:
            return self.channels[channel]
        if channel[:1] in "DU":
            user = "U" + channel[1:]
            return f"{self.names.get(user, user)} (DM)"
        return channel

    def _shown(self, text: str) -> str:
        """Text as Slack shows it: mentions and channel links by name, entities decoded
        (mentions first, so typed text that only looks like one stays as typed)."""

        def name(found: re.Match[str]) -> str:
            if found[1] == "@":
                return "@" + self.names.get(found[2], found[2])
            return self.channels.get(found[2], "#" + found[2])

        return html.unescape(_MENTIONS.sub(name, text))

    def heading(self, text: str) -> None:
        self._print()
        self._print(f"── {text} " + "─" * max(0, 72 - len(text)))

    def note(self, text: str) -> None:
        self._print(f"   ({text})")

    def said(self, user: str, text: str) -> None:
        """`user` typed a slash command."""
        self._actor = user
        self._print(f"{self._clock()}  {self.names.get(user, user)} ▸ {text}")

    def opened_home(self, user: str) -> None:
        self._actor = user
        self._print(f"{self._clock()}  {self.names.get(user, user)} opens WardKey's App Home")

    def clicked(self, user: str, button: str, where: str) -> None:
        self._actor = user
        self._print(f"{self._clock()}  {self.names.get(user, user)} clicks [{button}] {where}")

    def _clock(self) -> str:
        return self.now().astimezone(self.zone).strftime("%H:%M")

    # ------------------------------------------------------------- what WardKey sent

    def flush(self) -> None:
        """Print the calls WardKey made (and what the target did) since the last flush."""
        calls = [c for c in self.fake.calls[self._calls_seen :] if c.status == 200]
        self._calls_seen = len(self.fake.calls)
        pending_updates: list[Call] = []
        last_card: list[Any] | None = None

        def flush_updates() -> None:
            if not pending_updates:
                return
            where = ", ".join(self._who(str(c.args.get("channel", ""))) for c in pending_updates)
            text = self._shown(str(pending_updates[0].args.get("text", "")))
            self._print(f"      WardKey updates the card in place for {where}:")
            self._print(f"        │ {text}")
            pending_updates.clear()

        for call in calls:
            if call.method in QUIET:
                continue
            if call.method == "chat.update":
                if pending_updates and pending_updates[0].args.get("text") != call.args.get("text"):
                    flush_updates()
                pending_updates.append(call)
                continue
            flush_updates()
            if (
                call.method == "chat.postMessage"
                and last_card is not None
                and call.args.get("blocks") == last_card
            ):
                where = self._who(str(call.response.get("channel", "")))
                self._print(f"      WardKey → {where}: the same card")
            else:
                self._render(call)
                last_card = call.args.get("blocks") if call.method == "chat.postMessage" else None
        flush_updates()
        for line in self.target_log[self._log_seen :]:
            self._print(f"      ⚙ {line}")
        self._log_seen = len(self.target_log)

    def _render(self, call: Call) -> None:
        args = call.args
        actor = self.names.get(self._actor, self._actor)
        if call.method == "chat.postMessage":
            self._print(f"      WardKey → {self._who(str(call.response.get('channel', '')))}:")
            lines = render_blocks(args["blocks"], self._shown) if args.get("blocks") else []
            for line in lines or self._shown(str(args.get("text", ""))).splitlines():
                self._print(f"        │ {line}")
        elif call.method == "chat.postEphemeral":
            who = self.names.get(str(args.get("user")), str(args.get("user")))
            self._print(f"      WardKey → {who} (only they see this): {self._shown(args['text'])}")
        elif call.method == "response_url":
            text = self._shown(str(args.get("text", "")))
            replaced = " (in place of its earlier reply)" if args.get("replace_original") else ""
            self._print(f"      WardKey → {actor} (only they see this){replaced}:")
            lines = render_blocks(args["blocks"], self._shown) if args.get("blocks") else []
            for line in lines or text.splitlines():
                self._print(f"        │ {line}")
        elif call.method == "views.publish":
            who = self.names.get(str(args.get("user_id")), str(args.get("user_id")))
            self._print(f"      WardKey draws the App Home of {who}:")
            for line in render_blocks(args.get("view", {}).get("blocks", []), self._shown):
                self._print(f"        │ {line}")
        elif call.method in ("views.open", "views.update"):
            view = args.get("view", {})
            title = view.get("title", {}).get("text", "")
            self._print(f"      WardKey opens a form for {actor}: “{title}”")
            for line in render_blocks(view.get("blocks", []), self._shown):
                self._print(f"        │ {line}")
        else:
            self._print(f"      WardKey calls {call.method}")
