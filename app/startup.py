"""What keeps WardKey from starting, said in one line for the operator: `StartupError`, and what
to say when one of Slack's settings is missing (`MISSING`).

Imports nothing, so the command line can catch and say these without loading the runtime
(`app/cli/common.py`'s `starting`)."""

from __future__ import annotations

MISSING = {
    "slack_bot_token": "SLACK_BOT_TOKEN is not set: use the Bot User OAuth Token (xoxb-…) from "
    "your Slack app's OAuth & Permissions page.",
    "slack_signing_secret": "SLACK_SIGNING_SECRET is not set: copy the Signing Secret from your "
    "Slack app's Basic Information page.",
    "slack_app_token": "SLACK_APP_TOKEN is not set: create an app-level token (xapp-…) with "
    "connections:write under Basic Information, for Socket Mode.",
}


class StartupError(Exception):
    """Something the operator must set or fix; the message is one line saying what."""
