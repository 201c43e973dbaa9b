"""The request lifecycle: every use case is one method, with time from the injected clock.

State only changes through `app.service.transitions`. The use cases are grouped by concern in
`requests` (asking and deciding), `grants` (access on the target), `reviews` (break-glass)
and `digest` (the managers' daily summary).
"""

from __future__ import annotations

from app.service.digest import DigestCases
from app.service.requests import RequestCases
from app.service.reviews import ReviewCases


class AccessService(RequestCases, ReviewCases, DigestCases):
    """Use cases of the request lifecycle. Safe to share between threads and processes."""
