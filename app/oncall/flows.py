"""On-call sources, then tell people: the rotas' sources that are due are read, and the security
channel is told, once each, of a source that stopped answering and of one that answers again
(recorded in the outbox; the job in jobs.py asks for this on every sweep)."""

from __future__ import annotations

from app.access import AccessService
from app.oncall.cache import OnCall, SourceChange
from app.oncall.messages import source_words
from app.outbox_records import last_alert
from app.telling import Teller


def read_sources(core: AccessService, teller: Teller) -> list[SourceChange]:
    """Read the rotas' sources that are due and tell the security channel of each change.
    Every process that runs the sweeps reads the sources itself: one that finds the outage
    already told by another (the rota's latest alert in the outbox says so) adds nothing.
    Returns what was told here."""
    lookup = core.policy.on_call_lookup
    if not isinstance(lookup, OnCall):
        return []
    told: list[SourceChange] = []
    channel = core.policy.channels.security_alerts
    for change in lookup.watch():
        kind = "down" if change.down else "back"
        last, count = last_alert(core.db, f"oncall:{change.rota}")
        if last != kind:
            # Numbered per rota: two processes that find the same change at once write the
            # same key, and the outbox keeps one.
            key = f"oncall:{change.rota}:{kind}:{count + 1}"[:100]
            with teller.recording("security", key=key):
                teller.post("", channel, source_words(change, teller.zone))
            told.append(change)
        lookup.told(change)
    return told
