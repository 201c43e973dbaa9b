"""A local stand-in for ServiceNow's REST Table API (`/api/now/table/{tableName}`).

Shaped from ServiceNow's published Table API reference: `GET` with `sysparm_query` (an encoded
query: `field=value` conditions joined by `^`, dot-walking such as `user.email=`),
`sysparm_fields`, `sysparm_display_value` (false: values; true: display values; all: both, as
`{"display_value", "value"}`, reference fields with a `link` unless
`sysparm_exclude_reference_link=true`), `sysparm_limit`/`sysparm_offset` with `X-Total-Count`;
answers `{"result": [...]}`; `PATCH /api/now/table/{tableName}/{sys_id}` updating fields, where
`work_notes` is a journal field that appends an entry; errors as
`{"error": {"message", "detail"}, "status": "failure"}` (401 with WWW-Authenticate, 404
"No Record found", 400 "Invalid table"), and scripted failures (429 with Retry-After).
"""

from __future__ import annotations

import uuid
from typing import Any

from tests.fakes.json_api import Answer, Call, JsonApiFake

# The incident table's state choices (value -> label) and which of them are inactive.
INCIDENT_STATES = {
    "1": "New",
    "2": "In Progress",
    "3": "On Hold",
    "6": "Resolved",
    "7": "Closed",
    "8": "Canceled",
}
INACTIVE = {"6", "7", "8"}
# Reference fields and the table they point at.
REFERENCES = {
    "assigned_to": "sys_user",
    "assignment_group": "sys_user_group",
    "user": "sys_user",
    "group": "sys_user_group",
}
# What a reference shows as its display value.
DISPLAY_FIELD = {"sys_user": "name", "sys_user_group": "name"}


def _sys_id() -> str:
    return uuid.uuid4().hex


