"""Step-up sign-ins: offered when an approver clicks Approve on a path that needs one, opened
once from the link, finished once by the identity provider's answer; the approval then goes
through the same decide use case as any other (`AccessService.approve`), with what the sign-in
proved recorded in its audit event.

Every sign-in is a row (`StepUpSignIn`), so a link made by one instance works on another and
after a restart. Each step is a conditional update (`… WHERE opened_at IS NULL`, `… WHERE
finished_at IS NULL`): a link opens once and an answer is taken once, on any instance."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import httpx
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app import audit
from app.access import AccessService
from app.clock import Clock
from app.lifecycle import transitions
from app.lifecycle.errors import NotAllowed, ServiceError
from app.lifecycle.snapshots import RequestSnapshot
from app.policy.model import IdentityProvider
from app.policy.people import Person, person_key, same_person
from app.stepup.oidc import OpenIDProvider, SignInRefused, new_secret
from app.store.models import OutboxItem, StepUpSignIn

log = logging.getLogger(__name__)

# The refusals the security channel is told of, as they may be an attack: someone else signed
# in for the approver, a token not the provider's (or not for WardKey, or for another sign-in),
# an answer sent twice. The others (a stale sign-in, no MFA, an expired link, an approver no
# longer on call) are ordinary mistakes, in the audit trail only.
ALERTED = (
    "wrong_person",
    "bad_signature",
    "bad_claim:iss",
    "bad_claim:aud",
    "bad_claim:nonce",
    "state_replayed",
    "other_browser",
)
ALERT = "stepup.refused"
LINK_PATH = "/step-up/"
CALLBACK_PATH = "/step-up/callback"
APPROVED = "approved"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def browser_secret(verifier: str) -> str:
    """What the browser that opened a link keeps in a cookie, so that only that browser can
    finish its sign-in: derived from the sign-in's PKCE verifier (kept in the database, never
    sent to the provider), so any instance can check it and the cookie does not reveal it."""
    mac = hmac.new(verifier.encode(), b"wardkey step-up browser", hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def cookie_name(state: str) -> str:
    """The cookie for one sign-in (one per sign-in, so two tabs signing in at once each keep
    theirs); named from the state's hash, never the state."""
    return "wardkey_step_up_" + _hash(state)[:16]


@dataclass(frozen=True)
class Offer:
    """The link sent to the approver, and until when it can be opened."""

    url: str
    expires_at: datetime


@dataclass(frozen=True)
class Opened:
    """Where the browser that opened a link goes to sign in, and the cookie it must carry
    back to the callback (RFC 9700 section 4.7: the sign-in is bound to that browser)."""

    url: str
    cookie: str  # its name
    browser: str  # its value
    max_age: int  # seconds


@dataclass(frozen=True)
class Finished:
    """What became of a sign-in: the request after the approval, or why nothing happened."""

    request_id: int | None
    view: RequestSnapshot | None  # set when the approval was recorded
    refusal: str | None = None
    reason: str = APPROVED
    alerted: bool = False  # the security channel is to be told (an outbox notice was written)


