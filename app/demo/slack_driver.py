"""Talk to a running WardKey as Slack does: correctly signed requests with the payload shapes
Slack sends. The demo and the tests drive the app through this."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
from slack_sdk.signature import SignatureVerifier
from waitress.server import create_server

from app.demo.slack_fake import FakeSlack, new_trigger_id


@dataclass
class SlackDriver:
    """Sends what Slack would send to a running WardKey: commands, clicks, form submissions and
    events, each signed with the app's signing secret."""

    url: str
    fake: FakeSlack
    http: httpx.Client
    signing_secret: str
    team: str = "T0WARD"
    # The app's thread pools, when it runs in this process: `settle()` waits for them.
    pools: tuple[TrackingExecutor, ...] = ()

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until the app has finished the work its last requests caused."""
        deadline = time.monotonic() + timeout
        while not all(p.wait_idle(max(0.0, deadline - time.monotonic())) for p in self.pools):
            if time.monotonic() > deadline:
                raise AssertionError("the app's work after the ack did not finish")

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
        sig = signature or SignatureVerifier(self.signing_secret).generate_signature(
            timestamp=ts, body=body
        )
        all_headers: dict[str, str] = {
            "Content-Type": content_type,
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": sig or "",
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
                "team_id": self.team,
                "team_domain": "ward",
                "channel_id": "C0WARDOPS",
                "channel_name": "ward-ops",
                "user_id": user,
                "user_name": user.lower(),
                "command": command,
                "text": text,
                "api_app_id": "A0WARDKEY",
                "response_url": self.fake.response_url("cmd"),
                "trigger_id": new_trigger_id(),
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
            "team": {"id": self.team, "domain": "ward"},
            "user": {"id": user, "team_id": self.team, "username": user.lower()},
            "api_app_id": "A0WARDKEY",
            "trigger_id": new_trigger_id(),
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
            "team": {"id": self.team, "domain": "ward"},
            "user": {"id": user, "team_id": self.team},
            "api_app_id": "A0WARDKEY",
            "trigger_id": new_trigger_id(),
            "view": {
                "id": "V0DENY",
                "type": "modal",
                "callback_id": callback_id,
                "private_metadata": private_metadata,
                "state": {"values": values},
                "hash": "1",
                "team_id": self.team,
            },
        }
        return self.post(urlencode({"payload": json.dumps(payload)}))

    def event(
        self, event: dict[str, Any], event_id: str, retry: int | None = None
    ) -> httpx.Response:
        body = json.dumps(
            {
                "token": "legacy-verification-token",
                "team_id": self.team,
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


class TrackingExecutor(ThreadPoolExecutor):
    """A thread pool that can say when all the work handed to it is done, so a driver knows
    when the app has finished reacting to what it was sent."""

    def __init__(self, max_workers: int = 8) -> None:
        super().__init__(max_workers=max_workers)
        self._pending = 0
        self._idle = threading.Condition()

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._idle:
            self._pending += 1
        future = super().submit(fn, *args, **kwargs)
        future.add_done_callback(self._done)
        return future

    def _done(self, _future: Future[Any]) -> None:
        with self._idle:
            self._pending -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)


@contextlib.contextmanager
def serving(wsgi_app: Any, threads: int = 8) -> Iterator[str]:
    """Serve a WSGI app with waitress on a free loopback port; yields its base URL."""
    server = create_server(wsgi_app, host="127.0.0.1", port=0, threads=threads)

    def serve() -> None:
        with contextlib.suppress(OSError):  # the socket closes under select() at teardown
            server.run()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        server.close()
