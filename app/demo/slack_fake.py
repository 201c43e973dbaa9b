"""A local fake of the Slack Web API, for the demo and the tests (never started by `serve`).

A real HTTP server on loopback that answers the methods WardKey uses with Slack's response
shapes and error codes, records every call, keeps the messages it was sent so `chat.update`
behaves, can be told to answer 429 with Retry-After, and also stands in for `response_url`.
Like Slack, it refuses a `views.open` whose trigger_id (made by `new_trigger_id`) is over 3 s old.
Faults for the outbox's tests: answer HTTP 500 (`fail`), be unreachable (`unreachable`: the
connection is dropped unanswered), or take a post and drop the answer (`lose_answers`). Posts
keep their `metadata`, which `conversations.history` / `.replies` return with
`include_all_metadata`. Channels it knows (`add_channel`) answer `conversations.info` with their
name; a post to a channel the bot is not in fails `not_in_channel`, to an archived one
`is_archived`, to a user ID Slack does not know `channel_not_found`, and `refuse` scripts any other
permanent refusal.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlparse

from app.demo.loopback import LoopbackServer

JSON = dict[str, Any]
TRIGGER_LIFETIME_NS = 3_000_000_000


def new_trigger_id() -> str:
    """A trigger_id as Slack sends with a click or command, carrying when it was issued."""
    return f"{time.monotonic_ns()}.{secrets.token_hex(8)}"


def _trigger_issued_ns(trigger_id: str) -> int | None:
    issued, _, rest = trigger_id.partition(".")
    return int(issued) if issued.isdigit() and rest else None


@dataclass
class Call:
    """One request the fake received, after decoding (form, query or JSON)."""

    method: str
    args: JSON
    status: int
    response: JSON
    at: float = field(default_factory=time.monotonic)


@dataclass
class SlackUser:
    id: str
    email: str | None
    real_name: str
    title: str = ""
    team_id: str = "T0WARD"
    deleted: bool = False
    is_restricted: bool = False  # a multi-channel guest
    is_ultra_restricted: bool = False  # a single-channel guest
    is_bot: bool = False
    tz: str = "Europe/London"
    # Slack Connect: an account of another organisation that Slack shows the app.
    is_stranger: bool = False
    # Enterprise Grid: the org the account belongs to (users.info's `enterprise_user`).
    enterprise_id: str | None = None

    def to_slack(self) -> JSON:
        profile: JSON = {
            "real_name": self.real_name,
            "display_name": self.real_name.split(" ")[0],
            "title": self.title,
        }
        if self.email is not None:
            profile["email"] = self.email
        user: JSON = {
            "id": self.id,
            "team_id": self.team_id,
            "name": (self.email or self.id).split("@")[0],
            "deleted": self.deleted,
            "real_name": self.real_name,
            "tz": self.tz,
            "is_bot": self.is_bot,
            "is_restricted": self.is_restricted,
            "is_ultra_restricted": self.is_ultra_restricted,
            "is_stranger": self.is_stranger,
            "profile": profile,
        }
        if self.enterprise_id is not None:
            user["enterprise_user"] = {
                "id": self.id,
                "enterprise_id": self.enterprise_id,
                "enterprise_name": self.enterprise_id,
                "teams": [self.team_id],
            }
        return user


@dataclass
class SlackChannel:
    id: str
    name: str
    is_private: bool = False
    is_member: bool = True  # the bot is in it (else posts fail with `not_in_channel`)
    created: int = 1764460800

    def to_slack(self, archived: bool) -> JSON:
        """The conversation as `conversations.info` returns it (Slack's shape)."""
        return {
            "id": self.id,
            "name": self.name,
            "name_normalized": self.name,
            "created": self.created,
            "creator": "U0ADMIN",
            "is_channel": not self.is_private,
            "is_group": self.is_private,
            "is_im": False,
            "is_mpim": False,
            "is_private": self.is_private,
            "is_archived": archived,
            "is_general": False,
            "is_shared": False,
            "is_ext_shared": False,
            "is_org_shared": False,
            "is_pending_ext_shared": False,
            "is_member": self.is_member,
            "is_read_only": False,
            "unlinked": 0,
            "parent_conversation": None,
            "pending_shared": [],
            "previous_names": [],
            "topic": {"value": "", "creator": "", "last_set": 0},
            "purpose": {"value": "", "creator": "", "last_set": 0},
        }


class FakeSlack(LoopbackServer):
    """Start with `start()`; point the app at `api_url`; read `calls` afterwards."""

    def __init__(
        self,
        token: str = "xoxb-wardkey-fake",
        team_id: str = "T0WARD",
        bot_user_id: str = "U0WARDKEY",
        latency: float = 0.0,
        app_token: str = "xapp-wardkey-fake",
    ) -> None:
        self.token = token
        self.app_token = app_token
        # Where apps.connections.open sends a Socket Mode client: set by whoever serves it.
        self.socket_mode_url: str | None = None
        self.latency = latency  # seconds before each answer, as a real Web API call takes
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.users: dict[str, SlackUser] = {}
        self.messages: dict[tuple[str, str], JSON] = {}
        # Channels someone archived: posts to them fail with Slack's `is_archived`.
        self.archived: set[str] = set()
        self.channels: dict[str, SlackChannel] = {}
        # Posts to these channels (or user IDs) are refused for good with this error.
        self.refusals: dict[str, str] = {}
        self.views: dict[str, JSON] = {}
        self.home: dict[str, JSON] = {}
        self.calls: list[Call] = []
        self._rate_limits: dict[str, list[int]] = {}
        self._failures: list[int] = [0, 500]  # the next N calls answer this HTTP status
        self.unreachable = False  # every connection dropped unanswered, as when Slack is down
        self._lost_answers = 0  # the next N posts are taken but their answer never arrives
        self._ts = itertools.count(1)
        self._ids = itertools.count(1)
        self._lock = threading.Condition()
        self.listeners: list[Callable[[Call], None]] = []
        # Calls being answered now, and the most at once: shows a client sends in parallel.
        self.in_flight = 0
        self.most_in_flight = 0
        super().__init__()

    # ------------------------------------------------------------------------- lifecycle

    def start(self, port: int = 0) -> FakeSlack:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake._handle(self)

            def do_POST(self) -> None:
                fake._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._serve(Handler, port)
        return self

    @property
    def api_url(self) -> str:
        """The Web API base URL, with the trailing slash slack_sdk needs."""
        return f"{self.base_url}/api/"

    def response_url(self, name: str = "cmd") -> str:
        return f"{self.base_url}/response/{name}-{next(self._ids)}"

    # ------------------------------------------------------------------------ scripting

    def add_user(self, user: SlackUser) -> None:
        self.users[user.id] = user

    def add_channel(self, channel: SlackChannel) -> None:
        self.channels[channel.id] = channel

    def refuse(self, channel: str, error: str) -> None:
        """Refuse every post to `channel` (a channel or user ID) with Slack's `error`, as Slack
        does for good: e.g. `user_not_found`, `channel_not_found`, `not_in_channel`."""
        with self._lock:
            self.refusals[channel] = error

    def rate_limit(self, method: str, times: int = 1, retry_after: int = 1) -> None:
        """Answer the next `times` calls of `method` with HTTP 429 and Retry-After."""
        self._rate_limits[method] = [times, retry_after]

    def fail(self, times: int, status: int = 500) -> None:
        """Answer the next `times` Web API calls with this HTTP status (Slack's 5xx)."""
        with self._lock:
            self._failures = [times, status]

    def lose_answers(self, times: int = 1) -> None:
        """Take the next `times` posts, then drop the connection before answering: the
        caller cannot tell whether Slack has them."""
        with self._lock:
            self._lost_answers = times

    def posts(self) -> list[JSON]:
        """Every message posted and kept, in order (its channel added)."""
        with self._lock:
            return [
                {**m, "channel": channel}
                for (channel, _ts), m in sorted(self.messages.items(), key=lambda kv: kv[0][1])
            ]

    def calls_to(self, method: str, **match: Any) -> list[Call]:
        """The successful calls of `method` so far (with matching args)."""
        with self._lock:
            return self._successful(method, match)

    def wait_for(
        self, method: str, count: int = 1, timeout: float = 5.0, **match: Any
    ) -> list[Call]:
        """Block until `count` successful calls of `method` (with matching args) arrived."""
        deadline = time.monotonic() + timeout

        with self._lock:
            while len(found := self._successful(method, match)) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(c.method, c.status) for c in self.calls]
                    raise AssertionError(
                        f"expected {count} {method} call(s) matching {match}; calls so far: {seen}"
                    )
                self._lock.wait(left)
            return found

    def _successful(self, method: str, match: dict[str, Any]) -> list[Call]:
        return [
            c
            for c in self.calls
            if c.method == method
            and c.status == 200
            and all(c.args.get(k) == v for k, v in match.items())
        ]

    # ------------------------------------------------------------------------- handling

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            self._handle_one(request)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _handle_one(self, request: BaseHTTPRequestHandler) -> None:
        if self.latency:
            time.sleep(self.latency)
        if self.unreachable and not request.path.startswith("/response/"):
            self._drop(request, "unreachable")
            return
        url = urlparse(request.path)
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length) if length else b""
        args: JSON = {k: v[-1] for k, v in parse_qs(url.query).items()}
        content_type = request.headers.get("Content-Type", "")
        if raw and "json" in content_type:
            args.update(json.loads(raw))
        elif raw:
            args.update({k: v[-1] for k, v in parse_qs(raw.decode()).items()})
        for key in ("blocks", "view", "attachments", "metadata"):
            if isinstance(args.get(key), str):
                with contextlib.suppress(ValueError):
                    args[key] = json.loads(args[key])
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip() if auth else args.pop("token", None)

        headers: dict[str, str] = {}
        if url.path.startswith("/response/"):
            method, status, body = "response_url", 200, {"ok": True}
            args["_url"] = url.path
        else:
            method = url.path.removeprefix("/api/")
            status, body, headers = self._answer(method, token, args)
        call = Call(method=method, args=args, status=status, response=body)
        with self._lock:
            self.calls.append(call)
            self._lock.notify_all()
            lose = method == "chat.postMessage" and status == 200 and self._lost_answers > 0
            if lose:
                self._lost_answers -= 1
        if lose:
            self._drop(request, "answer lost")
            return
        for listener in list(self.listeners):
            listener(call)
        payload = json.dumps(body).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json; charset=utf-8")
        request.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(payload)

    def _drop(self, request: BaseHTTPRequestHandler, why: str) -> None:
        """Close the connection without an answer (recorded with status 0)."""
        with self._lock:
            self.calls.append(Call(method=why, args={"path": request.path}, status=0, response={}))
            self._lock.notify_all()
        request.close_connection = True
        with contextlib.suppress(OSError):
            request.connection.shutdown(2)

    def _answer(
        self, method: str, token: str | None, args: JSON
    ) -> tuple[int, JSON, dict[str, str]]:
        with self._lock:
            if self._failures[0] > 0:
                self._failures[0] -= 1
                return self._failures[1], {"ok": False, "error": "internal_error"}, {}
            limit = self._rate_limits.get(method)
            if limit and limit[0] > 0:
                limit[0] -= 1
                return 429, {"ok": False, "error": "ratelimited"}, {"Retry-After": str(limit[1])}
        if not token:
            return 200, {"ok": False, "error": "not_authed"}, {}
        # apps.connections.open takes the app-level token (xapp-) and nothing else does.
        wanted = self.app_token if method == "apps.connections.open" else self.token
        if token != wanted:
            error = "not_allowed_token_type" if token in (self.token, self.app_token) else ""
            return 200, {"ok": False, "error": error or "invalid_auth"}, {}
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return 200, {"ok": False, "error": "unknown_method"}, {}
        with self._lock:
            body: JSON = handler(args)
        return 200, body, {}

    # -------------------------------------------------------------------------- methods

    def _next_ts(self) -> str:
        return f"{1764460800 + next(self._ts)}.000100"

    def _m_apps_connections_open(self, args: JSON) -> JSON:
        if self.socket_mode_url is None:
            return {"ok": False, "error": "access_denied"}  # the app has Socket Mode off
        return {"ok": True, "url": self.socket_mode_url}

    def _m_auth_test(self, args: JSON) -> JSON:
        return {
            "ok": True,
            "url": "https://wardkey-fake.slack.com/",
            "team": "WardKey Fake Trust",
            "user": "wardkey",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": "B0WARDKEY",
            "is_enterprise_install": False,
        }

    def _m_users_info(self, args: JSON) -> JSON:
        user = self.users.get(str(args.get("user", "")))
        if user is None:
            return {"ok": False, "error": "user_not_found"}
        return {"ok": True, "user": user.to_slack()}

    def _m_users_lookupByEmail(self, args: JSON) -> JSON:
        email = str(args.get("email", "")).lower()
        user = next((u for u in self.users.values() if (u.email or "").lower() == email), None)
        if user is None:
            return {"ok": False, "error": "users_not_found"}
        return {"ok": True, "user": user.to_slack()}

    def _m_conversations_info(self, args: JSON) -> JSON:
        channel = str(args.get("channel", ""))
        known = self.channels.get(channel)
        if known is not None:
            return {"ok": True, "channel": known.to_slack(channel in self.archived)}
        if channel.startswith("D") and "U" + channel[1:] in self.users:
            im = {
                "id": channel,
                "created": 1764460800,
                "is_im": True,
                "is_org_shared": False,
                "user": "U" + channel[1:],
                "is_user_deleted": self.users["U" + channel[1:]].deleted,
                "priority": 0,
            }
            return {"ok": True, "channel": im}
        return {"ok": False, "error": "channel_not_found"}

    def _m_conversations_open(self, args: JSON) -> JSON:
        users = str(args.get("users", "")).split(",")
        if not users or not users[0]:
            return {"ok": False, "error": "users_list_not_supplied"}
        if any(u not in self.users for u in users):
            return {"ok": False, "error": "user_not_found"}
        return {"ok": True, "channel": {"id": "D" + users[0][1:]}}

    def _message_args_error(self, args: JSON) -> str | None:
        channel = str(args.get("channel", ""))
        if not channel or channel[0] not in "CDGU":
            return "channel_not_found"
        if not args.get("text") and not args.get("blocks"):
            return "no_text"
        blocks = args.get("blocks") or []
        if len(blocks) > 50:
            return "invalid_blocks"
        return None

    def _m_chat_postMessage(self, args: JSON) -> JSON:
        error = self._message_args_error(args)
        if error:
            return {"ok": False, "error": error}
        channel = str(args["channel"])
        if channel in self.refusals:
            return {"ok": False, "error": self.refusals[channel]}
        if channel in self.archived:
            return {"ok": False, "error": "is_archived"}
        known = self.channels.get(channel)
        if known is not None and not known.is_member:
            return {"ok": False, "error": "not_in_channel"}
        if channel[0] in "UW" and channel not in self.users:
            return {"ok": False, "error": "channel_not_found"}
        if channel.startswith("U"):  # posting to a user ID lands in the DM with them
            channel = "D" + channel[1:]
        ts = self._next_ts()
        message = {
            "type": "message",
            "text": args.get("text", ""),
            "blocks": args.get("blocks", []),
            "ts": ts,
            "user": self.bot_user_id,
        }
        if args.get("thread_ts"):
            message["thread_ts"] = str(args["thread_ts"])
        if isinstance(args.get("metadata"), dict):
            message["metadata"] = args["metadata"]
        self.messages[(channel, ts)] = message
        return {"ok": True, "channel": channel, "ts": ts, "message": message}

    def _history(self, args: JSON, thread: str | None) -> JSON:
        channel = str(args.get("channel", ""))
        if not channel or channel[0] not in "CDG":
            return {"ok": False, "error": "channel_not_found"}
        oldest = float(args.get("oldest") or 0)
        metadata = str(args.get("include_all_metadata", "")).lower() in ("1", "true")
        found = []
        for (c, ts), message in sorted(self.messages.items(), key=lambda kv: kv[0][1]):
            in_thread = message.get("thread_ts")
            if c != channel or float(ts) < oldest:
                continue
            if thread is None and in_thread:
                continue  # replies live in their thread, not the channel's history
            if thread is not None and ts != thread and in_thread != thread:
                continue
            shown = dict(message)
            if not metadata:
                shown.pop("metadata", None)
            found.append(shown)
        limit = int(args.get("limit") or 100)
        if thread is None:
            found.reverse()  # conversations.history: newest first
        return {
            "ok": True,
            "messages": found[:limit],
            "has_more": len(found) > limit,
            "pin_count": 0,
            "response_metadata": {"next_cursor": ""},
        }

    def _m_conversations_history(self, args: JSON) -> JSON:
        return self._history(args, None)

    def _m_conversations_replies(self, args: JSON) -> JSON:
        thread = str(args.get("ts", ""))
        if not thread:
            return {"ok": False, "error": "thread_not_found"}
        return self._history(args, thread)

    def _m_chat_update(self, args: JSON) -> JSON:
        error = self._message_args_error(args)
        if error:
            return {"ok": False, "error": error}
        key = (str(args["channel"]), str(args.get("ts", "")))
        if key not in self.messages:
            return {"ok": False, "error": "message_not_found"}
        message = self.messages[key]
        message.update(text=args.get("text", ""), blocks=args.get("blocks", []))
        return {
            "ok": True,
            "channel": key[0],
            "ts": key[1],
            "text": message["text"],
            "message": message,
        }

    def _m_chat_postEphemeral(self, args: JSON) -> JSON:
        error = self._message_args_error(args)
        if error:
            return {"ok": False, "error": error}
        if str(args.get("user", "")) not in self.users:
            return {"ok": False, "error": "user_not_in_channel"}
        return {"ok": True, "message_ts": self._next_ts()}

    def _view(self, view: Any, view_id: str | None = None) -> JSON:
        if not isinstance(view, dict) or view.get("type") not in ("modal", "home"):
            return {"ok": False, "error": "invalid_arguments"}
        stored = {
            **view,
            "id": view_id or f"V{next(self._ids):08d}",
            "team_id": self.team_id,
            "hash": f"{time.time():.6f}",
            "state": {"values": {}},
        }
        self.views[stored["id"]] = stored
        return {"ok": True, "view": stored}

    def _m_views_open(self, args: JSON) -> JSON:
        issued = _trigger_issued_ns(str(args.get("trigger_id") or ""))
        if issued is None:
            return {"ok": False, "error": "invalid_trigger_id"}
        if time.monotonic_ns() - issued > TRIGGER_LIFETIME_NS:
            return {"ok": False, "error": "expired_trigger_id"}
        return self._view(args.get("view"))

    def _m_views_update(self, args: JSON) -> JSON:
        view_id = str(args.get("view_id", ""))
        if view_id not in self.views:
            return {"ok": False, "error": "not_found"}
        return self._view(args.get("view"), view_id)

    def _m_views_publish(self, args: JSON) -> JSON:
        user = str(args.get("user_id", ""))
        if user not in self.users:
            return {"ok": False, "error": "user_not_found"}
        answer = self._view(args.get("view"))
        if answer["ok"]:
            self.home[user] = answer["view"]
        return answer
