"""Break-glass budgets and anomaly flags: pure rules over facts the service reads
(docs/break-glass.md)."""
