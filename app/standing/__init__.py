"""Standing privilege: access on a target that no WardKey grant covers, found by an hourly look
(service.py), in words for security and admins (messages.py), told to security (flows.py),
looked for by one worker an hour (jobs.py)."""
