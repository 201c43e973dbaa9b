"""Slack user -> person: `users.info` (cached for a while), refusing accounts that cannot ask."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from app.policy.people import Person
from app.service.errors import NotAllowed


@dataclass(frozen=True)
class SlackProfile:
    user_id: str
    team_id: str | None
    name: str
    title: str
    email: str | None
    deleted: bool
    restricted: bool
    is_bot: bool

    def person(self) -> Person:
        return Person(slack_user_id=self.user_id, email=self.email, team_id=self.team_id)


class SlackDirectory:
    """Looks people up in Slack. Profiles are cached for `ttl_seconds` (e-mails rarely change,
    deactivation must be seen soon)."""

    def __init__(
        self,
        client: WebClient,
        ttl_seconds: float = 300.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.ttl = ttl_seconds
        self._now = monotonic
        self._cache: dict[str, tuple[float, SlackProfile]] = {}
        self._by_email: dict[str, tuple[float, str | None]] = {}
        self._lock = threading.Lock()

    def profile(self, user_id: str) -> SlackProfile:
        with self._lock:
            hit = self._cache.get(user_id)
            if hit is not None and hit[0] > self._now():
                return hit[1]
        user = self.client.users_info(user=user_id)["user"]
        profile = user.get("profile", {})
        found = SlackProfile(
            user_id=user["id"],
            team_id=user.get("team_id"),
            name=profile.get("real_name") or user.get("real_name") or user.get("name", user_id),
            title=profile.get("title", ""),
            email=(profile.get("email") or None),
            deleted=bool(user.get("deleted")),
            restricted=bool(user.get("is_restricted") or user.get("is_ultra_restricted")),
            is_bot=bool(user.get("is_bot")),
        )
        with self._lock:
            self._cache[user_id] = (self._now() + self.ttl, found)
        return found

    def person(self, user_id: str, team_id: str | None = None) -> Person:
        """The person behind a Slack account that may act in WardKey, or NotAllowed."""
        profile = self.profile(user_id)
        if profile.deleted or profile.restricted or profile.is_bot:
            raise NotAllowed(
                "Your Slack account is deactivated, a guest or a bot, so WardKey cannot act on "
                "it. Ask the service desk if this is wrong."
            )
        if team_id and profile.team_id and team_id != profile.team_id:
            raise NotAllowed("That Slack account belongs to another workspace.")
        return profile.person()

    def user_id_for(self, member: str) -> str | None:
        """A policy member (Slack ID or e-mail) as a Slack user ID, to send them messages."""
        if "@" not in member:
            return member
        with self._lock:
            hit = self._by_email.get(member)
            if hit is not None and hit[0] > self._now():
                return hit[1]
        try:
            user_id: str | None = self.client.users_lookupByEmail(email=member)["user"]["id"]
        except SlackApiError:
            user_id = None
        with self._lock:
            self._by_email[member] = (self._now() + self.ttl, user_id)
        return user_id
