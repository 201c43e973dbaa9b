"""The trust's ticket systems as WardKey reads and writes them: the ServiceNow and Jira clients
(clients.py) and the desk that picks the one a path names (desk.py). Below the request core,
like app/adapters: it knows the policy's ticket settings and nothing of requests or Slack; the
core checks a request's ticket through it, and app/tickets (access that ends with its ticket,
notes on tickets) builds on both."""

from app.ticket_systems.clients import TicketNotFound, TicketUnreadable
from app.ticket_systems.desk import TicketDesk, down_message

__all__ = ["TicketDesk", "TicketNotFound", "TicketUnreadable", "down_message"]
