"""Step-up approval, end to end: a signed Approve click to the running app answers with a
one-time link; the link goes to a local OpenID provider that issues real RS256 ID tokens; its
answer comes back to WardKey's callback, and only a sign-in that proves the same person, fresh,
with MFA, who may still approve, approves the request (through the same decide use case as any
approval). Every refusal leaves nothing granted and says why on the page."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml

from app.access import AccessService
from app.clock import ManualClock
from app.config import Settings
from app.demo.slack_driver import SlackDriver, TrackingExecutor, serving
from app.demo.slack_fake import FakeSlack
from app.directory import SlackDirectory
from app.lifecycle.deps import CoreDeps
from app.lifecycle.errors import StepUpNeeded
from app.listeners import slack_app
from app.notify.notifier import Notifier
from app.policy import Policy, PolicyError, parse_policy
from app.requests.messages import APPROVE_ACTION
from app.runtime import check_step_up
from app.slack.app import web_client
from app.startup import StartupError
from app.stepup.pages import StepUpPages
from app.stepup.service import StepUpService
from app.store import AuditEvent, Database, upgrade
from app.store.models import OutboxItem, StepUpSignIn
from app.store.models import RequestState as S
from app.web import WardKeyWSGI
from tests.conftest import AMIRA, BEN, HERE, _empty_postgres, sqlite_copy
from tests.fakes.memory_adapter import MemoryTarget
from tests.fakes.oidc_provider import FakeOpenIDProvider
from tests.slack_harness import SIGNING_SECRET, TEAM, WARD_USERS, run_app

CLIENT_ID = "3f9c1a52-wardkey-test"
CLIENT_SECRET = "idp-client-secret-for-tests"
SECRET_ENV = "WARDKEY_TEST_IDP_SECRET"
REQUEST = "pharmacy-db:read 30m fix stuck order set on ward 12"
LINK = re.compile(r"<(http://[^|>]+/step-up/[^|>]+)\|")


def ward_policy_with(**provider: Any) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((HERE / "data" / "ward_policy.yaml").read_text())
    data["paths"]["clinical"]["step_up"] = True
    data["identity_provider"] = {
        "client_id": CLIENT_ID,
        "client_secret_env": SECRET_ENV,
        "max_age": "5m",
        "amr": ["mfa"],
        "insecure": True,
        **provider,
    }
    return data


@pytest.fixture
def idp(clock: ManualClock) -> Iterator[FakeOpenIDProvider]:
    provider = FakeOpenIDProvider(clock, CLIENT_ID, CLIENT_SECRET).start()
    yield provider
    provider.stop()


@pytest.fixture
def policy(idp: FakeOpenIDProvider) -> Policy:
    """The ward's policy, with the clinical path needing step-up with the fake provider."""
    return parse_policy(yaml.safe_dump(ward_policy_with(issuer=idp.issuer)))


@pytest.fixture
def db(tmp_path: Path, sqlite_template: Path) -> Iterator[Database]:
    yield from sqlite_copy(tmp_path, sqlite_template)


class App:
    """The running app, its step-up service and a browser."""

    def __init__(self, slack: SlackDriver, stepup: StepUpService, browser: httpx.Client) -> None:
        self.slack = slack
        self.stepup = stepup
        self.browser = browser

    def ask(self, user: str = "U0AMIRA") -> int:
        before = len(self.slack.fake.calls_to("response_url"))
        assert self.slack.command("/jit", f"request {REQUEST}", user).status_code == 200
        reply = self.slack.replies(before + 1)[-1]
        assert reply.startswith("Request #"), reply
        self.slack.settle()
        self.slack.fake.wait_for("chat.postMessage", 3)
        return int(reply.split("#")[1].split(" ")[0])

    def click_approve(self, rid: int, user: str = "U0BEN") -> str:
        """The approver clicks Approve; the ephemeral answer they get (its text)."""
        before = len(self.slack.fake.calls_to("chat.postEphemeral", user=user))
        assert self.slack.click(APPROVE_ACTION, str(rid), user).status_code == 200
        self.slack.settle()
        notes = self.slack.fake.wait_for("chat.postEphemeral", before + 1, user=user)
        return str(notes[-1].args["text"])

    def link_for(self, rid: int, user: str = "U0BEN") -> str:
        text = self.click_approve(rid, user)
        found = LINK.search(text)
        assert found, text
        return found[1]

    def sign_in(self, link: str) -> httpx.Response:
        """The approver's browser follows the link: to the provider, which signs them in at
        once, and back to WardKey's callback; the page they land on."""
        page = self.browser.get(link)
        self.slack.settle()
        return page


