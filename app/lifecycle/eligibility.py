"""May this person still have this access? What was checked when a request was made is checked
again at approval, just before the grant and at each extension, against the policy as it is
now: eligibility, the role's path and account, a lockdown of the target, and a service
account's attestation (whose rounds are app/identities'; the core only reads the latest)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.policy import rules
from app.policy.model import BREAK_GLASS_PATH, Policy
from app.policy.people import Person, person_key, same_person
from app.store.models import AccessRequest, Attestation, Lockdown

# Outcomes of a service account's attestation round.
STILL_NEEDED = "still_needed"
RETIRED = "retired"


def requester(req: AccessRequest) -> Person:
    """Who asked, as the policy is checked against (at approval, grant and extension)."""
    if req.requester_slack_id or req.requester_email:
        return Person(slack_user_id=req.requester_slack_id, email=req.requester_email)
    if "@" in req.requester:
        return Person(email=req.requester)
    return Person(slack_user_id=req.requester)


def is_requester(policy: Policy, person: Person, req: AccessRequest) -> bool:
    """Is this person the one who asked (by person key, or as the same person under another
    Slack account or email)?"""
    asked = (
        Person(slack_user_id=req.requester_slack_id, email=req.requester_email)
        if (req.requester_slack_id or req.requester_email)
        else None
    )
    return person_key(policy, person) == req.requester or (
        asked is not None and same_person(policy, person, asked)
    )


def limits(policy: Policy, req: AccessRequest) -> rules.Limits:
    """Every cap on this grant, as the policy says now (see `rules.limits`)."""
    return rules.limits(policy, requester(req), req.target, req.role, req.path, req.identity)


def lockdown_refusal(session: Session, policy: Policy, target: str) -> str | None:
    """Why nobody may have access to `target` now: it is locked down (app/lockdown), until
    a security admin lifts it. None when it is not."""
    found = session.scalars(
        select(Lockdown).where(Lockdown.target == target, Lockdown.lifted_at.is_(None))
    ).first()
    if found is None:
        return None
    since = found.started_at.astimezone(policy.zone)
    return (
        f"🔒 {target} is locked down by security (since {since:%H:%M %d %b}): "
        f"{found.reason}. Nobody can ask for, extend or break glass on it until a security "
        "admin lifts the lockdown."
    )


def latest_attestation(session: Session, name: str) -> Attestation | None:
    """A service account's latest attestation round (app/identities opens and answers them)."""
    return session.scalars(
        select(Attestation)
        .where(Attestation.identity == name)
        .order_by(Attestation.id.desc())
        .limit(1)
    ).first()


def attestation_refusal(session: Session, policy: Policy, name: str, now: datetime) -> str | None:
    """A retired service account may not be elevated, nor an overdue one whose policy
    says `block_unattested`; None when it may."""
    latest = latest_attestation(session, name)
    if latest is None:
        return None
    if latest.outcome == RETIRED:
        return (
            f"{name} was retired by {latest.decided_by}; remove it from the policy, or ask "
            "a WardKey admin."
        )
    identity = policy.identities.get(name)
    overdue = latest.outcome is None and now > latest.due_at
    if overdue and identity is not None and identity.block_unattested:
        return (
            f"{name} is blocked: its owner has not confirmed it is still needed (it was due "
            f"{latest.due_at:%d %b %Y}). Answer the attestation message first."
        )
    return None


def refusal_now(session: Session, policy: Policy, req: AccessRequest, now: datetime) -> str | None:
    """Why the requester may no longer have this access at `now`, or None if they still
    may: what was checked when they asked (eligibility, the role and its path, a vendor's
    contract, a service account's owner and attestation) is checked again at approval,
    just before the grant and at each extension, against the policy as it is now."""
    try:
        plan = rules.plan_request(
            policy,
            requester(req),
            req.target,
            req.role,
            now,
            break_glass=req.path == BREAK_GLASS_PATH,
            identity=req.identity,
        )
    except rules.PolicyRefusal as exc:
        return str(exc)
    locked = lockdown_refusal(session, policy, req.target)
    if locked is not None:
        return locked
    if plan.path != req.path:
        return (
            f"The policy now puts {req.target}:{req.role} on the {plan.path} path, so it "
            "needs that path's approval; ask again with /jit request."
        )
    if plan.account != req.account:
        return (
            f"The policy now maps this access to account {plan.account}, not "
            f"{req.account}; ask again with /jit request."
        )
    if req.identity is not None:
        return attestation_refusal(session, policy, req.identity, now)
    return None
