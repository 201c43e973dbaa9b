"""The policy manifest and the pure rules read from it (no I/O beyond loading the file)."""

from app.policy.checks import PolicyIssue
from app.policy.durations import DurationError, format_duration, parse_duration
from app.policy.loader import PolicyError, load_policy, parse_policy
from app.policy.model import BREAK_GLASS_PATH, Policy
from app.policy.people import Person, identifiers, person_key, same_person
from app.policy.rules import PolicyRefusal, RequestPlan

__all__ = [
    "BREAK_GLASS_PATH",
    "DurationError",
    "Person",
    "Policy",
    "PolicyError",
    "PolicyIssue",
    "PolicyRefusal",
    "RequestPlan",
    "format_duration",
    "identifiers",
    "load_policy",
    "parse_duration",
    "parse_policy",
    "person_key",
    "same_person",
]
