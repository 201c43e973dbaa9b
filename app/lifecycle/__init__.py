"""The lifecycle core under every feature: the one function that changes a request's or a
review's state (transitions.py), leases on the requests being worked and each target's lane
(leases.py), once-per-period turns of jobs (periods.py), calls to targets with retries
(targets.py), snapshots of requests (snapshots.py), whether a requester may still have an
access (eligibility.py), checks of what people type (validation.py), and the typed refusals with
their user-facing text (errors.py); the dependencies the request core's parts are built from
(deps.py) and the reads of requests they share (reads.py). Features' services call it; it
knows nothing of them, of Slack or of messages."""
