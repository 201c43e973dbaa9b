"""A local stand-in for Jira's REST API: get an issue and add a comment, v3 (Cloud) and v2
(Data Center).

Shaped from Atlassian's published REST API reference: `GET /rest/api/{3|2}/issue/{key}` with
`fields=` (only the fields asked for under "fields"; `status` with its `statusCategory`, whose
key is new, indeterminate or done; `assignee` a user with accountId, displayName and, where the
profile shows it, emailAddress, or null); `POST /rest/api/{3|2}/issue/{key}/comment` taking an
Atlassian Document Format body (v3) or a string (v2), answering 201 with the comment; errors as
`{"errorMessages": [...], "errors": {...}}` (404 "Issue does not exist or you do not have
permission to see it.", 401 for missing or bad credentials), and scripted failures (429 with
Retry-After, as Jira's rate limiting answers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.fakes.json_api import Answer, Call, JsonApiFake

CATEGORIES = {
    "new": {"id": 2, "key": "new", "colorName": "blue-gray", "name": "To Do"},
    "indeterminate": {
        "id": 4,
        "key": "indeterminate",
        "colorName": "yellow",
        "name": "In Progress",
    },
    "done": {"id": 3, "key": "done", "colorName": "green", "name": "Done"},
}
NOT_FOUND = "Issue does not exist or you do not have permission to see it."


@dataclass
class Issue:
    id: str
    key: str
    summary: str
    status: str
    category: str  # new | indeterminate | done
    assignee: dict[str, Any] | None
    comments: list[Any] = field(default_factory=list)


class FakeJira(JsonApiFake):
    def __init__(self) -> None:
        super().__init__()
        self.issues: dict[str, Issue] = {}

    def issue(
        self,
        key: str,
        summary: str,
        status: str = "In Progress",
        category: str = "indeterminate",
        assignee: tuple[str, str] | None = None,  # (e-mail, display name)
        email_visible: bool = True,
    ) -> Issue:
        who = None
        if assignee is not None:
            email, name = assignee
            who = {
                "self": f"{self.base_url}/rest/api/3/user?accountId=5b10{len(self.issues):04d}",
                "accountId": f"5b10ac8d82e05b22cc7d{len(self.issues):04d}",
                "displayName": name,
                "active": True,
                "timeZone": "Europe/London",
                "accountType": "atlassian",
            }
            if email_visible:
                who["emailAddress"] = email
        issue = Issue(str(10000 + len(self.issues)), key, summary, status, category, who)
        self.issues[key] = issue
        return issue

    def move(self, key: str, status: str, category: str) -> None:
        with self._lock:
            self.issues[key].status, self.issues[key].category = status, category

    def comments(self, key: str) -> list[Any]:
        with self._lock:
            return list(self.issues[key].comments)

    def error_body(self, status: int) -> Any:
        messages = {
            401: "Client must be authenticated to access this resource.",
            404: NOT_FOUND,
            429: "Rate limit exceeded.",
        }
        return {"errorMessages": [messages.get(status, "Internal server error")], "errors": {}}

    def handle(self, call: Call) -> Answer:
        parts = call.path.strip("/").split("/")
        if parts[:2] != ["rest", "api"] or len(parts) < 5 or parts[3] != "issue":
            return Answer(404, {"errorMessages": ["null for uri"], "errors": {}})
        version, key = parts[2], parts[4]
        if version not in ("2", "3"):
            return Answer(404, {"errorMessages": ["null for uri"], "errors": {}})
        issue = self.issues.get(key) or next(
            (i for i in self.issues.values() if i.key.lower() == key.lower()), None
        )
        if issue is None:
            return Answer(404, self.error_body(404))
        if call.method == "GET" and len(parts) == 5:
            return Answer(200, self._issue(issue, version, call.query.get("fields", "*all")))
        if call.method == "POST" and parts[5:] == ["comment"]:
            return self._comment(issue, version, call.body)
        return Answer(405, {"errorMessages": ["Method Not Allowed"], "errors": {}})

    def _issue(self, issue: Issue, version: str, wanted: str) -> dict[str, Any]:
        status = {
            "self": f"{self.base_url}/rest/api/{version}/status/3",
            "description": "",
            "name": issue.status,
            "id": "3",
            "statusCategory": {
                "self": f"{self.base_url}/rest/api/{version}/statuscategory/"
                f"{CATEGORIES[issue.category]['id']}",
                **CATEGORIES[issue.category],
            },
        }
        every = {"summary": issue.summary, "status": status, "assignee": issue.assignee}
        names = list(every) if wanted in ("*all", "*navigable") else wanted.split(",")
        return {
            "expand": "renderedFields,names,schema,operations,editmeta,changelog",
            "id": issue.id,
            "self": f"{self.base_url}/rest/api/{version}/issue/{issue.id}",
            "key": issue.key,
            "fields": {n: every[n] for n in names if n in every},
        }

    def _comment(self, issue: Issue, version: str, body: Any) -> Answer:
        text = (body or {}).get("body") if isinstance(body, dict) else None
        valid = (
            isinstance(text, dict) and text.get("type") == "doc" and text.get("content")
            if version == "3"
            else isinstance(text, str) and text.strip()
        )
        if not valid:
            return Answer(
                400, {"errorMessages": [], "errors": {"comment": "Comment body can not be empty!"}}
            )
        comment_id = str(10000 + len(issue.comments))
        issue.comments.append(text)
        return Answer(
            201,
            {
                "self": f"{self.base_url}/rest/api/{version}/issue/{issue.id}/comment/{comment_id}",
                "id": comment_id,
                "body": text,
                "created": "2026-11-30T03:00:00.000+0000",
            },
        )


def adf_text(doc: Any) -> str:
    """The plain text of an Atlassian Document Format body (or a v2 string body)."""
    if isinstance(doc, str):
        return doc
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "text":
                found.append(str(node.get("text", "")))
            for child in node.get("content", []):
                walk(child)
            if node.get("type") == "paragraph":
                found.append("\n")

    walk(doc)
    return "".join(found).strip()
