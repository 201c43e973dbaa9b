"""Break-glass reviews: every use is reviewed afterwards by the policy's reviewers, never by the
person who used it (service.py); the review card, its note dialog, reminders and the overdue
alert (messages.py); who is told of each step, when its notice is delivered (flows.py);
Justified / Not justified and the note in Slack (listeners.py); sent, reminded and escalated on
every sweep (jobs.py)."""