@pytest.fixture
def app(
    service: AccessService, idp: FakeOpenIDProvider, monkeypatch: pytest.MonkeyPatch
) -> Iterator[App]:
    fake = FakeSlack().start()
    for user in WARD_USERS:
        fake.add_user(user)
    client = web_client(fake.token, fake.api_url)
    listeners, dialogs = TrackingExecutor(max_workers=4), TrackingExecutor(max_workers=2)
    stepup = StepUpService(service, "http://unset", env={SECRET_ENV: CLIENT_SECRET})
    notifier = Notifier(client, service, SlackDirectory(client))
    bolt = slack_app(
        service, client, SIGNING_SECRET, listeners, dialogs, notifier=notifier, stepup=stepup
    )
    pages = StepUpPages(stepup, notifier.deliver_now)
    browser = httpx.Client(timeout=10, follow_redirects=True)
    http = httpx.Client(timeout=10)
    wsgi = WardKeyWSGI(bolt, service.db, SIGNING_SECRET, step_up=pages)
    try:
        with serving(wsgi) as url:
            stepup.public_url = url
            idp.redirect_uris.append(stepup.redirect_uri)
            driver = SlackDriver(url, fake, http, SIGNING_SECRET, TEAM, (listeners, dialogs))
            yield App(driver, stepup, browser)
    finally:
        browser.close()
        http.close()
        for pool in (dialogs, listeners):
            pool.shutdown(wait=True)
        wsgi.close()
        fake.stop()


def step_up_events(service: AccessService, rid: int) -> list[dict[str, Any]]:
    with service.db.read() as session:
        bodies = session.scalars(
            sa.select(AuditEvent.body).where(AuditEvent.request_id == rid).order_by(AuditEvent.seq)
        ).all()
    return [json.loads(b) for b in bodies]


def sign_ins(service: AccessService, rid: int) -> list[StepUpSignIn]:
    with service.db.read() as session:
        return list(
            session.scalars(sa.select(StepUpSignIn).where(StepUpSignIn.request_id == rid)).all()
        )


NOTHING = "Nothing was approved"


def assert_nothing_granted(
    service: AccessService, targets: dict[str, MemoryTarget], rid: int, refused: str | None = None
) -> dict[str, Any]:
    """Nothing approved or granted; with `refused`, the refusal is on the request's audit trail
    with that reason (its data returned)."""
    view = service.get(rid)
    assert view.state == S.PENDING
    assert not view.approvals
    assert not targets["pharmacy-db"].holds("amira", "pharmacy_read")
    events = step_up_events(service, rid)
    actions = [e["action"] for e in events]
    assert "request.approved" not in actions and "request.approval_recorded" not in actions
    if refused is None:
        return {}
    refusals = [e for e in events if e["action"] == "stepup.refused"]
    assert [e["data"]["reason"] for e in refusals][-1:] == [refused], refusals
    assert refusals[-1]["actor"] == "ben@ward.nhs.uk"
    return dict(refusals[-1]["data"])


def security_alert(app: App, rid: int) -> str:
    """The security channel's message about a refused sign-in for request `rid`."""
    posts = app.slack.fake.wait_for("chat.postMessage", 1, channel="C0SEC")
    said = [str(p.args["text"]) for p in posts if f"refused on request #{rid}" in p.args["text"]]
    assert len(said) == 1, [p.args["text"] for p in posts]
    return said[0]


def no_alert_recorded(service: AccessService, rid: int) -> None:
    """No security alert was written for this request's refusals (an ordinary mistake)."""
    with service.db.read() as session:
        alerts = session.scalars(
            sa.select(OutboxItem.id).where(
                OutboxItem.action == "stepup.refused", OutboxItem.lane == f"stepup:{rid}"
            )
        ).all()
    assert alerts == []


