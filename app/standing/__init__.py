"""Standing privilege: access on a target that no WardKey grant covers, found by an hourly look
(service.py), told to security and shown to admins (messages.py), looked for by one worker an
hour (jobs.py)."""
