"""What WardKey says in Slack, as Block Kit built with slack_sdk.models: cards, DMs and alerts
(blocks.py), the request form, the dialogs that ask why, and the App Home (views.py).
Messages never change state: they draw what the service returns."""
