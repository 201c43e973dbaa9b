"""The lifecycle core under every feature: the one function that changes a request's or a
review's state (transitions.py), claims and leases on the rows being worked and each target's
lane (leases.py), and the typed refusals with their user-facing text (errors.py). Features'
services call it; it knows nothing of them, of Slack or of messages."""
