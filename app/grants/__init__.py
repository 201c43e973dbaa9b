"""Grants: access granted, extended, warned of, expired, revoked, retried and reconciled on the
target (service.py, a part of the request core, on app/lifecycle), the holder's Extend and
Revoke now and the warning before access ends (messages.py), who is told of a warning, an
extension and a failed grant or revoke (flows.py), the sweeps that do it (jobs.py), and `/jit
extend|revoke` with the App Home's Extend and Revoke (listeners.py)."""