class TestStepUpApproval:
    def test_the_card_says_approval_needs_sign_in(self, app: App) -> None:
        app.ask()
        cards = app.slack.fake.wait_for("chat.postMessage", 3)
        assert all("Approval needs sign-in" in json.dumps(c.args["blocks"]) for c in cards)

    def test_on_call_lead_signs_in_with_mfa_and_the_request_is_approved(
        self,
        app: App,
        service: AccessService,
        idp: FakeOpenIDProvider,
        targets: dict[str, MemoryTarget],
    ) -> None:
        rid = app.ask()
        said = app.click_approve(rid)
        assert f"Approving request #{rid} needs you to sign in" in said
        assert "until 03:05" in said  # the link works five minutes, once
        # The click approved nothing.
        assert_nothing_granted(service, targets, rid)
        link = LINK.search(said)
        assert link is not None

        idp.sign_in_as("ben@ward.nhs.uk", amr=["pwd", "mfa"])
        page = app.sign_in(link[1])

        assert page.status_code == 200, page.text
        assert f"You approved request #{rid}" in page.text
        assert "until 03:30" in page.text
        view = service.get(rid)
        assert view.state == S.ACTIVE
        assert targets["pharmacy-db"].holds("amira", "pharmacy_read")
        # The browser went to the provider with a fresh sign-in asked for, PKCE S256, a
        # nonce and the approver's e-mail as a hint; and came back to WardKey's callback.
        asked = idp.authorize_requests[-1]
        assert asked["code_challenge_method"] == "S256" and len(asked["code_challenge"]) == 43
        assert asked["prompt"] == "login" and asked["max_age"] == "300"
        assert asked["nonce"] and asked["state"] and asked["login_hint"] == "ben@ward.nhs.uk"
        assert idp.token_requests[-1]["code_verifier"]
        # The audit trail says who the provider vouched for, and how they signed in.
        approved = [e for e in step_up_events(service, rid) if e["action"] == "request.approved"]
        proof = approved[0]["data"]["step_up"]
        assert proof["issuer"] == idp.issuer
        assert proof["subject"] and proof["signed_in_as"] == "ben@ward.nhs.uk"
        assert proof["amr"] == ["pwd", "mfa"]
        assert proof["auth_time"] == "2026-11-30T03:00:00+00:00"
        # Every card says so, through the outbox.
        updates = app.slack.fake.wait_for("chat.update", 3)
        assert {u.args["channel"] for u in updates} == {"D0BEN", "D0GITA", "D0HANA"}
        assert all("Approved by Ben Hughes" in json.dumps(u.args["blocks"]) for u in updates)
        assert [s.outcome for s in sign_ins(service, rid)] == ["approved"]

    def test_someone_else_signing_in_approves_nothing(
        self,
        app: App,
        service: AccessService,
        idp: FakeOpenIDProvider,
        targets: dict[str, MemoryTarget],
    ) -> None:
        rid = app.ask()
        link = app.link_for(rid)
        idp.sign_in_as("chloe@ward.nhs.uk")  # Ben's link, Chloe's sign-in
        page = app.sign_in(link)
        assert page.status_code == 403
        assert "You signed in as chloe@ward.nhs.uk" in page.text
        assert "Slack account of ben@ward.nhs.uk" in page.text and NOTHING in page.text
        said = assert_nothing_granted(service, targets, rid, refused="wrong_person")
        assert said["signed_in_as"] == "chloe@ward.nhs.uk" and said["issuer"] == idp.issuer
        alert = security_alert(app, rid)
        assert "the identity provider signed in chloe@ward.nhs.uk, not the approver" in alert
        assert "Approve was clicked by Ben Hughes" in alert and "for Amira Khan" in alert

    def test_a_sign_in_without_mfa_approves_nothing(
        self,
        app: App,
        service: AccessService,
        idp: FakeOpenIDProvider,
        targets: dict[str, MemoryTarget],
    ) -> None:
        rid = app.ask()
        idp.sign_in_as("ben@ward.nhs.uk", amr=["pwd"])
        page = app.sign_in(app.link_for(rid))
        assert page.status_code == 403
        assert "did not use what approving on this path needs (mfa" in page.text
        assert_nothing_granted(service, targets, rid, refused="amr_missing")
        no_alert_recorded(service, rid)

    def test_a_stale_sign_in_approves_nothing(
        self,
        app: App,
        service: AccessService,
        idp: FakeOpenIDProvider,
        clock: ManualClock,
        targets: dict[str, MemoryTarget],
    ) -> None:
        rid = app.ask()
        # The provider kept an old session: Ben signed in 6 minutes ago, max_age is 5.
        idp.sign_in_as("ben@ward.nhs.uk", auth_time=clock.now() - timedelta(minutes=6))
        page = app.sign_in(app.link_for(rid))
        assert page.status_code == 403
        assert "Your sign-in was not fresh" in page.text and "within 5 minutes" in page.text
        assert_nothing_granted(service, targets, rid, refused="stale_sign_in")
        no_alert_recorded(service, rid)

    def test_a_sign_in_just_within_max_age_counts(
        self, app: App, service: AccessService, idp: FakeOpenIDProvider, clock: ManualClock
    ) -> None:
        rid = app.ask()
        idp.sign_in_as("ben@ward.nhs.uk", auth_time=clock.now() - timedelta(minutes=5))
        assert app.sign_in(app.link_for(rid)).status_code == 200
        assert service.get(rid).state == S.ACTIVE

    def test_a_replayed_callback_is_refused_and_approves_once(
        self,
        app: App,
        service: AccessService,
        idp: FakeOpenIDProvider,
    ) -> None:
        rid = app.ask()
        idp.sign_in_as("ben@ward.nhs.uk")
        page = app.sign_in(app.link_for(rid))
        assert page.status_code == 200
        callback = str(page.url)  # /step-up/callback?code=…&state=…, as a proxy log keeps it
        again = app.browser.get(callback)
        assert again.status_code == 403
        assert "was finished already" in again.text
        assert len(service.get(rid).approvals) == 1
        actions = [e["action"] for e in step_up_events(service, rid)]
        assert actions.count("request.approved") == 1
        assert "answer was sent a second time (replayed)" in security_alert(app, rid)

    def test_replays_of_one_answer_are_each_audited_and_told_to_security_once(
        self, app: App, service: AccessService, idp: FakeOpenIDProvider
    ) -> None:
        """An address kept in a browser's history, reloaded again and again, must not flood
        the security channel; every replay stays on the request's trail."""
        rid = app.ask()
        idp.sign_in_as("ben@ward.nhs.uk")
        callback = str(app.sign_in(app.link_for(rid)).url)
        for _ in range(5):
            assert app.browser.get(callback).status_code == 403
        refusals = [e for e in step_up_events(service, rid) if e["action"] == "stepup.refused"]
        assert len(refusals) == 5
        with service.db.read() as session:
            alerts = session.scalars(
                sa.select(OutboxItem.id).where(
                    OutboxItem.action == "stepup.refused", OutboxItem.lane == f"stepup:{rid}"
                )
            ).all()
        assert len(alerts) == 1
        assert "answer was sent a second time (replayed)" in security_alert(app, rid)

    def test_a_replayed_state_with_a_new_code_is_refused(
        self,
        app: App,
        service: AccessService,
        idp: FakeOpenIDProvider,
        targets: dict[str, MemoryTarget],
    ) -> None:
        """Someone who saw a refused sign-in's state cannot finish it later with a code of
        their own: the state counts once, whatever came of it."""
        rid = app.ask()
        idp.sign_in_as("ben@ward.nhs.uk", amr=["pwd"])
        first = app.sign_in(app.link_for(rid))
        assert first.status_code == 403
        state = dict(httpx.URL(str(first.url)).params)["state"]
        idp.sign_in_as("ben@ward.nhs.uk")
        again = app.browser.get(
            f"{app.stepup.redirect_uri}?{httpx.QueryParams(code='fresh-code', state=state)}"
        )
        assert again.status_code == 403 and "was finished already" in again.text
        assert_nothing_granted(service, targets, rid, refused="state_replayed")

    def test_a_forged_id_token_approves_nothing(
        self,
        app: App,
        service: AccessService,
        idp: FakeOpenIDProvider,
        targets: dict[str, MemoryTarget],
    ) -> None:
        rid = app.ask()
        idp.sign_in_as("ben@ward.nhs.uk")
        idp.forge = True  # signed with a key the provider's JWKS does not hold (same kid)
        page = app.sign_in(app.link_for(rid))
        assert page.status_code == 403
        assert "not signed by the identity provider's keys" in page.text
        assert_nothing_granted(service, targets, rid, refused="bad_signature:bad_signature")
        assert "not signed by the identity provider's keys (forged?)" in security_alert(app, rid)

    def test_a_token_for_another_application_approves_nothing(
        self,
        app: App,
        service: AccessService,
        idp: FakeOpenIDProvider,
        targets: dict[str, MemoryTarget],
    ) -> None:
        rid = app.ask()
        idp.sign_in_as("ben@ward.nhs.uk")
        idp.audience = "00000003-another-app"
        page = app.sign_in(app.link_for(rid))
        assert page.status_code == 403
        assert "was issued for another application" in page.text
        assert_nothing_granted(service, targets, rid, refused="bad_claim:aud")
        assert "issued for another application" in security_alert(app, rid)

    def test_a_token_from_another_issuer_approves_nothing(
        self,
        app: App,
        service: AccessService,
        idp: FakeOpenIDProvider,
        targets: dict[str, MemoryTarget],
    ) -> None:
        rid = app.ask()
        idp.sign_in_as("ben@ward.nhs.uk")
        idp.issuer_in_token = "https://login.example.org/another-tenant/v2.0"
        page = app.sign_in(app.link_for(rid))
        assert page.status_code == 403
        assert "was issued by another identity provider" in page.text
        assert_nothing_granted(service, targets, rid, refused="bad_claim:iss")
        assert "came from another identity provider" in security_alert(app, rid)

    def test_a_token_whose_nonce_is_an_array_approves_nothing(
        self,
        app: App,
        service: AccessService,
        idp: FakeOpenIDProvider,
        targets: dict[str, MemoryTarget],
    ) -> None:
        """OpenID Connect Core 1.0 section 2: the `nonce` is a string. An array holding this
        sign-in's nonce is not it (a check that asks "is it among them" would pass it)."""
        rid = app.ask()
        idp.sign_in_as("ben@ward.nhs.uk")
        idp.nonce_as_list = True
        page = app.sign_in(app.link_for(rid))
        assert page.status_code == 403
        assert "does not belong to this sign-in (its nonce differs)" in page.text
        assert_nothing_granted(service, targets, rid, refused="bad_claim:nonce")

    def test_an_expired_link_approves_nothing(
        self,
        app: App,
        service: AccessService,
        idp: FakeOpenIDProvider,
        clock: ManualClock,
        targets: dict[str, MemoryTarget],
    ) -> None:
        rid = app.ask()
        link = app.link_for(rid)
        clock.advance(timedelta(minutes=5, seconds=1))
        idp.sign_in_as("ben@ward.nhs.uk")
        page = app.sign_in(link)
        assert page.status_code == 410
        assert f"This sign-in link for request #{rid} has expired" in page.text
        assert not idp.authorize_requests  # never sent to sign in
        assert_nothing_granted(service, targets, rid, refused="link_expired")

    def test_a_sign_in_finished_after_the_link_window_approves_nothing(
        self,
        app: App,
        service: AccessService,
        idp: FakeOpenIDProvider,
        clock: ManualClock,
        targets: dict[str, MemoryTarget],
    ) -> None:
        rid = app.ask()
        link = app.link_for(rid)
        idp.sign_in_as("ben@ward.nhs.uk")
        to_provider = app.browser.get(link, follow_redirects=False).headers["Location"]
        back = app.browser.get(to_provider, follow_redirects=False).headers["Location"]
        clock.advance(timedelta(minutes=5, seconds=1))  # the approver left the page open
        idp.sign_in_as("ben@ward.nhs.uk", auth_time=clock.now())
        page = app.browser.get(back)
        assert page.status_code == 403
        assert f"The sign-in for request #{rid} took too long to finish" in page.text
        assert_nothing_granted(service, targets, rid, refused="sign_in_expired")

    def test_a_sign_in_finished_in_another_browser_than_opened_the_link_approves_nothing(
        self,
        app: App,
        service: AccessService,
        idp: FakeOpenIDProvider,
        targets: dict[str, MemoryTarget],
    ) -> None:
        """Someone with Ben's Slack session (but not his password or MFA) clicks Approve,
        opens the link in their own browser and sends Ben the provider's sign-in address it
        led to ("please sign in"). Ben signs in properly, with MFA, in his own browser; its
        answer comes back to WardKey from a browser that never opened the link, and approves
        nothing (RFC 9700 section 4.7: the state is bound to the browser that began it)."""
        rid = app.ask()
        link = app.link_for(rid)
        with httpx.Client(timeout=10) as attacker:
            opened = attacker.get(link, follow_redirects=False)
        to_provider = opened.headers["Location"]
        # The browser that opened the link was given the sign-in's cookie, for the callback
        # only, not readable by scripts, sent back when the provider redirects to WardKey.
        given = opened.headers["set-cookie"]
        assert given.startswith("wardkey_step_up_") and "Path=/step-up/callback" in given
        assert "HttpOnly" in given and "SameSite=Lax" in given and "Max-Age=300" in given
        idp.sign_in_as("ben@ward.nhs.uk", amr=["pwd", "mfa"])
        page = app.browser.get(to_provider)  # Ben's browser: the provider, then the callback
        assert "/step-up/callback" in str(page.url)
        assert page.status_code == 403, page.text
        assert "finished in another browser than the one that opened" in page.text
        assert NOTHING in page.text
        assert_nothing_granted(service, targets, rid, refused="other_browser")
        assert not idp.token_requests  # the code was never even exchanged
        assert "finished in another browser than opened the link" in security_alert(app, rid)

    def test_the_cookie_is_secure_when_wardkey_is_reached_over_https(
        self, app: App, idp: FakeOpenIDProvider
    ) -> None:
        rid = app.ask()
        link = app.link_for(rid)
        app.stepup.public_url = "https://wardkey.ward.nhs.uk"  # as behind the trust's proxy
        opened = app.browser.get(link, follow_redirects=False)
        assert opened.status_code == 302
        assert "; Secure" in opened.headers["set-cookie"]

    def test_two_sign_ins_at_once_in_one_browser_both_count(
        self, app: App, service: AccessService, idp: FakeOpenIDProvider
    ) -> None:
        """Each sign-in has its own browser binding: Ben opens two links (two tabs) before
        finishing either, and both approvals apply."""
        first, second = app.ask(), app.ask(user="U0CHLOE")
        to_first = app.browser.get(app.link_for(first), follow_redirects=False)
        to_second = app.browser.get(app.link_for(second), follow_redirects=False)
        idp.sign_in_as("ben@ward.nhs.uk")
        for opened in (to_second, to_first):
            assert app.browser.get(opened.headers["Location"]).status_code == 200
        app.slack.settle()
        assert service.get(first).state == S.ACTIVE and service.get(second).state == S.ACTIVE

    def test_a_link_opens_once(
        self, app: App, service: AccessService, idp: FakeOpenIDProvider
    ) -> None:
        rid = app.ask()
        link = app.link_for(rid)
        idp.sign_in_as("ben@ward.nhs.uk")
        assert app.sign_in(link).status_code == 200
        again = app.browser.get(link)
        assert again.status_code == 410 and "was used already" in again.text
        assert len(idp.authorize_requests) == 1

    def test_an_approver_no_longer_on_call_when_signed_in_approves_nothing(
        self,
        app: App,
        service: AccessService,
        idp: FakeOpenIDProvider,
        clock: ManualClock,
        targets: dict[str, MemoryTarget],
    ) -> None:
        clock.set(datetime(2026, 11, 30, 7, 57, tzinfo=UTC))  # Ben's shift ends at 08:00
        rid = app.ask()
        link = app.link_for(rid)
        clock.set(datetime(2026, 11, 30, 8, 1, tzinfo=UTC))  # Chloe's shift now
        idp.sign_in_as("ben@ward.nhs.uk")
        page = app.sign_in(link)
        assert page.status_code == 403
        assert "You are not an approver for the clinical path right now" in page.text
        assert_nothing_granted(service, targets, rid, refused="not_allowed")
        no_alert_recorded(service, rid)

    def test_the_requester_cannot_approve_their_own_request(
        self, app: App, service: AccessService, idp: FakeOpenIDProvider
    ) -> None:
        rid = app.ask(user="U0CHLOE")  # Chloe asks; Chloe clicks her own card's Approve
        said = app.click_approve(rid, user="U0CHLOE")
        assert "You cannot approve or deny your own request" in said
        assert "step-up" not in said and not sign_ins(service, rid)  # no link was made
        assert service.get(rid).state == S.PENDING

    def test_a_non_approver_gets_no_link(self, app: App, service: AccessService) -> None:
        rid = app.ask()
        said = app.click_approve(rid, user="U0CHLOE")  # not on call at 03:00
        assert "You are not an approver for the clinical path right now" in said
        assert not sign_ins(service, rid)

    def test_a_bad_or_missing_state_approves_nothing(self, app: App) -> None:
        page = app.browser.get(f"{app.stepup.redirect_uri}?code=abc&state=made-up")
        assert page.status_code == 403 and "not for a sign-in WardKey started" in page.text
        page = app.browser.get(f"{app.stepup.redirect_uri}?code=abc")
        assert page.status_code == 400 and "missing its sign-in state" in page.text
        page = app.browser.get(app.stepup.public_url + "/step-up/not-a-link")
        assert page.status_code == 410 and "not a sign-in link WardKey made" in page.text


