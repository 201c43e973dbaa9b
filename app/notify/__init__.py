"""Messages to Slack: Block Kit, the notifier and the outbox that delivers them."""
