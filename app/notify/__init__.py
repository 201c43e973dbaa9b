"""Telling people: the outbox that delivers every message, and the notifier that turns each
notice into messages, the request core's itself and every feature's through that feature's
flows (app/telling.py). The request core's messages are built in its packages' messages.py
(app/requests, app/grants, app/breakglass)."""
