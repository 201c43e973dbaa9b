"""The daily digest: the managers' summary of the last 24 hours of elevation (service.py),
as Slack shows it (messages.py), told to the managers' channel (flows.py), sent once a day by
one worker (jobs.py)."""
