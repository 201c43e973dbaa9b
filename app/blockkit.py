"""How WardKey puts words into Slack: mrkdwn made safe (names WardKey chose escaped, words
people typed made inert and quoted), people and channels shown by name, and the one dialog
shape several features use to ask why. Every feature's messages.py builds on these; they know
nothing of requests, grants or any feature."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from slack_sdk.models.blocks import MarkdownTextObject

if TYPE_CHECKING:
    from app.directory import SlackDirectory


def escape(text: str) -> str:
    """Text shown as mrkdwn: never a mention, link or channel ping (`<!channel>`). For names
    WardKey or the policy chose; words people typed go through `inert`."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# Characters that change how text looks without being seen: controls, zero-width and direction
# marks (a right-to-left override can make a reason read backwards on the card).
_HIDDEN = re.compile("[\x00-\x09\x0b-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")
# mrkdwn's formatting characters, as look-alikes Slack does not format: Slack has no escape.
_LOOK_ALIKES = str.maketrans({"*": "\u2217", "_": "\u02cd", "~": "\u223c", "`": "\u02cb"})
# What Slack turns into a link by itself: `scheme://` and dotted names (example.com, e-mails).
_SCHEME = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*):/+")
_DOT_IN_NAME = re.compile(r"(?i)(?<=[a-z0-9-])\.(?=[a-z][a-z0-9-])")
_MENTION = re.compile(r"^[UW][A-Z0-9]{2,20}$")


def inert(text: str) -> str:
    """Words a person typed (a reason, a note, a ticket, a profile name), shown in mrkdwn exactly
    as words: no bold or code that could pass for WardKey's own, no mention, ping or link (a
    dotted name is shown with a one-dot leader, so nothing is clickable)."""
    text = _HIDDEN.sub("", text.replace("\r\n", "\n"))
    text = escape(text).translate(_LOOK_ALIKES)
    text = _SCHEME.sub(lambda m: f"{m[1]}:\u2215\u2215", text)
    return _DOT_IN_NAME.sub("\u2024", text)


def quoted(text: str, limit: int = 2900) -> str:
    """A requester's words as a quote block: plainly theirs, never WardKey's."""
    lines = inert(text).split("\n")
    return "\n".join(f"> {line}" for line in lines)[:limit]


def mention(slack_user_id: str | None, fallback: str) -> str:
    """`<@U…>` built by WardKey from an ID Slack verified, which Slack shows as the account's
    current name; `fallback`, made inert, when there is none."""
    if slack_user_id and _MENTION.match(slack_user_id):
        return f"<@{slack_user_id}>"
    return inert(fallback)


_CHANNEL = re.compile(r"^[CG][A-Z0-9]{2,20}$")


class Names:
    """How people and channels are shown. This one needs no look-up: a person's verified Slack
    account as a mention (Slack shows its current name), a channel as a channel link, and
    someone with no Slack account by the policy's name for them, made inert."""

    def person(self, key: str, slack_user_id: str | None = None) -> str:
        return mention(slack_user_id, key)

    def channel(self, channel_id: str) -> str:
        """A channel, or a person a message was addressed to (a user ID)."""
        if _MENTION.match(channel_id):
            return self.person(channel_id, channel_id)
        if _CHANNEL.match(channel_id):
            return f"<#{channel_id}>"
        return escape(channel_id)


SLACK_SHOWS = Names()


class DirectoryNames(Names):
    """People by their name in Slack ("Ben Hughes", not ben@…) and channels by name
    ("#security-alerts", not C0…), looked up in the Slack directory (which caches them). Slack
    failing (5xx, 429) is raised, so the message is rendered again once it answers."""

    def __init__(self, directory: SlackDirectory) -> None:
        self.directory = directory

    def person(self, key: str, slack_user_id: str | None = None) -> str:
        ident = slack_user_id if slack_user_id and _MENTION.match(slack_user_id) else None
        name = self.directory.name_of(key, ident) if key or ident else None
        return inert(name) if name else super().person(key, slack_user_id)

    def channel(self, channel_id: str) -> str:
        if _MENTION.match(channel_id):
            return self.person("", channel_id)
        name = self.directory.channel_name(channel_id) if _CHANNEL.match(channel_id) else None
        return f"#{inert(name)}" if name else super().channel(channel_id)


def words(text: str) -> MarkdownTextObject:
    """A mrkdwn text object with people's words in it: Slack adds no links of its own."""
    return MarkdownTextObject(text=text, verbatim=True)


def why_modal(
    callback_id: str,
    metadata: dict[str, Any],
    *,
    title: str,
    submit: str,
    question: str,
    block_id: str,
    action_id: str,
) -> dict[str, Any]:
    """A dialog that asks one thing in words (why a deny, why a review verdict) before acting."""
    return {
        "type": "modal",
        "callback_id": callback_id,
        "private_metadata": json.dumps(metadata),
        "title": {"type": "plain_text", "text": title},
        "submit": {"type": "plain_text", "text": submit},
        "close": {"type": "plain_text", "text": "Back"},
        "blocks": [
            {
                "type": "input",
                "block_id": block_id,
                "label": {"type": "plain_text", "text": question},
                "element": {
                    "type": "plain_text_input",
                    "action_id": action_id,
                    "multiline": True,
                    "max_length": 1000,
                },
            }
        ],
    }
