"""Grants: access granted, warned of, expired, revoked, retried and reconciled. The grants
feature's code is moving here from the request core (app/service/grants.py); for now this
package holds its jobs (jobs.py)."""
