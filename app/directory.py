"""The Slack directory: who a Slack user is (`users.info`, cached for a while) and whether they
may act, profiles and names for messages, policy members by e-mail, channels by name.

Both the Slack shell (app/slack: who is asking) and the messages and notifier (app/blockkit.py,
app/notify: whom to tell, by name) read it, so it sits below both and imports neither.
Slack user -> person refuses accounts that cannot ask.

Policy members are matched by e-mail, and an e-mail is only as good as the workspace that set it:
anyone can put an approver's address on an account in a workspace of their own. So a person is
only ever made from an account of the trust's own workspace(s) (`Workspace`), never from a guest,
a Slack Connect partner's account or a stranger.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from app.lifecycle.errors import NotAllowed
from app.policy.people import Person

log = logging.getLogger(__name__)

OUTSIDER = (
    "WardKey only acts for people of this trust's own Slack workspace, so nothing was done. "
    "Ask the WardKey admins if you think this is wrong."
)
NOT_A_MEMBER = (
    "Your Slack account is deactivated, a guest or a bot, so WardKey cannot act on it. Ask the "
    "service desk if this is wrong."
)


@dataclass(frozen=True)
class Workspace:
    """Whose people may use WardKey: these workspaces, and every workspace of `enterprise_id`
    (an Enterprise Grid org) when set. Nobody else, whatever their e-mail says."""

    team_ids: frozenset[str]
    enterprise_id: str | None = None

    @classmethod
    def configured(cls, team_ids: str, enterprise_id: str | None) -> Workspace | None:
        """From SLACK_TEAM_IDS (comma-separated) and SLACK_ENTERPRISE_ID; None when neither is
        set, so the bot token's own workspace is used."""
        teams = frozenset(t.strip() for t in team_ids.split(",") if t.strip())
        enterprise = (enterprise_id or "").strip() or None
        return cls(teams, enterprise) if teams or enterprise else None

    @classmethod
    def of_token(cls, auth_test: Any) -> Workspace:
        """The workspace the bot token was installed in (`auth.test`); for an org-wide install,
        which has no single workspace, the org."""
        team = auth_test.get("team_id")
        org_wide = bool(auth_test.get("is_enterprise_install")) or not team
        enterprise = auth_test.get("enterprise_id") if org_wide else None
        return cls(frozenset([team] if team else []), enterprise or None)

    def admits(self, team_ids: Iterable[str | None], enterprise_id: str | None = None) -> bool:
        """Every workspace named (at least one) is ours, or of our org."""
        named = [t for t in team_ids if t]
        if enterprise_id and self.enterprise_id and enterprise_id != self.enterprise_id:
            return False  # a workspace of another Enterprise Grid org
        in_our_org = self.enterprise_id is not None and enterprise_id == self.enterprise_id
        return bool(named) and all(t in self.team_ids or in_our_org for t in named)


@dataclass(frozen=True)
class SlackProfile:
    user_id: str
    team_id: str | None
    name: str  # the full name (real_name), else the display name, else the handle
    title: str
    email: str | None
    deleted: bool
    restricted: bool
    is_bot: bool
    # Slack Connect: an account of another organisation Slack shows us (`is_stranger`), and
    # the Enterprise Grid org an account belongs to (`enterprise_user.enterprise_id`).
    stranger: bool = False
    enterprise_id: str | None = None

    @classmethod
    def from_slack(cls, user: dict[str, Any]) -> SlackProfile:
        profile = user.get("profile") or {}
        user_id = str(user["id"])
        return cls(
            user_id=user_id,
            team_id=user.get("team_id"),
            name=(
                profile.get("real_name")
                or user.get("real_name")
                or profile.get("display_name")
                or user.get("name", user_id)
            ),
            title=profile.get("title", ""),
            email=(profile.get("email") or None),
            deleted=bool(user.get("deleted")),
            restricted=bool(user.get("is_restricted") or user.get("is_ultra_restricted")),
            is_bot=bool(user.get("is_bot") or user.get("is_workflow_bot")),
            stranger=bool(user.get("is_stranger")),
            enterprise_id=(user.get("enterprise_user") or {}).get("enterprise_id"),
        )

    def person(self) -> Person:
        return Person(slack_user_id=self.user_id, email=self.email, team_id=self.team_id)

    @property
    def can_act(self) -> bool:
        """A current member who may use WardKey: not deactivated, a guest or a bot. Slack still
        takes a message to a deactivated account, so only this says nobody will read it."""
        return not (self.deleted or self.restricted or self.is_bot)

    @property
    def labelled(self) -> str:
        """Name and title, "Ben Hughes (Clinical systems lead)"; the name alone without one."""
        return f"{self.name} ({self.title})" if self.title else self.name

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SlackProfile:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


class ProfileKeeper(Protocol):
    """Where Slack's last answer about each person is kept beyond the process (the database)."""

    def keep(self, profile: SlackProfile) -> None: ...

    def recall(self, user_id: str, within: timedelta) -> SlackProfile | None: ...


# While Slack's Web API fails, who clicked is taken from Slack's last answer about them if it
# is this recent. Slack itself delivered the click, so the account is still active in the
# workspace; a day bounds how stale the rest (e-mail, guest or not) may be.
KEPT_PROFILE_USED_FOR = timedelta(days=1)