class TestStepUpRules:
    def test_an_approval_without_a_sign_in_is_refused_by_the_service(
        self, service: AccessService, targets: dict[str, MemoryTarget]
    ) -> None:
        rid = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REQUEST).id
        with pytest.raises(StepUpNeeded, match="needs a fresh sign-in"):
            service.approve(rid, BEN)
        assert_nothing_granted(service, targets, rid)

    def test_a_wardkey_started_without_step_up_approves_nothing_on_such_a_path(
        self, service: AccessService, targets: dict[str, MemoryTarget]
    ) -> None:
        """A reload turned step_up on, but this process was started without an identity
        provider (so without WARDKEY_PUBLIC_URL): Approve says why nothing happened."""
        for slack in run_app(service):  # the app as started with no step-up
            rid = App(slack, StepUpService(service, "http://unused"), slack.http).ask()
            slack.click(APPROVE_ACTION, str(rid), "U0BEN")
            slack.settle()
            note = slack.fake.wait_for("chat.postEphemeral", 1, user="U0BEN")[0]
            assert (
                "needs a fresh sign-in, and WardKey could not send you a sign-in link"
                in (note.args["text"])
            )
            assert_nothing_granted(service, targets, rid)

    def test_a_sign_in_begun_on_one_instance_finishes_on_another(
        self, service: AccessService, idp: FakeOpenIDProvider, clock: ManualClock
    ) -> None:
        """Nothing of a sign-in is kept in memory: a second process (or the first, restarted)
        on the same database opens the link, and a third takes the provider's answer."""
        across_instances(service, idp, clock)

    @pytest.mark.postgres
    def test_on_postgresql_too(
        self,
        postgres_database: Database,
        policy: Policy,
        targets: dict[str, MemoryTarget],
        idp: FakeOpenIDProvider,
        clock: ManualClock,
    ) -> None:
        _empty_postgres(postgres_database)
        across_instances(
            AccessService(CoreDeps(postgres_database, policy, targets, clock)), idp, clock
        )

    def test_step_up_needs_an_identity_provider(self) -> None:
        data = ward_policy_with(issuer="https://login.example.org/t/v2.0")
        del data["identity_provider"]
        with pytest.raises(PolicyError) as caught:
            parse_policy(yaml.safe_dump(data))
        assert [(i.where, i.message) for i in caught.value.issues] == [
            (
                "paths.clinical.step_up",
                "step-up needs an identity_provider at the top level to sign in with",
            )
        ]

    def test_a_plain_http_issuer_is_refused_unless_marked_insecure(self) -> None:
        data = ward_policy_with(issuer="http://idp.ward.nhs.uk/t/v2.0", insecure=False)
        with pytest.raises(PolicyError) as caught:
            parse_policy(yaml.safe_dump(data))
        assert [i.where for i in caught.value.issues] == ["identity_provider.issuer"]
        assert "plain http://" in str(caught.value.issues[0])

    def test_break_glass_has_no_step_up(self) -> None:
        data = ward_policy_with(issuer="https://login.example.org/t/v2.0")
        data["paths"]["breakglass"]["step_up"] = True
        with pytest.raises(PolicyError) as caught:
            parse_policy(yaml.safe_dump(data))
        assert [i.where for i in caught.value.issues] == ["paths.breakglass.step_up"]

    def test_serve_will_not_start_without_a_public_url_or_the_secret(
        self, policy: Policy, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        with pytest.raises(StartupError, match="WARDKEY_PUBLIC_URL is not set, and the clinical"):
            check_step_up(Settings(wardkey_public_url=None), policy)
        with pytest.raises(StartupError, match=f"{SECRET_ENV} is not set"):
            check_step_up(Settings(wardkey_public_url="https://wardkey.ward.nhs.uk"), policy)


def across_instances(service: AccessService, idp: FakeOpenIDProvider, clock: ManualClock) -> None:
    rid = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REQUEST).id
    env = {SECRET_ENV: CLIENT_SECRET}

    def instance() -> StepUpService:
        fresh = AccessService(CoreDeps(service.db, service.policy, service.adapters, clock))
        return StepUpService(fresh, "https://wardkey.ward.nhs.uk", env=env)

    first = instance()
    idp.redirect_uris.append(first.redirect_uri)
    offer = first.offer(rid, BEN)
    idp.sign_in_as("ben@ward.nhs.uk")
    opened = instance().open(offer.url.rsplit("/", 1)[1])
    back = httpx.get(opened.url)  # the provider signs Ben in and sends him back
    answer = dict(httpx.URL(back.headers["Location"]).params)
    finished = instance().finish(answer["state"], answer["code"], browser=opened.browser)
    assert finished.refusal is None
    assert service.get(rid).state == S.ACTIVE
    again = instance().finish(answer["state"], answer["code"], browser=opened.browser)
    assert again.reason == "state_replayed"


