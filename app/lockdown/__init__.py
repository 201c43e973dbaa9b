"""Lockdown: during an incident a security admin pulls every grant on a target at once and
refuses all new access to it until the lockdown is lifted (`/jit lockdown`).

service.py  start, run (revoke everything on the target), lift, progress; no Slack
flows.py    do it, then tell: who hears of each lockdown notice (the security channel's one
            progress message, posted, then updated in place), through the outbox
messages.py the confirmation dialog and the progress message (Block Kit)
listeners.py the confirmation dialog's submission
jobs.py     every second, each lockdown in force applied again and its progress told
"""
