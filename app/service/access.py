"""The request lifecycle: every use case is one method, with time from the injected clock.

State only changes through `app.lifecycle.transitions`. The use cases are grouped by concern in
`requests` (asking, opening a request and deciding), `grants` (access on the target) and
`breakglass` (budgets and the second person's confirmation), over `reads` (reads of requests)
and `base` (the dependencies); `tickets` holds the checks of a request's ticket. Leases, target
calls, snapshots and eligibility are app/lifecycle's, used as plain functions. The daily
digest (app/digest), standing privilege (app/standing), service accounts (app/identities),
break-glass reviews (app/reviews) and tickets after the request (app/tickets) are features of
their own that work through this service's public methods and app/lifecycle, never its private
ones (tests/system/test_architecture.py checks it).
"""

from __future__ import annotations

from app.service.breakglass import BreakGlassCases


class AccessService(BreakGlassCases):
    """Use cases of the request lifecycle. Safe to share between threads and processes."""