class TestTheProvider:
    def test_keys_rolled_by_the_provider_are_read_again(
        self, app: App, service: AccessService, idp: FakeOpenIDProvider
    ) -> None:
        """Entra ID rolls its signing keys: a token signed with a key WardKey has not seen
        makes it read the JWKS again (once), and the new key then verifies."""
        first, second = app.ask(), app.ask(user="U0CHLOE")
        idp.sign_in_as("ben@ward.nhs.uk")
        assert app.sign_in(app.link_for(first)).status_code == 200
        idp.key = idp.new_key("wardkey-test-2")  # the provider publishes only the new key now
        assert app.sign_in(app.link_for(second)).status_code == 200
        assert service.get(second).state == S.ACTIVE
        assert idp.jwks_reads == 2

    def test_a_provider_that_signs_nobody_in_approves_nothing(
        self,
        app: App,
        service: AccessService,
        idp: FakeOpenIDProvider,
        targets: dict[str, MemoryTarget],
    ) -> None:
        rid = app.ask()
        idp.next_sign_in = None  # the approver cancelled at the provider
        page = app.sign_in(app.link_for(rid))
        assert page.status_code == 403
        assert "The identity provider did not sign you in (access_denied)" in page.text
        assert_nothing_granted(service, targets, rid, refused="provider_error")

    def test_acr_values_are_asked_for_and_the_token_must_carry_one(
        self,
        db: Database,
        idp: FakeOpenIDProvider,
        targets: dict[str, MemoryTarget],
        clock: ManualClock,
    ) -> None:
        strict = parse_policy(
            yaml.safe_dump(
                ward_policy_with(issuer=idp.issuer, acr_values=["urn:ward:acr:phishing-resistant"])
            )
        )
        service = AccessService(CoreDeps(db, strict, targets, clock))
        stepup = StepUpService(
            service, "https://wardkey.ward.nhs.uk", env={SECRET_ENV: CLIENT_SECRET}
        )
        idp.redirect_uris.append(stepup.redirect_uri)

        def sign_in(acr: str | None) -> Any:
            rid = service.request(AMIRA, "pharmacy-db", "read", timedelta(minutes=30), REQUEST).id
            offer = stepup.offer(rid, BEN)
            idp.sign_in_as("ben@ward.nhs.uk", acr=acr)
            opened = stepup.open(offer.url.rsplit("/", 1)[1])
            assert dict(httpx.URL(opened.url).params)["acr_values"] == (
                "urn:ward:acr:phishing-resistant"
            )
            back = dict(httpx.URL(httpx.get(opened.url).headers["Location"]).params)
            return rid, stepup.finish(back["state"], back["code"], browser=opened.browser)

        rid, weak = sign_in("urn:ward:acr:password")
        assert weak.reason == "acr_missing" and weak.refusal is not None
        assert "not at the level approving on this path needs" in weak.refusal
        service.cancel(rid, AMIRA)
        rid, strong = sign_in("urn:ward:acr:phishing-resistant")
        assert strong.refusal is None and service.get(rid).state == S.ACTIVE
        approved = [e for e in step_up_events(service, rid) if e["action"] == "request.approved"]
        assert approved[0]["data"]["step_up"]["acr"] == "urn:ward:acr:phishing-resistant"


