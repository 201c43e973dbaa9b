"""The approver's browser: `GET /step-up/<link>` sends it to the identity provider, and
`GET /step-up/callback` takes the answer and shows a page that says plainly what happened.
Slack is told through the outbox (`deliver`: the process's notifier delivers what the sign-in
recorded), never from here."""

from __future__ import annotations

import html
import logging
from collections.abc import Callable, Iterable
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs

from app.policy.durations import format_duration
from app.stepup.oidc import SignInRefused
from app.stepup.service import (
    CALLBACK_PATH,
    LINK_PATH,
    Finished,
    StepUpService,
    cookie_name,
)
from app.store.models import RequestState

log = logging.getLogger(__name__)
StartResponse = Callable[..., Any]

# Nothing on these pages is cached, framed, sent on as a referrer or loaded from elsewhere.
_HEADERS = [
    ("Cache-Control", "no-store"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"),
]


class StepUpPages:
    """WSGI for the paths under /step-up/."""

    def __init__(
        self,
        service: StepUpService,
        deliver: Callable[[], None],
    ) -> None:
        self.service = service
        # The notifier's deliver_now: what a sign-in recorded (the approval's cards, DMs and
        # homes, or a refusal's security alert) is delivered from the outbox.
        self.deliver = deliver

    @staticmethod
    def handles(path: str) -> bool:
        return path.startswith(LINK_PATH)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _page(start_response, "405 Method Not Allowed", "Not here", "GET only.")
        path = environ.get("PATH_INFO", "")
        query = parse_qs(environ.get("QUERY_STRING", ""))
        if path == CALLBACK_PATH:
            return self._callback(query, _cookies(environ), start_response)
        link = path[len(LINK_PATH) :]
        if not link or "/" in link:
            return _page(start_response, "404 Not Found", "Not found", "No such page.")
        try:
            opened = self.service.open(link)
        except SignInRefused as refused:
            log.warning("event=step_up_link_refused reason=%s", refused.reason)
            return _page(start_response, "410 Gone", "Nothing was approved", refused.message)
        # Only this browser can finish the sign-in: the callback wants this cookie back. Lax,
        # as the provider sends the browser back with a top-level GET from its own site.
        cookie = (
            f"{opened.cookie}={opened.browser}; Path={CALLBACK_PATH}; Max-Age={opened.max_age}; "
            "HttpOnly; SameSite=Lax" + ("; Secure" if self._secure else "")
        )
        start_response(
            "302 Found",
            [("Location", opened.url), ("Set-Cookie", cookie), ("Content-Length", "0"), *_HEADERS],
        )
        return [b""]

    @property
    def _secure(self) -> bool:
        return self.service.public_url.startswith("https://")

    def _callback(
        self, query: dict[str, list[str]], cookies: dict[str, str], start_response: StartResponse
    ) -> Iterable[bytes]:
        def one(name: str) -> str | None:
            values = query.get(name) or []
            return values[0] if values else None

        state = one("state")
        if not state:
            return _page(
                start_response,
                "400 Bad Request",
                "Nothing was approved",
                "This address is missing its sign-in state. Click Approve in Slack to start again.",
            )
        finished = self.service.finish(
            state, one("code"), one("error"), browser=cookies.get(cookie_name(state))
        )
        if finished.view is None:
            if finished.alerted:
                self.deliver()
            return _page(
                start_response, "403 Forbidden", "Nothing was approved", finished.refusal or ""
            )
        self.deliver()  # the cards, DMs and home, through the outbox
        return _page(start_response, "200 OK", *_approved(finished, self.service))


def _approved(finished: Finished, service: StepUpService) -> tuple[str, str]:
    view = finished.view
    assert view is not None
    zone = service.access.policy.zone
    what = f"{view.target}:{view.role} for {format_duration(view.requested)}"
    if view.state == RequestState.PENDING:
        return (
            "Approval recorded",
            f"Your approval of request #{view.id} ({what}) is recorded. It needs more "
            "approvals before access is given; the Slack card shows who else has approved.",
        )
    if view.state == RequestState.ACTIVE and view.expires_at is not None:
        until = view.expires_at.astimezone(zone).strftime("%H:%M")
        return (
            "Approved",
            f"You approved request #{view.id}: {view.requester} has {what}, until {until}. "
            "The Slack card is being updated. You can close this page.",
        )
    return (
        "Approved",
        f"You approved request #{view.id} ({what}); it is now "
        f"{view.state.value.replace('_', ' ')}. The Slack card shows what happens next. You "
        "can close this page.",
    )


def _cookies(environ: dict[str, Any]) -> dict[str, str]:
    """The request's cookies (none, if the header cannot be read)."""
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(str(environ.get("HTTP_COOKIE", "")))
    except CookieError:
        return {}
    return {name: morsel.value for name, morsel in jar.items()}


def _page(start_response: StartResponse, status: str, title: str, message: str) -> list[bytes]:
    body = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>WardKey: {html.escape(title)}</title>"
        "<style>body{font:16px/1.5 system-ui,sans-serif;max-width:36em;margin:3em auto;"
        "padding:0 1em}</style></head><body>"
        f"<h1>{html.escape(title, quote=False)}</h1><p>{html.escape(message, quote=False)}</p>"
        "</body></html>"
    ).encode()
    start_response(
        status,
        [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(body))),
            *_HEADERS,
        ],
    )
    return [body]
