"""Break-glass budgets and anomaly flags: pure rules over facts the service reads
(docs/break-glass.md; rules.py); the held uses' waiting line, on every sweep (jobs.py, which
reaches the request core only through the one method it names)."""
