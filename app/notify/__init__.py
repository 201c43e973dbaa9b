"""Telling people: the notifier (what to send whom after a change) and the outbox that
delivers it. The messages themselves are built in app/messages."""
