"""Tickets that exist: a path's ticket is checked in ServiceNow or Jira when access is asked
for (and again at the final approval), the approver card shows it, access may end when it
closes, and it gets a note when access is granted and ends (issue 16).

app/policy holds the rules (`app.policy.tickets.refusal`, pure); app/ticket_systems reads the
systems (below the request core, which checks a request's ticket through it); this package,
after the request, ends the access whose ticket closed and writes the notes (service.py, on
every sweep: jobs.py; a system that keeps refusing them is told to security: overdue.py).
"""
