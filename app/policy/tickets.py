"""What a ticket system said about a ticket, and whether a path accepts it (pure: the facts are
read outside app/policy, by app.ticket_systems, and handed in)."""

from __future__ import annotations

from dataclasses import dataclass

from app.policy.model import PathTicket


@dataclass(frozen=True)
class TicketFacts:
    """A ticket as its system returned it, in the words the system uses."""

    system: str  # the policy's name for the ticket system
    label: str  # "ServiceNow" or "Jira"
    key: str  # INC0012345, WARD-42
    title: str
    state: str  # as the system shows it: "In Progress", "Resolved", "Done"
    open: bool  # ServiceNow: active; Jira: status category is not "done"
    url: str  # where a person opens it
    assignee_email: str | None = None
    assignee_name: str | None = None
    group: str | None = None  # the assignment group's name (ServiceNow)
    requester_in_group: bool | None = None  # None: not asked (no group, or not needed)
    ref: str = ""  # the system's own handle: ServiceNow's sys_id, Jira's key
    answered: bool = True  # False: the system did not answer and the path let the request go on


def unanswered(system: str, label: str, key: str) -> TicketFacts:
    """What is recorded of a ticket its system did not answer about, on a path whose
    `when_down` is approver_checks: not checked, for the approvers to check."""
    return TicketFacts(
        system=system,
        label=label,
        key=key,
        title="",
        state=f"not checked: {label} did not answer",
        open=True,
        url="",
        answered=False,
    )


def refusal(rule: PathTicket, facts: TicketFacts, requester_email: str | None) -> str | None:
    """Why the path does not accept this ticket, in words for the requester; None: accepted."""
    where = f"{facts.key} is {facts.state} in {facts.label}"
    if not facts.open:
        return f"{where}; ask with an open ticket."
    if rule.assigned == "any":
        return None
    mine = (
        requester_email is not None
        and facts.assignee_email is not None
        and facts.assignee_email.strip().lower() == requester_email.strip().lower()
    )
    if mine:
        return None
    if rule.assigned == "requester_or_group" and facts.requester_in_group:
        return None
    who = facts.assignee_name or facts.assignee_email or "nobody"
    if rule.assigned == "requester":
        return (
            f"{facts.key} is assigned to {who} in {facts.label}, not to you; "
            "ask with a ticket assigned to you."
        )
    return (
        f"{facts.key} is assigned to {who} in {facts.label}, not to you or a group you are in; "
        "ask with your own ticket."
    )
