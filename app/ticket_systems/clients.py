"""Reading tickets from ServiceNow (Table API) and Jira (REST API v3 or v2), and writing a
work note or comment on them, with httpx.

Every failure to get an answer is a `TicketUnreadable` whose message says what went wrong
without any credential; a ticket the system does not have is `TicketNotFound`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import httpx

from app.policy.model import JiraSystem, ServiceNowSystem, TicketSystem
from app.policy.tickets import TicketFacts

# The request form is answered within Slack's 3 seconds, the ticket check included: each call
# may take 2 s, and a look-up with its group membership check 2.5 s in all.
TIMEOUT = 2.0
LOOKUP_BUDGET = 2.5
# What a ticket number may look like before it goes into a query (a ServiceNow encoded query
# joins conditions with ^, so anything else could widen it).
SERVICENOW_NUMBER = re.compile(r"^[A-Z]{2,10}[0-9]{4,12}$")
JIRA_KEY = re.compile(r"^[A-Z][A-Z0-9_]{1,9}-[0-9]{1,9}$")
_QUERY_UNSAFE = re.compile(r"[\^=,\s]")


class TicketUnreadable(Exception):
    """The ticket system did not give an answer (down, too slow, refused our credentials, rate
    limited); the message is safe to log. `retry_after`: how long it asked us to wait."""

    def __init__(self, message: str, retry_after: timedelta | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TicketNotFound(Exception):
    """The system answered: it has no such ticket (or this account may not see it)."""


def _retry_after(response: httpx.Response) -> timedelta | None:
    value = response.headers.get("Retry-After", "").strip()
    return timedelta(seconds=int(value)) if value.isdigit() else None


def _secret(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "")
    if not value:
        raise TicketUnreadable(f"{name} is not set")
    return value


def _failed(where: str, response: httpx.Response, detail: str) -> TicketUnreadable:
    if response.status_code == 429:
        return TicketUnreadable(
            f"{where} is rate limited (HTTP 429): {detail}", _retry_after(response)
        )
    return TicketUnreadable(f"{where} answered HTTP {response.status_code}: {detail}")


def _send(
    client: httpx.Client,
    method: str,
    url: str,
    where: str,
    deadline: float | None = None,
    **kwargs: Any,
) -> httpx.Response:
    timeout = TIMEOUT
    if deadline is not None:
        timeout = min(TIMEOUT, deadline - time.monotonic())
        if timeout < 0.05:
            raise TicketUnreadable(f"{where} did not answer within {LOOKUP_BUDGET:g} s")
    try:
        return client.request(method, url, timeout=httpx.Timeout(timeout), **kwargs)
    except httpx.HTTPError as exc:
        raise TicketUnreadable(f"{where} did not answer ({type(exc).__name__})") from None


class ServiceNow:
    """One ServiceNow instance's Table API."""

    def __init__(self, cfg: ServiceNowSystem, env: Mapping[str, str], client: httpx.Client):
        self.cfg, self.env, self.client = cfg, env, client
        self.base = cfg.instance_url.rstrip("/")

    def _auth(self) -> dict[str, Any]:
        if self.cfg.token_env is not None:
            token = _secret(self.env, self.cfg.token_env)
            return {"headers": {"Authorization": f"Bearer {token}", "Accept": "application/json"}}
        assert self.cfg.user_env is not None and self.cfg.password_env is not None
        user = _secret(self.env, self.cfg.user_env)
        password = _secret(self.env, self.cfg.password_env)
        return {"auth": (user, password), "headers": {"Accept": "application/json"}}

    def _get(
        self, table: str, params: dict[str, str], deadline: float | None = None
    ) -> list[dict[str, Any]]:
        where = f"ServiceNow ({self.base})"
        response = _send(
            self.client,
            "GET",
            f"{self.base}/api/now/table/{table}",
            where,
            deadline,
            params=params,
            **self._auth(),
        )
        if response.status_code == 404:  # older releases answer a query matching nothing so
            return []
        if response.status_code != 200:
            raise _failed(where, response, _servicenow_error(response))
        try:
            result = response.json()["result"]
        except (ValueError, KeyError, TypeError):
            raise TicketUnreadable(f"{where} answered something that is not a result") from None
        return list(result) if isinstance(result, list) else [result]

    def find(self, key: str, requester_email: str | None, need_group: bool) -> TicketFacts:
        if not SERVICENOW_NUMBER.match(key):
            raise TicketNotFound(f"'{key}' is not a ServiceNow ticket number (like INC0012345)")
        deadline = time.monotonic() + LOOKUP_BUDGET
        fields = (
            "sys_id,number,short_description,state,active,assigned_to.email,assigned_to.name,"
            "assignment_group"
        )
        rows = self._get(
            self.cfg.table,
            {
                "sysparm_query": f"number={key}",
                "sysparm_fields": fields,
                "sysparm_display_value": "all",
                "sysparm_exclude_reference_link": "true",
                "sysparm_limit": "1",
            },
            deadline,
        )
        if not rows:
            raise TicketNotFound(f"{key} was not found in ServiceNow ({self.cfg.table})")
        row = rows[0]

        def value(name: str) -> str:
            field = row.get(name)
            return str(field.get("value") or "") if isinstance(field, dict) else str(field or "")

        def shown(name: str) -> str:
            field = row.get(name)
            if isinstance(field, dict):
                return str(field.get("display_value") or field.get("value") or "")
            return str(field or "")

        sys_id = value("sys_id")
        group_id = value("assignment_group")
        in_group: bool | None = None
        if need_group and group_id and requester_email:
            in_group = self._member(group_id, requester_email, deadline)
        return TicketFacts(
            system="",
            label="ServiceNow",
            key=value("number") or key,
            title=shown("short_description"),
            state=shown("state"),
            open=value("active").lower() == "true",
            url=f"{self.base}/{self.cfg.table}.do?sys_id={sys_id}",
            assignee_email=value("assigned_to.email") or None,
            assignee_name=shown("assigned_to.name") or None,
            group=shown("assignment_group") or None,
            requester_in_group=in_group,
            ref=sys_id,
        )

    def _member(self, group_id: str, email: str, deadline: float) -> bool:
        if _QUERY_UNSAFE.search(email) or _QUERY_UNSAFE.search(group_id):
            return False
        rows = self._get(
            "sys_user_grmember",
            {
                "sysparm_query": f"group={group_id}^user.email={email}",
                "sysparm_fields": "sys_id",
                "sysparm_limit": "1",
            },
            deadline,
        )
        return bool(rows)

    def add_note(self, facts: TicketFacts, text: str) -> None:
        """A work note on the record (PATCH its work_notes: ServiceNow appends to the journal)."""
        where = f"ServiceNow ({self.base})"
        response = _send(
            self.client,
            "PATCH",
            f"{self.base}/api/now/table/{self.cfg.table}/{facts.ref}",
            where,
            json={"work_notes": text},
            **self._auth(),
        )
        if response.status_code != 200:
            raise _failed(where, response, _servicenow_error(response))


