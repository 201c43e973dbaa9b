"""Service accounts (non-human identities): owners confirm on a schedule that each is still
needed, and accounts whose owner is gone are flagged (service.py); the owner's card, the
reminders and security's alerts as Slack shows them (messages.py); who is told, and whether an
owner is still a current person in Slack (flows.py); Still needed / Retire (listeners.py);
asked, reminded and looked for on every sweep, beside the vendors whose contract has ended,
whose access ends with it (jobs.py)."""
