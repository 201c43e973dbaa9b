"""The policy manifest as pydantic models: shapes and single-field rules only.

Rules that relate one part of the manifest to another (an unknown group, a cap above its path's
cap, an approval that can never be satisfied) live in `app.policy.checks`, so that every one of
them is reported with its own location instead of stopping at the first.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    PrivateAttr,
    Tag,
    WithJsonSchema,
    model_validator,
)

from app.policy.durations import (
    DurationError,
    format_duration,
    parse_duration,
    suggest_duration,
)

BREAK_GLASS_PATH = "breakglass"
REQUIRED_PATHS = ("clinical", "admin", "engineering", BREAK_GLASS_PATH)
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

_SLACK_USER = re.compile(r"^[UW][A-Z0-9]{2,}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_SLACK_CHANNEL = re.compile(r"^[CGD][A-Z0-9]{2,}$")
_ENV_VAR = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("write a duration like 15m, 2h, 1h30m or 7d")
    if isinstance(value, int):
        raise ValueError(f"{value} has no unit: write {value}m, {value}h or {value}d")
    try:
        return parse_duration(value)
    except DurationError as exc:
        if "more than a year" in str(exc):
            raise
        meant = suggest_duration(value)
        hint = f" (did you mean '{meant}'?)" if meant else ""
        raise ValueError(
            f"'{value[:40]}' is not a duration; write it like 15m, 2h, 1h30m or 7d{hint}"
        ) from None


# What editors check as people type (`wardkey policy schema`): the same shapes as the
# validators below, as JSON Schema patterns.
_DURATION_SCHEMA = {
    "type": "string",
    "pattern": r"^\s*(?=\d)(\d+\s*[dD])?\s*(\d+\s*[hH])?\s*(\d+\s*[mM])?\s*$",
    "description": "A duration: 15m, 2h, 1h30m or 7d.",
}

Duration = Annotated[
    timedelta,
    BeforeValidator(_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(_DURATION_SCHEMA),
]


def _member(value: str) -> str:
    cleaned = value.strip()
    if _SLACK_USER.match(cleaned):
        return cleaned
    if _EMAIL.match(cleaned):
        return cleaned.lower()
    hint = (
        " (a '- ' item indented deeper than the one above it is read as part of it: line them up)"
        if " - " in cleaned
        else ""
    )
    raise ValueError(
        f"'{value}' is neither a Slack user ID (U0123ABCD) nor an e-mail address{hint}"
    )


Member = Annotated[
    str,
    AfterValidator(_member),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\s*([UW][A-Z0-9]{2,}|[^@\s]+@[^@\s]+\.[^@\s]+)\s*$",
            "description": "A Slack user ID (U0123ABCD) or an e-mail address.",
        }
    ),
]


def _channel(value: str) -> str:
    if not _SLACK_CHANNEL.match(value):
        raise ValueError(f"'{value}' is not a Slack channel ID (like C0123ABCD)")
    return value


ChannelId = Annotated[
    str,
    AfterValidator(_channel),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": _SLACK_CHANNEL.pattern,
            "description": "A Slack channel ID (C0123ABCD).",
        }
    ),
]


def _env_var(value: str) -> str:
    if not _ENV_VAR.match(value):
        raise ValueError(
            "expected the name of an environment variable that holds the secret "
            "(like PHARMACY_DB_PASSWORD), never the secret itself"
        )
    return value


EnvVarName = Annotated[
    str,
    AfterValidator(_env_var),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": _ENV_VAR.pattern,
            "description": "The name of the environment variable that holds the secret.",
        }
    ),
]


def _name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(
            f"'{value}' is not a valid name: use lower-case letters, digits, '-', '_' or '.'"
        )
    return value


Name = Annotated[
    str,
    AfterValidator(_name),
    WithJsonSchema({"type": "string", "pattern": _NAME.pattern}),
]


def _local_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(
                f"'{value}' is not a date and time; write it like 2026-12-24 09:00"
            ) from None
    else:
        raise ValueError("write a date and time like 2026-12-24 09:00")
    if parsed.tzinfo is not None:
        raise ValueError("give a local time without an offset: it is read in the policy timezone")
    return parsed


LocalDateTime = Annotated[
    datetime,
    BeforeValidator(_local_datetime),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\s*\d{4}-\d{2}-\d{2}[ T]\d{1,2}:\d{2}(:\d{2})?\s*$",
            "description": "A local date and time, like 2026-12-24 09:00.",
        }
    ),
]


def _zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"'{value}' is not a known time zone (use an IANA name like Europe/London)"
        ) from None
    return value


TimeZoneName = Annotated[str, AfterValidator(_zone)]


def _time_of_day(value: Any) -> Any:
    # YAML 1.1 reads 9:00 unquoted as the number 540 (base 60), which pydantic would take as
    # 00:09: a number is never a time of day here.
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError("write the time in quotes, like '09:00' (YAML reads 9:00 as a number)")
    return value


TimeOfDay = Annotated[
    time,
    BeforeValidator(_time_of_day),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\d{1,2}:\d{2}(:\d{2})?$",
            "description": "A local time of day in quotes, like '09:00'.",
        }
    ),
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Channels(Strict):
    security_alerts: ChannelId = Field(description="Channel for security alerts.")
    manager_reviews: ChannelId = Field(description="Channel for break-glass reviews and digests.")


class UseLimits(Strict):
    """Break-glass limits over rolling windows (a day: the 24 hours before; a week: the 7 days
    before). Each is optional; none set: no limit."""

    uses_per_day: int | None = Field(
        default=None, ge=1, description="Break-glass uses allowed in any 24 hours."
    )
    uses_per_week: int | None = Field(
        default=None, ge=1, description="Break-glass uses allowed in any 7 days."
    )
    cooldown: Duration | None = Field(
        default=None, description="Least time from the start of one use to the next."
    )
    time_per_day: Duration | None = Field(
        default=None,
        description="Most break-glass access time (from grant to end) in any 24 hours, this "
        "use's full length included.",
    )
    time_per_week: Duration | None = Field(
        default=None, description="Most break-glass access time in any 7 days, as time_per_day."
    )


class BreakGlassLimits(Strict):
    """Budgets on break-glass (the breakglass path only). A use over a limit, or by someone
    with an overdue review, needs a second person's confirmation in Slack (or, with
    over_limit: refuse, is refused; an overdue review always asks for a confirmation)."""

    per_person: UseLimits | None = Field(default=None, description="Limits on each person.")
    per_group: dict[Name, UseLimits] = Field(
        default={},
        description="Limits on each named group (a ward, a team): its members' uses together.",
    )
    over_limit: Literal["confirm", "refuse"] = Field(
        default="confirm",
        description="confirm: a use over a limit waits for a second person to confirm it in "
        "Slack; refuse: it is refused.",
    )
    confirmers: list[ApproverSource] = Field(
        default=[],
        description="Who may confirm a held use; none: the approvers on duty of the role's own "
        "path, else the break-glass reviewers, else the WardKey admins (never the person "
        "themself or their other accounts).",
    )


def _hours(value: Any) -> tuple[time, time]:
    if isinstance(value, tuple):
        return value
    found = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", str(value))
    if (
        not found
        or int(found[1]) > 23
        or int(found[3]) > 23
        or max(int(found[2]), int(found[4])) > 59
    ):
        raise ValueError(f"'{value}' is not a range of local times like '07:00-19:00'")
    start, end = time(int(found[1]), int(found[2])), time(int(found[3]), int(found[4]))
    if start == end:
        raise ValueError("usual_hours needs a start and an end that differ")
    return start, end


HourRange = Annotated[
    tuple[time, time],
    BeforeValidator(_hours),
    PlainSerializer(lambda v: f"{v[0]:%H:%M}-{v[1]:%H:%M}", return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\d{1,2}:\d{2}-\d{1,2}:\d{2}$",
            "description": "Local times, start-end, like '07:00-19:00' (may pass midnight).",
        }
    ),
]


class BreakGlassFlags(Strict):
    """When the security alert and the review card flag a break-glass use."""

    after_denial_within: Duration = Field(
        default=timedelta(hours=2),
        description="Flag a use this soon after a denial of the same person's request for the "
        "same access.",
    )
    usual_hours: HourRange | None = Field(
        default=None,
        description="Local working hours, like '07:00-19:00': a use outside them is flagged. "
        "None: usual hours are learnt from the person's own requests (see history_days).",
    )
    history_days: int = Field(
        default=30,
        ge=1,
        le=365,
        description="Without usual_hours: a use is flagged when the person made at least "
        "history_min_requests requests in these days and none within an hour of this time "
        "of day.",
    )
    history_min_requests: int = Field(
        default=5, ge=1, description="Fewer earlier requests than this: too little to judge."
    )
    unusual_target_days: int = Field(
        default=30,
        ge=1,
        le=365,
        description="Flag a target no one in the person's groups asked for in these days.",
    )
    crowd_window: Duration = Field(
        default=timedelta(minutes=15),
        description="Flag a use when crowd_size or more people broke glass on the same target "
        "within this time.",
    )
    crowd_size: int = Field(default=2, ge=2, description="People, this one included.")


class PersonAliases(Strict):
    """Other accounts of one person, so a second Slack account can never approve its twin."""

    accounts: list[Member] = Field(min_length=1)


class RotaOverride(Strict):
    start: LocalDateTime
    end: LocalDateTime
    member: Member
    replaces: Member | None = None
    note: str = ""

    @model_validator(mode="after")
    def _ordered(self) -> RotaOverride:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class RosterSource(Strict):
    """A rostering export (CSV or iCalendar), as a file or an HTTPS URL."""

    file: str | None = Field(default=None, description="Path of the export on this machine.")
    url: str | None = Field(default=None, description="HTTPS URL the export is published at.")
    format: Literal["csv", "ics"] = Field(description="csv or ics (iCalendar).")
    role: str | None = Field(
        default=None,
        description="Only shifts with this role (the CSV's role column, an iCalendar "
        "event's CATEGORIES); none: every shift in the export.",
    )
    insecure: bool = Field(default=False, description="A test system only: accept an http:// URL.")

    @model_validator(mode="after")
    def _one_place(self) -> RosterSource:
        if (self.file is None) == (self.url is None):
            raise ValueError("give exactly one of 'file' or 'url'")
        return self


class PagerDutySource(Strict):
    """A PagerDuty schedule or escalation policy, read with the REST API v2 (GET /oncalls)."""

    schedule: str | None = Field(
        default=None,
        pattern=r"^[A-Z0-9]{3,20}$",
        description="The schedule's ID (PABC123); or give escalation_policy.",
    )
    escalation_policy: str | None = Field(
        default=None,
        pattern=r"^[A-Z0-9]{3,20}$",
        description="An escalation policy's ID (PXYZ789): the people on call at its `level`, "
        "through whichever schedules it names; or give schedule.",
    )
    level: int = Field(
        default=1,
        ge=1,
        le=20,
        description="With escalation_policy: the escalation level whose on-call people approve "
        "(1: the first responders).",
    )
    token_env: EnvVarName = Field(
        description="Environment variable that holds a read-only REST API token."
    )
    api_url: str = Field(
        default="https://api.pagerduty.com",
        description="REST API base URL (https://api.eu.pagerduty.com for the EU service region).",
    )
    insecure: bool = Field(
        default=False, description="A test system only: accept an http:// api_url."
    )

    @model_validator(mode="after")
    def _schedule_or_policy(self) -> PagerDutySource:
        if (self.schedule is None) == (self.escalation_policy is None):
            raise ValueError("give exactly one of 'schedule' or 'escalation_policy'")
        if self.schedule is not None and self.level != 1:
            raise ValueError("'level' goes with 'escalation_policy', not 'schedule'")
        return self


class OpsgenieSource(Strict):
    """An Opsgenie schedule, read with the Who is On Call API (GET /v2/schedules/…/on-calls)."""

    schedule: str = Field(
        min_length=1,
        max_length=100,
        pattern=r"^[^/?#\\]+$",
        description="The schedule's ID (a UUID) or its name.",
    )
    token_env: EnvVarName = Field(
        description="Environment variable that holds the API key (GenieKey) of an API "
        "integration allowed to read the schedule."
    )
    api_url: str = Field(
        default="https://api.opsgenie.com",
        description="API base URL (https://api.eu.opsgenie.com for the EU instance).",
    )
    insecure: bool = Field(
        default=False, description="A test system only: accept an http:// api_url."
    )


class RotaSource(Strict):
    """Where a rota's on-call people come from, instead of members and a rotation."""

    roster: RosterSource | None = Field(
        default=None, description="A rostering export: CSV or iCalendar, a file or an HTTPS URL."
    )
    pagerduty: PagerDutySource | None = Field(
        default=None,
        description="A PagerDuty schedule or escalation policy, read with its REST API.",
    )
    opsgenie: OpsgenieSource | None = Field(
        default=None, description="An Opsgenie schedule, read with its Who is On Call API."
    )
    refresh_every: Duration = Field(
        default=timedelta(minutes=5), description="How long a read is used before reading again."
    )
    stale_after: Duration = Field(
        default=timedelta(hours=2),
        description="How long the last good read is used while the source cannot be read; "
        "after that nobody from this rota may approve, and a request nobody else can approve "
        "goes at once to its escalation group.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> RotaSource:
        given = [s for s in (self.roster, self.pagerduty, self.opsgenie) if s is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'roster', 'pagerduty' or 'opsgenie'")
        return self


class Rota(Strict):
    members: list[Member] = []
    rotation: Literal["daily", "weekly"] | None = None
    source: RotaSource | None = Field(
        default=None,
        description="Read who is on call from a rostering export, PagerDuty or Opsgenie "
        "instead of members and a rotation.",
    )
    handoff: TimeOfDay = time(9, 0)
    handoff_day: Literal[
        "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"
    ] = "monday"
    starts: date | None = Field(
        default=None, description="Date of the first shift, which members[0] takes."
    )
    on_call: int = Field(default=1, ge=1, description="How many members are on call at once.")
    overrides: list[RotaOverride] = []
    escalation: Name | None = Field(default=None, description="Group to escalate to.")


_ATTRIBUTE = r"^[A-Za-z][A-Za-z0-9-]*$"


class LdapGroup(Strict):
    """A group in Active Directory or OpenLDAP, read with the LDAP protocol."""

    group: str = Field(min_length=3, description="The group's DN (cn=ward7-nurses,ou=groups,…).")
    target: Name | None = Field(
        default=None,
        description="An ldap target whose connection settings and bind password are used; "
        "none: this group's own settings and secrets.",
    )
    settings: dict[str, Any] = Field(
        default={},
        description="Own connection settings, as an ldap target's (url, bind_dn, user_base, …).",
    )
    secrets: dict[str, EnvVarName] = Field(
        default={}, description="Own secrets by environment variable name: bind_password."
    )
    insecure: bool = Field(
        default=False, description="A test system only: accept ldap:// without StartTLS."
    )
    membership: Literal["member", "memberOf"] = Field(
        default="member",
        description="member: the group's member attribute lists people (and groups); "
        "memberOf: the people under user_base whose memberOf names the group (direct "
        "members only).",
    )
    nested: bool = Field(
        default=True,
        description="With membership: member, people in member groups count too (each group "
        "followed once). memberOf reads direct members only: set nested: false with it.",
    )
    email_attribute: str = Field(
        default="mail", pattern=_ATTRIBUTE, description="The attribute holding the e-mail."
    )
    slack_attribute: str | None = Field(
        default=None,
        pattern=_ATTRIBUTE,
        description="An attribute holding the person's Slack user ID, used instead of the "
        "e-mail when it has one.",
    )
    disabled_attribute: str | None = Field(
        default=None,
        pattern=_ATTRIBUTE,
        description="An attribute whose presence (other than FALSE) marks a disabled account, "
        "e.g. nsAccountLock or pwdAccountLockedTime. userAccountControl's ACCOUNTDISABLE bit is "
        "always read.",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"group": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_connection(self) -> LdapGroup:
        if self.target is not None and (self.settings or self.secrets):
            raise ValueError("give either 'target' or your own 'settings' and 'secrets', not both")
        if self.membership == "memberOf" and self.nested:
            raise ValueError(
                "membership: memberOf reads direct members only: set nested: false, or use "
                "membership: member to follow member groups"
            )
        return self


class EntraGroup(Strict):
    """A Microsoft Entra ID group, read with Microsoft Graph (transitive members)."""

    group: str = Field(
        min_length=1,
        max_length=256,
        description="The group's object ID, or its display name exactly (looked up once; "
        "refused if several groups have it).",
    )
    target: Name | None = Field(
        default=None,
        description="An entra target whose tenant, app registration and secret are used; none: "
        "this group's own settings and secrets.",
    )
    settings: dict[str, Any] = Field(
        default={}, description="Own settings, as an entra target's (tenant_id, client_id, …)."
    )
    secrets: dict[str, EnvVarName] = Field(
        default={}, description="Own secrets by environment variable name: client_secret."
    )
    insecure: bool = Field(default=False, description="A test system only: accept http://.")
    email_attribute: Literal["mail", "userPrincipalName"] = Field(
        default="mail", description="Which user property is the person's e-mail in Slack."
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"group": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_connection(self) -> EntraGroup:
        if self.target is not None and (self.settings or self.secrets):
            raise ValueError("give either 'target' or your own 'settings' and 'secrets', not both")
        return self


class DirectoryGroup(Strict):
    """A group whose members are read from the trust's directory instead of listed."""

    ldap: LdapGroup | None = Field(
        default=None, description="An Active Directory or OpenLDAP group (its DN)."
    )
    entra: EntraGroup | None = Field(
        default=None, description="A Microsoft Entra ID group (its object ID)."
    )
    refresh_every: Duration = Field(
        default=timedelta(minutes=5), description="How long a read is used before reading again."
    )
    stale_after: Duration = Field(
        default=timedelta(hours=2),
        description="How long the last good read is used while the directory cannot be read; "
        "after that the group has nobody in it (fail closed).",
    )
    revoke_leavers: bool = Field(
        default=False,
        description="End the active access of someone who left the group or was disabled, "
        "when no other group still makes them eligible.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> DirectoryGroup:
        if (self.ldap is None) == (self.entra is None):
            raise ValueError("give exactly one of 'ldap' or 'entra'")
        return self

    @property
    def kind(self) -> Literal["ldap", "entra"]:
        return "ldap" if self.ldap is not None else "entra"

    @property
    def source(self) -> LdapGroup | EntraGroup:
        found = self.ldap or self.entra
        assert found is not None
        return found


def _group_kind(value: Any) -> str:
    return "[directory-group]" if isinstance(value, dict | DirectoryGroup) else "[listed]"


# A group is a list of people or a group read from the directory; the tags keep an error in
# one from being reported against the other too (app/policy/errors.py leaves them out).
GroupSpec = Annotated[
    Annotated[list[Member], Tag("[listed]")] | Annotated[DirectoryGroup, Tag("[directory-group]")],
    Discriminator(_group_kind),
]


class ApproverSource(Strict):
    group: Name | None = None
    rota: Name | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ApproverSource:
        if (self.group is None) == (self.rota is None):
            raise ValueError("give exactly one of 'group' or 'rota'")
        return self


class ServiceNowSystem(Strict):
    """A ServiceNow instance, read with the Table API (GET /api/now/table/{table})."""

    instance_url: str = Field(
        description="The instance's base URL, like https://trust.service-now.com."
    )
    table: str = Field(
        default="incident",
        pattern=r"^[a-z0-9_]{1,80}$",
        description="The table tickets are looked up in by number (incident, sc_req_item…).",
    )
    user_env: EnvVarName | None = Field(
        default=None, description="Environment variable that holds the user name (basic auth)."
    )
    password_env: EnvVarName | None = Field(
        default=None, description="Environment variable that holds the password (basic auth)."
    )
    token_env: EnvVarName | None = Field(
        default=None,
        description="Environment variable that holds an OAuth access token (instead of a user "
        "name and password).",
    )
    insecure: bool = Field(
        default=False, description="A test system only: accept an http:// instance_url."
    )

    @model_validator(mode="after")
    def _one_way_in(self) -> ServiceNowSystem:
        basic = self.user_env is not None or self.password_env is not None
        if basic and (self.user_env is None or self.password_env is None):
            raise ValueError("basic auth needs both user_env and password_env")
        if basic == (self.token_env is not None):
            raise ValueError("give either user_env and password_env, or token_env")
        return self


class JiraSystem(Strict):
    """A Jira site, read with its REST API (GET /rest/api/{2,3}/issue/{key})."""

    url: str = Field(description="The site's base URL, like https://trust.atlassian.net.")
    api_version: Literal[2, 3] = Field(
        default=3, description="REST API version: 3 (Jira Cloud) or 2 (Jira Data Center)."
    )
    email_env: EnvVarName | None = Field(
        default=None,
        description="Environment variable that holds the account's e-mail address (basic auth "
        "with an API token).",
    )
    token_env: EnvVarName = Field(
        description="Environment variable that holds the API token (with email_env) or a "
        "personal access token, sent as a bearer token (without)."
    )
    insecure: bool = Field(default=False, description="A test system only: accept an http:// url.")


class TicketSystem(Strict):
    """A ticket system requests name tickets in: ServiceNow or Jira."""

    servicenow: ServiceNowSystem | None = Field(default=None, description="A ServiceNow instance.")
    jira: JiraSystem | None = Field(default=None, description="A Jira site.")

    @model_validator(mode="after")
    def _exactly_one(self) -> TicketSystem:
        if (self.servicenow is None) == (self.jira is None):
            raise ValueError("give exactly one of 'servicenow' or 'jira'")
        return self

    @property
    def label(self) -> str:
        return "ServiceNow" if self.servicenow is not None else "Jira"


class PathTicket(Strict):
    """The ticket a path's requests name, checked in a ticket system."""

    system: Name = Field(description="The ticket system (under ticket_systems) it is in.")
    assigned: Literal["any", "requester", "requester_or_group"] = Field(
        default="any",
        description="Whom the ticket must be assigned to: anyone, the requester (by e-mail), "
        "or the requester or an assignment group they belong to (ServiceNow only).",
    )
    ends_access: bool = Field(
        default=False,
        description="End the access when the ticket is resolved or closed (checked by a sweep).",
    )
    notes: bool = Field(
        default=False,
        description="Add a work note (ServiceNow) or comment (Jira) to the ticket when access "
        "is granted and when it ends.",
    )
    when_down: Literal["refuse", "approver_checks"] = Field(
        default="refuse",
        description="When the ticket system does not answer at request time: refuse the "
        "request (the default), or send it to the approvers marked 'not checked' for them to "
        "check the ticket themselves.",
    )


class AccessPath(Strict):
    description: str = ""
    risk: Literal["low", "medium", "high", "critical"]
    approvers: list[ApproverSource] = []
    approvals: int = Field(default=1, ge=1, le=10)
    max_duration: Duration
    max_total_duration: Duration | None = Field(
        default=None, description="Cap on the whole grant including extensions."
    )
    reapprove_extensions: bool = False
    ticket_required: bool = False
    ticket_pattern: str | None = None
    ticket: PathTicket | None = Field(
        default=None,
        description="Check the ticket in a ticket system: it must exist and be open (a "
        "ticket is then required).",
    )
    approval_sla: Duration | None = None
    pending_timeout: Duration = timedelta(hours=24)
    warn_before: Duration = timedelta(minutes=10)
    channel: ChannelId | None = None
    reviewers: list[ApproverSource] = []
    review_within: Duration | None = None
    review_escalate_to: list[ApproverSource] = Field(
        default=[],
        description="Break-glass: who is told, once, when a review passes review_within (e.g. "
        "the Caldicott Guardian), besides security and the WardKey admins.",
    )
    review_escalate_channel: ChannelId | None = Field(
        default=None, description="Break-glass: a channel told, once, when a review is overdue."
    )
    limits: BreakGlassLimits | None = Field(
        default=None, description="Break-glass budgets (per person, per group)."
    )
    flags: BreakGlassFlags = Field(
        default=BreakGlassFlags(), description="When break-glass uses are flagged."
    )
    review_reminder_every: Duration = Field(
        default=timedelta(hours=4),
        description="How often reviewers are reminded of an undecided break-glass review.",
    )
    step_up: bool = Field(
        default=False,
        description="An approval needs a fresh sign-in with the identity provider "
        "(identity_provider), as the same person, with the MFA it asks for: Approve in Slack "
        "sends the approver a sign-in link instead of approving.",
    )

    @model_validator(mode="after")
    def _pattern_compiles(self) -> AccessPath:
        if self.ticket_pattern is not None:
            try:
                re.compile(self.ticket_pattern)
            except re.error as exc:
                raise ValueError(
                    f"ticket_pattern is not a valid regular expression: {exc}"
                ) from None
        return self

    @property
    def total_cap(self) -> timedelta:
        return self.max_total_duration or self.max_duration


class AccountMapping(Strict):
    """How a person maps to their account on a target."""

    template: str = Field(
        default="{email}", description="Placeholders: {email}, {local} (before the @), {slack_id}."
    )
    overrides: dict[Member, str] = {}

    @model_validator(mode="after")
    def _known_placeholders(self) -> AccountMapping:
        try:
            self.template.format(email="e", local="l", slack_id="s")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"template uses an unknown placeholder {exc}; use {{email}}, {{local}} "
                "or {slack_id}"
            ) from None
        return self


class Role(Strict):
    path: Name
    entitlement: str = Field(
        min_length=1, description="What the target calls it: a DB role, group DN or group id."
    )
    eligible: list[Name] = Field(min_length=1, description="Groups whose members may request it.")
    max_duration: Duration | None = None
    break_glass: bool = False
    record_sessions: bool = False
    description: str = ""


class Target(Strict):
    kind: Literal["postgres", "ldap", "entra", "webhook"]
    description: str = ""
    settings: dict[str, Any] = {}
    secrets: dict[str, EnvVarName] = {}
    account: AccountMapping = AccountMapping()
    roles: dict[Name, Role] = Field(min_length=1)
    attempts: int = Field(
        default=3, ge=1, le=10, description="Tries of each call when the target fails briefly."
    )
    standing: Literal["report", "remove"] = Field(
        default="report",
        description="What reconcile does with access on the target that no grant covers.",
    )
    standing_allowed: list[str] = Field(
        default=[],
        description="Accounts that may hold the target's entitlements permanently (never "
        "reported or removed), e.g. the adapter's own account.",
    )
    insecure: bool = Field(
        default=False,
        description="A test system only: accept a plaintext or unverified connection "
        "(ldap:// without StartTLS, verify_tls: false, sslmode below verify-ca, http://). "
        "policy check warns and start-up logs each one; a password in a URL is refused anyway.",
    )


class Identity(Strict):
    """A non-human identity (service account) that an owner may elevate for a while."""

    owner: Member
    purpose: str = Field(min_length=3)
    target: Name
    role: Name
    account: str = Field(min_length=1)
    max_duration: Duration
    attest_every: Duration = Field(
        default=timedelta(days=90),
        description="How often the owner must confirm the identity is still needed.",
    )
    attest_within: Duration = Field(
        default=timedelta(days=7), description="How long the owner has to answer."
    )
    block_unattested: bool = Field(
        default=False,
        description="Refuse elevations for the identity while its attestation is overdue.",
    )


class Vendor(Strict):
    company: str = Field(min_length=1)
    people: list[Member] = Field(min_length=1)
    sponsor: Member
    contract_end: date


# (rota name, instant) -> the people on call then, per the rota's source.
OnCallLookup = Callable[[str, datetime], list[str]]
# group name -> its members now, per the directory (app.groups); [] when it cannot say.
GroupLookup = Callable[[str], list[str]]


IdTokenClaim = Literal["email", "upn", "preferred_username"]


class IdentityProvider(Strict):
    """The trust's OpenID Connect provider, for step-up approval (docs/step-up.md)."""

    issuer: str = Field(
        pattern=r"^https?://[^\s]+$",
        description="The provider's issuer URL exactly as its ID tokens say it (Entra ID: "
        "https://login.microsoftonline.com/<tenant-id>/v2.0); its discovery document is read "
        "from <issuer>/.well-known/openid-configuration.",
    )
    client_id: str = Field(min_length=1, description="WardKey's application (client) ID.")
    client_secret_env: EnvVarName = Field(
        description="Environment variable holding WardKey's client secret."
    )
    claim: IdTokenClaim = Field(
        default="email",
        description="The ID token claim that names the person: it must equal the e-mail of "
        "the approver's Slack account (email, upn or preferred_username).",
    )
    max_age: Duration = Field(
        default=timedelta(minutes=5),
        description="How recent the sign-in must be (auth_time); also sent as max_age.",
    )
    amr: list[str] = Field(
        default=["mfa"],
        description="Authentication methods the ID token's amr must all include (e.g. "
        "[mfa], or [mfa, pwd]); [] checks none.",
    )
    acr_values: list[str] = Field(
        default=[],
        description="Authentication context classes to ask for; when given, the ID token's "
        "acr must be one of them.",
    )
    link_valid_for: Duration = Field(
        default=timedelta(minutes=5),
        description="How long the sign-in link sent to the approver can be used (once).",
    )
    insecure: bool = Field(
        default=False, description="A test system only: accept an http:// issuer."
    )


class Policy(Strict):
    version: Literal[1] = 1
    organisation: str = ""
    timezone: TimeZoneName
    channels: Channels
    admins: Name = Field(description="Group that may revoke any grant and resolve failures.")
    security_admins: Name | None = Field(
        default=None,
        description="Group that may lock a target down (/jit lockdown); default: the admins.",
    )
    people: dict[Member, PersonAliases] = {}
    groups: dict[Name, GroupSpec] = Field(
        description="Named groups of people: a list, or a group read from the directory."
    )
    oncall: dict[Name, Rota] = {}
    paths: dict[Name, AccessPath]
    targets: dict[Name, Target]
    identities: dict[Name, Identity] = {}
    vendors: dict[Name, Vendor] = {}
    ticket_systems: dict[Name, TicketSystem] = Field(
        default={}, description="Ticket systems paths check tickets in (ServiceNow, Jira)."
    )
    identity_provider: IdentityProvider | None = Field(
        default=None,
        description="The OpenID Connect provider approvers sign in with on paths that have "
        "step_up (docs/step-up.md).",
    )
    digest_at: TimeOfDay | None = Field(
        default=time(8, 0),
        description="Local time of the daily digest to the managers' channel; null: none.",
    )

    # Who is on call in a rota with a source, read outside app/policy and injected here
    # (app.oncall); without one, such a rota names nobody (fail closed).
    _on_call: OnCallLookup | None = PrivateAttr(default=None)
    # Who is in a group read from the directory, read outside app/policy and injected here
    # (app.groups); without one, such a group has nobody in it (fail closed).
    _groups: GroupLookup | None = PrivateAttr(default=None)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def with_on_call(self, lookup: OnCallLookup | None) -> Policy:
        """This policy, reading the rotas that have a source through `lookup`."""
        copy = self.model_copy()
        copy._on_call = lookup
        return copy

    @property
    def on_call_lookup(self) -> OnCallLookup | None:
        return self._on_call

    def on_call_from_source(self, rota: str, at: datetime) -> list[str]:
        """Who the rota's source says is on call at `at`; nobody when it cannot say."""
        return [] if self._on_call is None else self._on_call(rota, at)

    def with_groups(self, lookup: GroupLookup | None) -> Policy:
        """This policy, reading the groups that come from the directory through `lookup`."""
        copy = self.model_copy()
        copy._groups = lookup
        return copy

    @property
    def group_lookup(self) -> GroupLookup | None:
        return self._groups

    def directory_groups(self) -> dict[str, DirectoryGroup]:
        """The groups read from the directory, by name."""
        return {n: g for n, g in self.groups.items() if isinstance(g, DirectoryGroup)}

    def directory_target(self, group: str) -> str | None:
        """The target whose connection a directory group is read with: the one it names, or,
        when it names none and brings no settings of its own, the policy's only target of its
        kind (`ldap: "CN=…"` alone). None: its own settings, or no single such target."""
        found = self.directory_groups().get(group)
        if found is None:
            return None
        source = found.source
        if source.target is not None:
            return source.target
        if source.settings:
            return None
        kinds = [n for n, t in self.targets.items() if t.kind == found.kind]
        return kinds[0] if len(kinds) == 1 else None

    def listed(self, group: str) -> list[str]:
        """The members the policy itself lists for `group` (none for a directory group)."""
        found = self.groups.get(group)
        return list(found) if isinstance(found, list) else []

    def members_of(self, group: str) -> list[str]:
        """Who is in `group` now: the policy's list, or what the directory says (nobody when
        it cannot say: fail closed)."""
        found = self.groups.get(group)
        if isinstance(found, DirectoryGroup):
            return [] if self._groups is None else self._groups(group)
        return list(found or [])


def policy_schema() -> dict[str, Any]:
    """The manifest's JSON Schema (draft 2020-12), for editors that validate as people type."""
    schema = Policy.model_json_schema(mode="validation")
    _closed_names(schema)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://wardkey.example/policy.schema.json",
        **schema,
        "title": "WardKey policy manifest",
        "description": "Who may ask for which access, who approves it, and for how long. "
        "`wardkey policy check FILE` checks what a schema cannot (names that must exist, "
        "caps, rotas).",
    }


def _closed_names(node: Any) -> None:
    """A mapping whose names must match a pattern has no other names (as validation says)."""
    if isinstance(node, dict):
        if "patternProperties" in node:
            node.setdefault("additionalProperties", False)
        for value in node.values():
            _closed_names(value)
    elif isinstance(node, list):
        for value in node:
            _closed_names(value)