def _servicenow_error(response: httpx.Response) -> str:
    """ServiceNow's error body: {"error": {"message", "detail"}, "status": "failure"}."""
    try:
        error = response.json()["error"]
        return str(error.get("message") or "")[:200]
    except (ValueError, KeyError, TypeError, AttributeError):
        return response.reason_phrase


class Jira:
    """One Jira site's REST API (v3 on Cloud, v2 on Data Center)."""

    def __init__(self, cfg: JiraSystem, env: Mapping[str, str], client: httpx.Client):
        self.cfg, self.env, self.client = cfg, env, client
        self.base = cfg.url.rstrip("/")
        self.api = f"{self.base}/rest/api/{cfg.api_version}"

    def _auth(self) -> dict[str, Any]:
        token = _secret(self.env, self.cfg.token_env)
        headers = {"Accept": "application/json"}
        if self.cfg.email_env is None:
            return {"headers": {**headers, "Authorization": f"Bearer {token}"}}
        return {"auth": (_secret(self.env, self.cfg.email_env), token), "headers": headers}

    def find(self, key: str, requester_email: str | None, need_group: bool) -> TicketFacts:
        if not JIRA_KEY.match(key):
            raise TicketNotFound(f"'{key}' is not a Jira issue key (like WARD-42)")
        where = f"Jira ({self.base})"
        response = _send(
            self.client,
            "GET",
            f"{self.api}/issue/{key}",
            where,
            params={"fields": "summary,status,assignee"},
            **self._auth(),
        )
        if response.status_code == 404:
            raise TicketNotFound(f"{key} was not found in Jira")
        if response.status_code != 200:
            raise _failed(where, response, _jira_error(response))
        try:
            issue = response.json()
            fields = issue["fields"]
            status = fields.get("status") or {}
            category = (status.get("statusCategory") or {}).get("key", "")
            assignee = fields.get("assignee") or {}
            return TicketFacts(
                system="",
                label="Jira",
                key=str(issue.get("key") or key),
                title=str(fields.get("summary") or ""),
                state=str(status.get("name") or "unknown"),
                open=category != "done",
                url=f"{self.base}/browse/{issue.get('key') or key}",
                assignee_email=assignee.get("emailAddress") or None,
                assignee_name=assignee.get("displayName") or None,
                ref=str(issue.get("key") or key),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            raise TicketUnreadable(f"{where} answered something that is not an issue") from None

    def add_note(self, facts: TicketFacts, text: str) -> None:
        """A comment on the issue (v3 takes Atlassian Document Format; v2 plain text)."""
        where = f"Jira ({self.base})"
        body: Any = text
        if self.cfg.api_version == 3:
            body = {
                "type": "doc",
                "version": 1,
                "content": [
                    {"type": "paragraph", "content": [{"type": "text", "text": line}]}
                    for line in text.splitlines()
                    if line.strip()
                ],
            }
        response = _send(
            self.client,
            "POST",
            f"{self.api}/issue/{facts.ref}/comment",
            where,
            json={"body": body},
            **self._auth(),
        )
        if response.status_code not in (200, 201):
            raise _failed(where, response, _jira_error(response))


def _jira_error(response: httpx.Response) -> str:
    """Jira's error body: {"errorMessages": [...], "errors": {...}}."""
    try:
        body = response.json()
        return "; ".join(body.get("errorMessages") or [])[:200] or response.reason_phrase
    except (ValueError, AttributeError):
        return response.reason_phrase


def client_for(
    system: TicketSystem, env: Mapping[str, str], http: httpx.Client
) -> ServiceNow | Jira:
    if system.servicenow is not None:
        return ServiceNow(system.servicenow, env, http)
    assert system.jira is not None
    return Jira(system.jira, env, http)
