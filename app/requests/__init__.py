"""Requests: asked, decided, cancelled, escalated and timed out (service.py, a part of the
request core, on grants and app/lifecycle; an approval grants), the request's ticket as
stored, audited and checked again at the final approval (tickets.py), what a request says in
Slack (messages.py: its cards, the form, the deny dialog, the App Home), who is told what of a
request's notices, its receipt and the App Home drawn (flows.py), the sweeps that escalate and
time out (jobs.py), and asking and deciding in Slack (listeners.py)."""
