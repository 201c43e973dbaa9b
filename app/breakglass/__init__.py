"""Break-glass: a use granted at once within its budget, or held for a second person's Confirm
when over it (service.py, a part of the request core, on requests and grants); budgets and
anomaly flags as pure rules over the facts the service reads (docs/break-glass.md; rules.py);
the Confirm card and the security channel's wait line (messages.py); who is told what when a
use starts, is held, waits and closes unconfirmed (flows.py); the held uses' waiting line, on
every sweep (jobs.py, which reaches the request core only through the one method it names);
`/breakglass` and Confirm (listeners.py, which reaches the core only through the methods its
`Core` names)."""