class FakeServiceNow(JsonApiFake):
    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[dict[str, str]]] = {
            "incident": [],
            "sys_user": [],
            "sys_user_group": [],
            "sys_user_grmember": [],
        }
        self.work_notes: dict[str, list[str]] = {}  # incident number -> journal entries

    # ------------------------------------------------------------------ the instance's data

    def user(self, email: str, name: str) -> str:
        sys_id = _sys_id()
        self.tables["sys_user"].append({"sys_id": sys_id, "email": email, "name": name})
        return sys_id

    def group(self, name: str, *members: str) -> str:
        sys_id = _sys_id()
        self.tables["sys_user_group"].append({"sys_id": sys_id, "name": name})
        for member in members:
            self.tables["sys_user_grmember"].append(
                {"sys_id": _sys_id(), "group": sys_id, "user": member}
            )
        return sys_id

    def incident(
        self,
        number: str,
        title: str,
        state: str = "2",
        assigned_to: str = "",
        group: str = "",
    ) -> str:
        sys_id = _sys_id()
        self.tables["incident"].append(
            {
                "sys_id": sys_id,
                "number": number,
                "short_description": title,
                "state": state,
                "active": "false" if state in INACTIVE else "true",
                "assigned_to": assigned_to,
                "assignment_group": group,
            }
        )
        return sys_id

    def set_state(self, number: str, state: str) -> None:
        with self._lock:
            row = self._find("incident", {"number": number})[0]
            row["state"] = state
            row["active"] = "false" if state in INACTIVE else "true"

    # --------------------------------------------------------------------------- the API

    def error_body(self, status: int) -> Any:
        messages = {
            401: ("User Not Authenticated", "Required to provide Auth information"),
            404: ("No Record found", "Record doesn't exist or ACL restricts the record retrieval"),
            429: ("Rate limit exceeded", "Too many requests; retry after the time given"),
        }
        message, detail = messages.get(status, ("Internal server error", None))
        return {"error": {"message": message, "detail": detail}, "status": "failure"}

    def unauthorized_headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'BASIC realm="Service-now"'}

    def handle(self, call: Call) -> Answer:
        parts = call.path.strip("/").split("/")
        if parts[:3] != ["api", "now", "table"] or len(parts) not in (4, 5):
            return Answer(
                400,
                {
                    "error": {
                        "message": "Requested URI does not represent any resource",
                        "detail": None,
                    },
                    "status": "failure",
                },
            )
        table = parts[3]
        if table not in self.tables:
            return Answer(
                400,
                {
                    "error": {"message": f"Invalid table {table}", "detail": None},
                    "status": "failure",
                },
            )
        if call.method == "GET" and len(parts) == 4:
            return self._list(table, call.query)
        if call.method in ("PATCH", "PUT") and len(parts) == 5:
            return self._update(table, parts[4], call.body or {}, call.query)
        return Answer(
            405, {"error": {"message": "Method not Supported", "detail": None}, "status": "failure"}
        )

    def _find(self, table: str, conditions: dict[str, str]) -> list[dict[str, str]]:
        return [
            r
            for r in self.tables[table]
            if all(self._value(table, r, f) == v for f, v in conditions.items())
        ]

    def _referenced(self, table: str, row: dict[str, str], field: str) -> dict[str, str] | None:
        target = REFERENCES.get(field)
        if target is None or not row.get(field):
            return None
        found = [r for r in self.tables[target] if r["sys_id"] == row[field]]
        return found[0] if found else None

    def _value(self, table: str, row: dict[str, str], field: str) -> str:
        """A field's value, dot-walking through references (assigned_to.email)."""
        head, _, rest = field.partition(".")
        if not rest:
            return row.get(head, "")
        ref = self._referenced(table, row, head)
        return "" if ref is None else self._value(REFERENCES[head], ref, rest)

    def _display(self, table: str, row: dict[str, str], field: str) -> str:
        head, _, rest = field.partition(".")
        if rest:
            ref = self._referenced(table, row, head)
            return "" if ref is None else self._display(REFERENCES[head], ref, rest)
        if table == "incident" and field == "state":
            return INCIDENT_STATES.get(row.get("state", ""), row.get("state", ""))
        ref = self._referenced(table, row, field)
        if ref is not None:
            return ref.get(DISPLAY_FIELD[REFERENCES[field]], "")
        return row.get(field, "")

    def _list(self, table: str, query: dict[str, str]) -> Answer:
        conditions: dict[str, str] = {}
        for condition in filter(None, query.get("sysparm_query", "").split("^")):
            field, op, value = condition.partition("=")
            if not op:
                return Answer(
                    400,
                    {
                        "error": {"message": f"Invalid query {condition}", "detail": None},
                        "status": "failure",
                    },
                )
            conditions[field] = value
        rows = self._find(table, conditions)
        offset = int(query.get("sysparm_offset", "0"))
        limit = int(query.get("sysparm_limit", "10000"))
        page = rows[offset : offset + limit]
        fields = [f for f in query.get("sysparm_fields", "").split(",") if f] or (
            sorted(self.tables[table][0]) if self.tables[table] else []
        )
        mode = query.get("sysparm_display_value", "false")
        links = query.get("sysparm_exclude_reference_link", "false") != "true"
        result = [{f: self._shown(table, row, f, mode, links) for f in fields} for row in page]
        headers = {"X-Total-Count": str(len(rows))}
        if offset + limit < len(rows):
            headers["Link"] = (
                f"<{self.base_url}/api/now/table/{table}?sysparm_offset={offset + limit}"
                f'&sysparm_limit={limit}>;rel="next"'
            )
        return Answer(200, {"result": result}, headers)

    def _shown(self, table: str, row: dict[str, str], field: str, mode: str, links: bool) -> Any:
        """true: the display value; false: the value; all: both. A set reference field also
        carries a link to its record, unless links are excluded."""
        value = self._value(table, row, field)
        if mode == "true":
            return self._display(table, row, field)
        link = field in REFERENCES and value and links
        if mode == "all":
            shown = {"display_value": self._display(table, row, field), "value": value}
        elif link:
            shown = {"value": value}
        else:
            return value
        if link:
            shown["link"] = f"{self.base_url}/api/now/table/{REFERENCES[field]}/{value}"
        return shown

    def _update(
        self, table: str, sys_id: str, body: dict[str, Any], query: dict[str, str]
    ) -> Answer:
        rows = self._find(table, {"sys_id": sys_id})
        if not rows:
            return Answer(404, self.error_body(404))
        row = rows[0]
        for field, value in body.items():
            if field == "work_notes":  # a journal field: each update adds an entry
                self.work_notes.setdefault(row.get("number", sys_id), []).append(str(value))
            else:
                row[field] = str(value)
        fields = sorted(row)
        return Answer(
            200, {"result": {f: self._shown(table, row, f, "false", True) for f in fields}}
        )
