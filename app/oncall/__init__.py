"""On-call from the source: rotas read from a rostering export or PagerDuty (issue 16).

app/policy describes a rota's source and asks an injected lookup who is on call; this package
reads the sources, caches the answer with a time to live, and falls back as the policy says;
flows.py tells security, once each, of a source that stopped answering or answers again (in the
words of messages.py); its sweep (jobs.py) reads them while nobody asks and escalates requests
nobody may approve.
"""

from app.oncall.cache import (
    OnCall,
    SourceChange,
    SourceStatus,
    describe,
    path_sources,
    sources_now,
    unread_sources,
    where_from,
    with_sources,
)
from app.oncall.shifts import RosterError, Shift, on_call, parse_csv, parse_ics
from app.oncall.sources import SourceUnreadable

__all__ = [
    "OnCall",
    "RosterError",
    "Shift",
    "SourceChange",
    "SourceStatus",
    "SourceUnreadable",
    "describe",
    "on_call",
    "parse_csv",
    "parse_ics",
    "path_sources",
    "sources_now",
    "unread_sources",
    "where_from",
    "with_sources",
]
