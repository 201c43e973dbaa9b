"""`wardkey demo` (run.py) and what it needs at run time: its stand-ins for Slack (slack_fake.py,
with slack_driver.py to talk to WardKey as Slack does and transcript.py to read the conversation)
and for the EPR admin console (webhook_target.py), the demo's policy, and the loopback server
they run on. The tests and benchmarks use these stand-ins too; what only tests use is in
tests/fakes."""
