"""The Slack layer: parse payloads, ack fast, call the service, render Block Kit. No rules here."""
