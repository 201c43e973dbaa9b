"""The request lifecycle: every use case is one method, with time from the injected clock.

State only changes through `app.lifecycle.transitions`. The use cases are grouped by concern in
`requests` (asking and deciding), `grants` (access on the target), `breakglass` (budgets and the
second person's confirmation) and `tickets` (access that ends with its ticket, notes on
tickets). The daily digest (app/digest), standing privilege (app/standing), service accounts
(app/identities) and break-glass reviews (app/reviews) are features of their own that work
through this service.
"""

from __future__ import annotations

from app.service.breakglass import BreakGlassCases
from app.service.tickets import TicketCases


class AccessService(BreakGlassCases, TicketCases):
    """Use cases of the request lifecycle. Safe to share between threads and processes."""
