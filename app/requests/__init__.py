"""Requests: asked, decided, cancelled, escalated and timed out. The requests feature's code is
moving here from the request core (app/service/requests.py); for now this package holds its
jobs (jobs.py)."""
