"""WardKey: just-in-time privileged access for hospital teams, run from Slack."""

__version__ = "0.1.0"
