"""Run the real app over HTTP against the fake Slack Web API, and talk to it as Slack does:
correctly signed requests with the payload shapes Slack sends."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
from slack_sdk.signature import SignatureVerifier
from waitress.server import create_server

from app.devtools.slack_fake import FakeSlack, SlackUser
from app.service import AccessService
from app.slack.app import build_app, web_client
from app.web import WardKeyWSGI

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
TEAM = "T0WARD"

# The ward's people as Slack knows them (see tests/conftest.py for who they are).
WARD_USERS = [
    SlackUser("U0AMIRA", "amira@ward.nhs.uk", "Amira Khan", "Clinical systems analyst"),
    SlackUser("U0BEN", "ben@ward.nhs.uk", "Ben Hughes", "Clinical systems lead"),
    SlackUser("U0CHLOE", "chloe@ward.nhs.uk", "Chloe Evans", "Clinical systems analyst"),
    SlackUser("U0DEV", "dev@ward.nhs.uk", "Dev Patel", "Infrastructure engineer"),
    SlackUser("U0ERIN", "erin@ward.nhs.uk", "Erin Walsh", "Infrastructure lead"),
    SlackUser("U0FARID", "farid@ward.nhs.uk", "Farid Rahman", "Infrastructure lead"),
    SlackUser("U0GITA", "gita@ward.nhs.uk", "Gita Rao", "Head of IT operations"),
    SlackUser("U0HANA", "hana@ward.nhs.uk", "Hana Novak", "Duty manager"),
    SlackUser("U0GONE", "gone@ward.nhs.uk", "Left Trust", "", deleted=True),
    SlackUser("U0GUEST", "guest@ward.nhs.uk", "Guest User", "", is_restricted=True),
]


@dataclass
class RunningApp:
    url: str
    fake: FakeSlack
    service: AccessService
    http: httpx.Client

    # ------------------------------------------------------------------ raw, signed posts

    def post(
        self,
        body: str,
        *,
        content_type: str = "application/x-www-form-urlencoded",
        timestamp: int | None = None,
        signature: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        sig = signature or SignatureVerifier(SIGNING_SECRET).generate_signature(
            timestamp=ts, body=body
        )
        all_headers = {
            "Content-Type": content_type,
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": sig,
            **(headers or {}),
        }
        return self.http.post(
            f"{self.url}/slack/events", content=body.encode(), headers=all_headers
        )

    # ------------------------------------------------------------ what Slack would send

    def command(self, command: str, text: str, user: str) -> httpx.Response:
        body = urlencode(
            {
                "token": "legacy-verification-token",
                "team_id": TEAM,
                "team_domain": "ward",
                "channel_id": "C0WARDOPS",
                "channel_name": "ward-ops",
                "user_id": user,
                "user_name": user.lower(),
                "command": command,
                "text": text,
                "api_app_id": "A0WARDKEY",
                "response_url": self.fake.response_url("cmd"),
                "trigger_id": f"trigger-{time.monotonic_ns()}",
            }
        )
        return self.post(body)

    def click(
        self,
        action_id: str,
        value: str,
        user: str,
        channel: str | None = "D0CARD",
        message_ts: str = "1764460801.000100",
        view: dict[str, Any] | None = None,
    ) -> httpx.Response:
        """A button (or select) click on a message, or inside a modal or the App Home."""
        action: dict[str, Any] = {
            "type": "button",
            "action_id": action_id,
            "block_id": f"decide:{value}",
            "value": value,
            "action_ts": f"{time.time():.6f}",
        }
        payload: dict[str, Any] = {
            "type": "block_actions",
            "team": {"id": TEAM, "domain": "ward"},
            "user": {"id": user, "team_id": TEAM, "username": user.lower()},
            "api_app_id": "A0WARDKEY",
            "trigger_id": f"trigger-{time.monotonic_ns()}",
            "response_url": self.fake.response_url("action"),
            "actions": [action],
        }
        if view is not None:
            payload["view"] = view
            payload["container"] = {"type": "view", "view_id": view.get("id")}
        if channel is not None:
            payload["channel"] = {"id": channel}
            payload["container"] = {
                "type": "message",
                "channel_id": channel,
                "message_ts": message_ts,
            }
            payload["message"] = {"ts": message_ts, "text": "card"}
        return self.post(urlencode({"payload": json.dumps(payload)}))

    def submit_view(
        self, callback_id: str, values: dict[str, Any], user: str, private_metadata: str = ""
    ) -> httpx.Response:
        payload = {
            "type": "view_submission",
            "team": {"id": TEAM, "domain": "ward"},
            "user": {"id": user, "team_id": TEAM},
            "api_app_id": "A0WARDKEY",
            "trigger_id": f"trigger-{time.monotonic_ns()}",
            "view": {
                "id": "V0DENY",
                "type": "modal",
                "callback_id": callback_id,
                "private_metadata": private_metadata,
                "state": {"values": values},
                "hash": "1",
                "team_id": TEAM,
            },
        }
        return self.post(urlencode({"payload": json.dumps(payload)}))

    def event(
        self, event: dict[str, Any], event_id: str, retry: int | None = None
    ) -> httpx.Response:
        body = json.dumps(
            {
                "token": "legacy-verification-token",
                "team_id": TEAM,
                "api_app_id": "A0WARDKEY",
                "type": "event_callback",
                "event_id": event_id,
                "event_time": int(time.time()),
                "event": event,
            }
        )
        headers = (
            {"X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": "http_timeout"}
            if retry
            else None
        )
        return self.post(body, content_type="application/json", headers=headers)

    def replies(self, count: int = 1) -> list[str]:
        """The text of the ephemeral replies sent to response_url, once `count` arrived."""
        return [c.args.get("text", "") for c in self.fake.wait_for("response_url", count)]


def run_app(service: AccessService) -> Iterator[RunningApp]:
    fake = FakeSlack().start()
    for user in WARD_USERS:
        fake.add_user(user)
    client = web_client(fake.token, fake.api_url)
    listeners = ThreadPoolExecutor(max_workers=8)
    bolt = build_app(service, client, SIGNING_SECRET, listeners)
    server = create_server(WardKeyWSGI(bolt, service.db), host="127.0.0.1", port=0, threads=8)

    def serve() -> None:
        with contextlib.suppress(OSError):  # the socket closes under select() at teardown
            server.run()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    http = httpx.Client(timeout=10)
    try:
        yield RunningApp(f"http://127.0.0.1:{server.effective_port}", fake, service, http)
    finally:
        http.close()
        server.close()
        listeners.shutdown(wait=True)  # let work after the ack finish before the fake goes
        fake.stop()