class TestWardkeyServe:
    """`wardkey serve` as deployed: it will not start without what step-up needs, and once
    started it serves the sign-in pages beside /slack/events."""

    @pytest.fixture
    def env(self, tmp_path: Path, idp: FakeOpenIDProvider, fake: FakeSlack) -> dict[str, str]:
        policy_file = tmp_path / "policy.yaml"
        policy_file.write_text(yaml.safe_dump(ward_policy_with(issuer=idp.issuer)))
        database = f"sqlite:///{tmp_path / 'wardkey.db'}"
        upgrade(database)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "WARDKEY_"))}
        env.update(
            DATABASE_URL=database,
            WARDKEY_POLICY=str(policy_file),
            PHARMACY_DB_PASSWORD="not-used-here",
            DIRECTORY_PASSWORD="not-used-here",
            SLACK_BOT_TOKEN=fake.token,
            SLACK_SIGNING_SECRET=SIGNING_SECRET,
            SLACK_APP_TOKEN=fake.app_token,
            SLACK_API_URL=fake.api_url,
        )
        return env

    @staticmethod
    def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def test_serve_will_not_start_without_the_public_url(self, env: dict[str, str]) -> None:
        result = self.run(["serve"], {**env, SECRET_ENV: CLIENT_SECRET})
        assert result.returncode == 2
        assert "wardkey: WARDKEY_PUBLIC_URL is not set, and the clinical path needs it" in (
            result.stderr
        )
        assert "Traceback" not in result.stderr

    def test_nor_without_the_client_secret(self, env: dict[str, str]) -> None:
        result = self.run(["serve"], {**env, "WARDKEY_PUBLIC_URL": "https://wardkey.example"})
        assert result.returncode == 2
        assert f"wardkey: {SECRET_ENV} is not set" in result.stderr

    def test_socket_mode_refuses_step_up(self, env: dict[str, str]) -> None:
        given = {**env, SECRET_ENV: CLIENT_SECRET, "WARDKEY_PUBLIC_URL": "https://w.example"}
        result = self.run(["socket", "--no-scheduler"], given)
        assert result.returncode == 2
        assert "run `wardkey serve` behind WARDKEY_PUBLIC_URL instead" in result.stderr

    def test_serve_serves_the_sign_in_pages(self, env: dict[str, str], fake: FakeSlack) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        url = f"http://127.0.0.1:{port}"
        given = {**env, SECRET_ENV: CLIENT_SECRET, "WARDKEY_PUBLIC_URL": url}
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--port", str(port), "--host", "127.0.0.1",
             "--no-scheduler"],
            env=given,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{url}/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.poll() is None, "serve stopped"
                assert time.monotonic() < deadline, "serve did not start"
                time.sleep(0.1)
            page = httpx.get(f"{url}/step-up/not-a-link-wardkey-made")
            assert page.status_code == 410
            assert "not a sign-in link WardKey made" in page.text
            assert page.headers["cache-control"] == "no-store"
            assert page.headers["referrer-policy"] == "no-referrer"
            answer = httpx.get(f"{url}/step-up/callback", params={"state": "x", "code": "y"})
            assert answer.status_code == 403 and "Nothing was approved" in answer.text
        finally:
            process.terminate()
            process.wait(timeout=10)
