"""Long outages with real processes: a target down for minutes, Slack down for a minute.

Runs the fault tests of the suite (real PostgreSQL, real `wardkey worker` processes, the fake
Slack and the webhook console) twice each: with the suite's short outage as the baseline and
with a long one, and prints what each printed (attempted, applied, lost, doubled, recovery
time) as a table, with the long run's recovery over the short one's. The point: recovery does
not grow with the length of the outage (revokes land within seconds of the target's return,
not at the end of a back-off that grew while it was down).

    python bench/outages.py                        # target 300 s, Slack 60 s (about 8 min)
    python bench/outages.py --target 60 --slack 30

Needs the PostgreSQL the tests use (WARDKEY_TEST_POSTGRES_URL, default 127.0.0.1:5432/test).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_TEST = "tests/system/test_reliability.py::test_revokes_land_soon_after_a_target_comes_back"
SLACK_TEST = (
    "tests/notify/test_outbox.py::"
    "test_workers_deliver_every_message_once_through_an_outage_and_a_kill"
)
FIGURES = re.compile(r"^(target back after|outbox through) .*$", re.MULTILINE)
NUMBER = re.compile(r"(\w[\w' ]*?)=([\d.]+)s?")


def run(test: str, env: dict[str, str]) -> str:
    """One fault test, its printed figures line (the test's own assertions must pass)."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", test],
        cwd=ROOT,
        env={**os.environ, "CI": "true", **env},
        capture_output=True,
        text=True,
        check=False,
    )
    found = FIGURES.search(result.stdout)
    if result.returncode != 0 or found is None:
        sys.stdout.write(result.stdout[-4000:] + result.stderr[-2000:])
        raise SystemExit(f"{test} failed (exit {result.returncode})")
    return found.group(0)


def recovery(line: str) -> float:
    """How long after the fault ended everything was done: the last revoke's landing after
    the target came back, or the last message sent after Slack came back."""
    sent = re.search(r"all sent ([\d.]+)s after", line)
    if sent:
        return float(sent.group(1))
    numbers = dict(NUMBER.findall(line))
    return float(numbers.get("max") or 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=float, default=300, help="seconds the target is down")
    parser.add_argument("--slack", type=float, default=60, help="seconds Slack is unreachable")
    args = parser.parse_args()
    schema = os.environ.get("WARDKEY_TEST_SCHEMA", "wardkey_bench")
    cases = [
        ("target down", TARGET_TEST, "WARDKEY_FAULT_TARGET_OUTAGE", 10.0, args.target),
        ("Slack unreachable", SLACK_TEST, "WARDKEY_FAULT_SLACK_OUTAGE", 12.0, args.slack),
    ]
    rows = []
    for name, test, variable, short, long in cases:
        lines = []
        for seconds in (short, long):
            print(f"… {name} for {seconds:.0f} s", flush=True)
            env = {variable: str(seconds), "WARDKEY_TEST_SCHEMA": schema}
            lines.append(run(test, env))
        ratio = recovery(lines[1]) / max(recovery(lines[0]), 0.1)
        rows.append((name, short, long, lines, ratio))
    print("\n| fault | outage | what the test measured |\n|---|---:|---|")
    for name, short, long, lines, _ in rows:
        print(f"| {name} | {short:.0f} s (baseline) | {lines[0]} |")
        print(f"| {name} | {long:.0f} s | {lines[1]} |")
    print("\n| fault | done after the fault ended, long outage ÷ baseline |\n|---|---:|")
    for name, _s, _l, _lines, ratio in rows:
        print(f"| {name} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