class StepUpService:
    """Offers, opens and finishes step-up sign-ins for `access`'s policy (read afresh each
    time, so a policy reload applies at once)."""

    def __init__(
        self,
        access: AccessService,
        public_url: str,
        *,
        env: Mapping[str, str] | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        self.access = access
        self.public_url = public_url.rstrip("/")
        self.env = os.environ if env is None else env
        self.http = http or httpx.Client(timeout=10, follow_redirects=False)
        self._lock = threading.Lock()
        self._provider: tuple[IdentityProvider, OpenIDProvider] | None = None

    @property
    def clock(self) -> Clock:
        return self.access.clock

    @property
    def redirect_uri(self) -> str:
        return self.public_url + CALLBACK_PATH

    def needs_step_up(self, request_id: int) -> bool:
        """Whether an approval of this request needs a sign-in (its path's `step_up`)."""
        path = self.access.policy.paths.get(self.access.get(request_id).path)
        return path is not None and path.step_up

    def provider(self) -> OpenIDProvider:
        settings = self.access.policy.identity_provider
        if settings is None:
            raise SignInRefused(
                "Step-up sign-in is not set up (the policy has no identity_provider); tell the "
                "WardKey admins. Nothing was approved.",
                "no_provider",
            )
        with self._lock:
            if self._provider is None or self._provider[0] != settings:
                secret = self.env.get(settings.client_secret_env) or ""
                self._provider = (
                    settings,
                    OpenIDProvider(settings, secret, self.http, self.clock),
                )
            return self._provider[1]

    # ------------------------------------------------------------------------- offer

    def offer(self, request_id: int, approver: Person) -> Offer:
        """A one-time link for `approver` to sign in and so approve `request_id`; refused at
        once (as an approval would be) if they could not approve it now."""
        self.access.requests.may_decide(request_id, approver)
        settings = self.access.policy.identity_provider
        if settings is None:
            raise NotAllowed(
                "This path needs a sign-in to approve, but no identity provider is set up; "
                "tell the WardKey admins. Nothing was approved."
            )
        if not approver.email:
            raise NotAllowed(
                "Slack does not show WardKey your e-mail address, so a sign-in cannot be "
                "matched to you; ask a Slack admin to show e-mails to apps. Nothing was approved."
            )
        now = self.clock.now()
        link = new_secret()
        expires = now + settings.link_valid_for
        with self.access.db.transaction() as session:
            session.add(
                StepUpSignIn(
                    link_hash=_hash(link),
                    state_hash=_hash(new_secret()),  # replaced when the link is opened
                    nonce="",
                    code_verifier="",
                    request_id=request_id,
                    approver=person_key(self.access.policy, approver),
                    approver_slack_id=approver.slack_user_id,
                    approver_email=approver.email,
                    approver_team_id=approver.team_id,
                    created_at=now,
                    expires_at=expires,
                )
            )
        log.info("event=step_up_offered request=%s approver=%s", request_id, approver.label)
        return Offer(f"{self.public_url}{LINK_PATH}{link}", expires)

    # -------------------------------------------------------------------------- open

    def open(self, link: str) -> Opened:
        """Where to send the browser that opened `link`: the identity provider's sign-in, with
        a fresh state, nonce and PKCE verifier kept for the answer, and the cookie that browser
        must bring back. SignInRefused if the link is unknown, used or expired (audited, with
        the request and approver it was for)."""
        now = self.clock.now()
        state, nonce, verifier = new_secret(), new_secret(), new_secret()
        with self.access.db.transaction() as session:
            opened = session.execute(
                update(StepUpSignIn)
                .where(
                    StepUpSignIn.link_hash == _hash(link),
                    StepUpSignIn.opened_at.is_(None),
                    StepUpSignIn.expires_at > now,
                )
                .values(
                    opened_at=now,
                    state_hash=_hash(state),
                    nonce=nonce,
                    code_verifier=verifier,
                )
            )
            row = session.scalars(
                select(StepUpSignIn).where(StepUpSignIn.link_hash == _hash(link))
            ).first()
            if row is None:
                raise SignInRefused(
                    "This is not a sign-in link WardKey made (or it was copied wrongly). Click "
                    "Approve on the request in Slack for a new one. Nothing was approved.",
                    "unknown_link",
                )
            request_id, approver, hint = row.request_id, row.approver, row.approver_email
            used = row.opened_at is not None
            refused = opened.rowcount != 1  # type: ignore[attr-defined]
        if refused:
            failure = (
                SignInRefused(
                    f"This sign-in link for request #{request_id} was used already; a link "
                    "works once. Click Approve in Slack for a new one. Nothing was approved.",
                    "link_reused",
                )
                if used
                else SignInRefused(
                    f"This sign-in link for request #{request_id} has expired (links work for "
                    "a few minutes). Click Approve in Slack for a new one. Nothing was approved.",
                    "link_expired",
                )
            )
            self._refused(request_id, approver, None, failure.message, failure.reason)
            raise failure
        try:
            url = self.provider().authorization_url(self.redirect_uri, state, nonce, verifier, hint)
            settings = self.access.policy.identity_provider
            lifetime = int(settings.link_valid_for.total_seconds()) if settings else 0
            return Opened(url, cookie_name(state), browser_secret(verifier), lifetime)
        except SignInRefused as failure:
            self._refused(request_id, approver, state, failure.message, failure.reason)
            raise

    # ------------------------------------------------------------------------ finish

    def finish(
        self, state: str, code: str | None, error: str | None = None, *, browser: str | None
    ) -> Finished:
        """The identity provider's answer: taken once; the approval applies only if it came
        back to the browser that opened the link (`browser`: its cookie), the ID token passes
        every check, names the person who clicked Approve, and that person may still approve
        the request now. Every refusal is audited (`stepup.refused`)."""
        now = self.clock.now()
        with self.access.db.transaction() as session:
            taken = session.execute(
                update(StepUpSignIn)
                .where(
                    StepUpSignIn.state_hash == _hash(state),
                    StepUpSignIn.opened_at.is_not(None),
                    StepUpSignIn.finished_at.is_(None),
                )
                .values(finished_at=now)
            )
            row = session.scalars(
                select(StepUpSignIn).where(StepUpSignIn.state_hash == _hash(state))
            ).first()
            if row is None or row.opened_at is None:
                return self._refused(
                    None,
                    None,
                    None,
                    "This sign-in answer is not for a sign-in WardKey started. Click Approve "
                    "on the request in Slack to start one. Nothing was approved.",
                    "unknown_state",
                )
            request_id, key = row.request_id, row.approver
            replayed = taken.rowcount != 1  # type: ignore[attr-defined]
            settings = self.access.policy.identity_provider
            late = settings is None or now > row.opened_at + settings.link_valid_for
            approver = Person(
                slack_user_id=row.approver_slack_id,
                email=row.approver_email,
                team_id=row.approver_team_id,
            )
            nonce, verifier = row.nonce, row.code_verifier
        if replayed:
            return self._refused(
                request_id,
                key,
                state,
                f"This sign-in for request #{request_id} was finished already (a page "
                "reloaded, or its address sent again); each sign-in counts once. Nothing "
                "more was done.",
                "state_replayed",
                record=False,  # its first answer's outcome stands
            )
        if browser is None or not hmac.compare_digest(
            browser.encode(), browser_secret(verifier).encode()
        ):
            # Someone else opened the link and sent the approver the sign-in it led to (or
            # the answer was copied to another browser): the code is not even exchanged.
            return self._refused(
                request_id,
                key,
                state,
                f"This sign-in for request #{request_id} was finished in another browser than "
                "the one that opened the sign-in link from Slack. If you did not click Approve "
                "and open that link yourself just now, someone may be trying to approve with "
                "your sign-in: tell security. Otherwise click Approve in Slack again and sign "
                "in in the browser the link opens. Nothing was approved.",
                "other_browser",
            )
        if late:
            return self._refused(
                request_id,
                key,
                state,
                f"The sign-in for request #{request_id} took too long to finish. Click "
                "Approve in Slack for a new link. Nothing was approved.",
                "sign_in_expired",
            )
        if error or not code:
            return self._refused(
                request_id,
                key,
                state,
                f"The identity provider did not sign you in ({error or 'no code'}). Click "
                "Approve in Slack to try again. Nothing was approved.",
                "provider_error",
            )
        try:
            provider = self.provider()
            proof = provider.verify(provider.exchange(code, verifier, self.redirect_uri), nonce)
        except SignInRefused as refused:
            return self._refused(request_id, key, state, refused.message, refused.reason)
        signed_in = {"signed_in_as": proof.name, "subject": proof.subject, "issuer": proof.issuer}
        signer = Person(email=proof.name)
        if not same_person(self.access.policy, approver, signer):
            return self._refused(
                request_id,
                key,
                state,
                f"You signed in as {proof.name}, but Approve was clicked by the Slack account "
                f"of {approver.label}. Only the person who clicked can approve, signed in as "
                "themselves. Nothing was approved.",
                "wrong_person",
                signed_in,
            )
        try:
            view = self.access.approve(request_id, approver, step_up=proof.audit())
        except ServiceError as exc:
            return self._refused(request_id, key, state, exc.message, "not_allowed", signed_in)
        self._record(state, APPROVED)
        log.info(
            "event=step_up_approved request=%s approver=%s subject=%s amr=%s",
            request_id,
            approver.label,
            proof.subject,
            ",".join(proof.amr),
        )
        return Finished(request_id, view)

    def _refused(
        self,
        request_id: int | None,
        approver: str | None,
        state: str | None,
        message: str,
        reason: str,
        detail: Mapping[str, object] | None = None,
        *,
        record: bool = True,
    ) -> Finished:
        """Log and audit a refusal (`stepup.refused`, on the request's trail, with the reason
        and who the provider said signed in, if it got that far), and keep it on the sign-in's
        row; nothing else changes."""
        log.warning("event=step_up_refused request=%s reason=%s", request_id or "-", reason)
        alert = False
        if request_id is not None:
            now = self.clock.now()
            with self.access.db.transaction() as session:
                if state is not None and record:
                    self._set_outcome(session, state, reason)
                audit.append(
                    session,
                    at=now,
                    action=ALERT,
                    actor=approver or "wardkey",
                    request_id=request_id,
                    data={"reason": reason, "said": message, **(detail or {})},
                )
                if any(reason == a or reason.startswith(a + ":") for a in ALERTED) and not (
                    reason == "state_replayed" and self._replay_told(session, request_id)
                ):
                    # The security channel hears of it, through the outbox, with the refusal.
                    transitions.announce(
                        session,
                        f"stepup:{request_id}",
                        ALERT,
                        {
                            "request": request_id,
                            "reason": reason,
                            "approver": approver,
                            "approver_slack_id": self._slack_id_of(session, state, request_id),
                            **(detail or {}),
                        },
                        at=now,
                    )
                    alert = True
        return Finished(request_id, None, message, reason, alerted=alert)

    @staticmethod
    def _slack_id_of(session: Session, state: str | None, request_id: int) -> str | None:
        """The Slack account that clicked Approve for this sign-in (for the alert's mention)."""
        query = select(StepUpSignIn.approver_slack_id).where(StepUpSignIn.request_id == request_id)
        if state is not None:
            query = query.where(StepUpSignIn.state_hash == _hash(state))
        return session.scalars(query.order_by(StepUpSignIn.id.desc())).first()

    def _record(self, state: str, outcome: str) -> None:
        with self.access.db.transaction() as session:
            self._set_outcome(session, state, outcome)

    @staticmethod
    def _replay_told(session: Session, request_id: int) -> bool:
        """Security has been told of a replayed answer for this request already: each replay
        is audited, but one address kept in a browser's history must not flood the channel."""
        told = session.scalars(
            select(OutboxItem.id)
            .where(OutboxItem.lane == f"stepup:{request_id}", OutboxItem.action == ALERT)
            .where(OutboxItem.body.contains('"reason": "state_replayed"'))
            .limit(1)
        ).first()
        return told is not None

    @staticmethod
    def _set_outcome(session: Session, state: str, outcome: str) -> None:
        session.execute(
            update(StepUpSignIn)
            .where(StepUpSignIn.state_hash == _hash(state))
            .values(outcome=outcome[:200])
        )
