"""The request lifecycle: every use case is one method, with time from the injected clock.

State only changes through `app.lifecycle.transitions`. The use cases are grouped by concern in
`requests` (asking and deciding), `grants` (access on the target) and `breakglass` (budgets and
the second person's confirmation); `tickets` holds the checks of a request's ticket. The daily
digest (app/digest), standing privilege (app/standing), service accounts (app/identities),
break-glass reviews (app/reviews) and tickets after the request (app/tickets) are features of
their own that work through this service.
"""

from __future__ import annotations

from app.service.breakglass import BreakGlassCases


class AccessService(BreakGlassCases):
    """Use cases of the request lifecycle. Safe to share between threads and processes."""