class SlackDirectory:
    """Looks people up in Slack. Profiles are cached for `ttl_seconds` (e-mails rarely change,
    deactivation must be seen soon). `workspace` says whose people count; unset, it is learned
    once from `auth.test` (the bot token's own workspace)."""

    def __init__(
        self,
        client: WebClient,
        workspace: Workspace | None = None,
        ttl_seconds: float = 300.0,
        monotonic: Callable[[], float] = time.monotonic,
        kept: ProfileKeeper | None = None,
    ) -> None:
        self.client = client
        self.kept = kept
        self.ttl = ttl_seconds
        self._workspace = workspace
        self._now = monotonic
        self._cache: dict[str, tuple[float, SlackProfile]] = {}
        self._by_email: dict[str, tuple[float, str | None]] = {}
        self._channels: dict[str, tuple[float, str | None]] = {}
        self._lock = threading.Lock()

    def workspace(self) -> Workspace:
        with self._lock:
            if self._workspace is None:
                self._workspace = Workspace.of_token(self.client.auth_test())
            return self._workspace

    def profile(self, user_id: str) -> SlackProfile:
        with self._lock:
            hit = self._cache.get(user_id)
            if hit is not None and hit[0] > self._now():
                return hit[1]
        try:
            answer = self.client.users_info(user=user_id)
        except (SlackApiError, OSError) as exc:
            if isinstance(exc, SlackApiError) and not slack_unwell(exc):
                raise  # Slack answered about the account: never overruled by an old answer
            kept = self.kept.recall(user_id, KEPT_PROFILE_USED_FOR) if self.kept else None
            if kept is None:
                raise
            log.warning(
                "event=slack_profile_kept_used user=%s error=%s what=Slack's Web API failed; "
                "its last answer about this person (under a day old) is used",
                user_id,
                type(exc).__name__,
            )
            return kept
        found = SlackProfile.from_slack(answer["user"])
        self._remember(found)
        return found

    def _remember(self, profile: SlackProfile) -> None:
        with self._lock:
            self._cache[profile.user_id] = (self._now() + self.ttl, profile)
        if self.kept is not None:
            self.kept.keep(profile)

    def ours(self, profile: SlackProfile) -> bool:
        """An account of the trust's own workspace(s): not a stranger, not of another org."""
        return not profile.stranger and self.workspace().admits(
            [profile.team_id], profile.enterprise_id
        )

    def person(
        self, user_id: str, team_id: str | None = None, enterprise_id: str | None = None
    ) -> Person:
        """The person behind a Slack account that may act in WardKey, or NotAllowed. `team_id`
        (and `enterprise_id`) say where the request came from, which must be ours too."""
        if team_id and not self.workspace().admits([team_id], enterprise_id):
            raise NotAllowed(OUTSIDER)
        profile = self.profile(user_id)
        if not self.ours(profile):
            log.warning("event=outsider_refused user=%s team=%s", user_id, profile.team_id)
            raise NotAllowed(OUTSIDER)
        if profile.deleted or profile.restricted or profile.is_bot:
            raise NotAllowed(NOT_A_MEMBER)
        return profile.person()

    def user_id_for(self, member: str) -> str | None:
        """A policy member (Slack ID or e-mail) as a Slack user ID, to send them messages. An
        e-mail that only an account outside the trust's workspace carries finds nobody."""
        if "@" not in member:
            return member
        with self._lock:
            hit = self._by_email.get(member)
            if hit is not None and hit[0] > self._now():
                return hit[1]
        user_id: str | None = None
        try:
            found = SlackProfile.from_slack(self.client.users_lookupByEmail(email=member)["user"])
        except SlackApiError as exc:
            if slack_unwell(exc):
                raise  # Slack failed, not the look-up: never remembered as "nobody"
            found = None
        if found is not None:
            self._remember(found)
            if self.ours(found):
                user_id = found.user_id
            else:
                log.warning("event=member_outside_workspace user=%s", found.user_id)
        with self._lock:
            self._by_email[member] = (self._now() + self.ttl, user_id)
        return user_id

    def profile_of(self, member: str) -> SlackProfile | None:
        """A policy member's Slack profile (cached), or None when Slack knows no such account
        in the trust's workspace. A Slack failure (5xx, 429) is raised, never taken as None."""
        user_id = self.user_id_for(member)
        if user_id is None:
            return None
        try:
            return self.profile(user_id)
        except SlackApiError as exc:
            if slack_unwell(exc):
                raise
            return None

    def name_of(self, member: str, slack_user_id: str | None = None) -> str | None:
        """How Slack names a person (their full name), found from their Slack ID or a policy
        member (e-mail or ID); None when Slack does not know them."""
        try:
            found = self.profile(slack_user_id) if slack_user_id else self.profile_of(member)
        except SlackApiError as exc:
            if slack_unwell(exc):
                raise
            found = None
        return found.name if found is not None else None

    def channel_name(self, channel_id: str) -> str | None:
        """A channel's name without the #, from `conversations.info` (cached like profiles);
        None for a direct message or a channel WardKey cannot see."""
        with self._lock:
            hit = self._channels.get(channel_id)
            if hit is not None and hit[0] > self._now():
                return hit[1]
        name: str | None = None
        try:
            found = self.client.conversations_info(channel=channel_id)["channel"]
        except SlackApiError as exc:
            if slack_unwell(exc):
                raise
            log.warning(
                "event=channel_lookup_failed channel=%s error=%s",
                channel_id,
                exc.response.get("error"),
            )
        else:
            if not found.get("is_im") and found.get("name"):
                name = str(found["name"])
        with self._lock:
            self._channels[channel_id] = (self._now() + self.ttl, name)
        return name


def slack_unwell(exc: SlackApiError) -> bool:
    """Slack itself failed (5xx, rate limit): the answer says nothing about the question."""
    status = getattr(exc.response, "status_code", 200)
    error = exc.response.get("error") if exc.response is not None else None
    return status >= 500 or status == 429 or error in ("ratelimited", "internal_error")
