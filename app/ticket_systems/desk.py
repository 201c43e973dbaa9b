"""The service desk as WardKey sees it: look a ticket up in the system a path names, and write
a note on it. One HTTP client per process; credentials are read from the environment at each
call, so a rotated token is used at once."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping

import httpx

from app.policy.model import Policy, TicketSystem
from app.policy.tickets import TicketFacts
from app.ticket_systems.clients import TicketUnreadable, client_for

log = logging.getLogger(__name__)


def down_message(label: str) -> str:
    """What a requester is told when the ticket system did not answer."""
    return f"{label} did not answer; try again, or /breakglass for an emergency."


class TicketDesk:
    def __init__(
        self, env: Mapping[str, str] | None = None, http: httpx.Client | None = None
    ) -> None:
        self.env = os.environ if env is None else env
        self._http = http

    @property
    def http(self) -> httpx.Client:
        if self._http is None:  # made at first use: most processes' policies name no system
            self._http = httpx.Client(follow_redirects=False)
        return self._http

    def find(
        self,
        policy: Policy,
        system: str,
        key: str,
        requester_email: str | None = None,
        *,
        need_group: bool = False,
    ) -> TicketFacts:
        """The ticket as its system has it now. TicketNotFound: the system has none;
        TicketUnreadable: no answer (logged here, with the reason, never a credential)."""
        spec = _system(policy, system)
        try:
            facts = client_for(spec, self.env, self.http).find(key, requester_email, need_group)
        except TicketUnreadable as exc:
            log.warning("ticket.unreadable system=%s ticket=%s reason=%s", system, key, exc)
            raise
        return dataclasses.replace(facts, system=system)

    def add_note(self, policy: Policy, facts: TicketFacts, text: str) -> None:
        """A work note (ServiceNow) or comment (Jira) on the ticket; raises TicketUnreadable."""
        client_for(_system(policy, facts.system), self.env, self.http).add_note(facts, text)


def _system(policy: Policy, name: str) -> TicketSystem:
    spec = policy.ticket_systems.get(name)
    if spec is None:  # the policy was reloaded without it: nothing can be read
        raise TicketUnreadable(f"ticket system '{name}' is no longer in the policy")
    return spec
