"""`wardkey demo`: one night shift, end to end, with no Slack workspace and no database server.

The real app runs over HTTP (waitress, signed requests, Bolt) against the local fake of the Slack
Web API, a SQLite file in a temporary folder, and a local stand-in for the EPR admin console that
WardKey reaches through the signed-webhook adapter. The service's clock is one the demo moves, so
an hour of access passes in a moment. What Slack would have shown is printed as a transcript.
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Callable
from contextlib import closing
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import TextIO
from zoneinfo import ZoneInfo

import httpx

from app.access import AccessService
from app.adapters.webhook import WebhookAdapter, WebhookSettings
from app.audit import verify
from app.clock import ManualClock
from app.demo.entra_directory import DemoEntra
from app.demo.slack_driver import SlackDriver, TrackingExecutor, serving
from app.demo.slack_fake import FakeSlack, SlackChannel, SlackUser
from app.demo.transcript import Transcript
from app.demo.webhook_target import WebhookTarget
from app.digest import jobs as digest_jobs
from app.directory import SlackDirectory
from app.grants import jobs as grant_jobs
from app.groups import DirectoryGroups
from app.groups import describe as describe_group
from app.lifecycle.deps import CoreDeps
from app.listeners import slack_app
from app.notify.notifier import Notifier
from app.oncall import OnCall
from app.policy import parse_policy
from app.requests.messages import (
    APPROVE_ACTION,
    CANCEL_ACTION,
    DENY_ACTION,
    DENY_BLOCK,
    DENY_INPUT,
    DENY_VIEW,
)
from app.reviews import jobs as review_jobs
from app.reviews.messages import NOTE_BLOCK, NOTE_INPUT, REVIEW_JUSTIFIED, REVIEW_VIEW
from app.scheduler import JobDeps, job_deps
from app.slack.app import web_client
from app.store import Database, upgrade
from app.store.models import RequestState
from app.web import WardKeyWSGI

ZONE = ZoneInfo("Europe/London")
START = datetime(2026, 11, 30, 3, 10, tzinfo=ZONE)  # Monday night; Ben is the on-call lead
TEAM = "T0DEMO"

PEOPLE = [
    SlackUser("U0AMIRA", "amira@demo.nhs.uk", "Amira Khan", "Clinical systems analyst", TEAM),
    SlackUser("U0BEN", "ben@demo.nhs.uk", "Ben Hughes", "Clinical systems lead (on call)", TEAM),
    SlackUser("U0CHLOE", "chloe@demo.nhs.uk", "Chloe Evans", "Clinical systems analyst", TEAM),
    SlackUser("U0DEV", "dev@demo.nhs.uk", "Dev Patel", "Integration engineer", TEAM),
    SlackUser("U0ERIN", "erin@demo.nhs.uk", "Erin Walsh", "Infrastructure lead", TEAM),
    SlackUser("U0FARID", "farid@demo.nhs.uk", "Farid Rahman", "Infrastructure lead", TEAM),
    SlackUser("U0GITA", "gita@demo.nhs.uk", "Gita Rao", "Head of IT operations", TEAM),
    SlackUser("U0HANA", "hana@demo.nhs.uk", "Hana Novak", "Site duty manager", TEAM),
]
MANAGERS = "C0MANAGERS"
CHANNELS = {"C0SECURITY": "#security-alerts", MANAGERS: "#manager-reviews"}


# The clinical systems team as the trust's Entra ID group has it: a leaver's account is disabled.
DIRECTORY_PEOPLE = [
    ("amira@demo.nhs.uk", True),
    ("ben@demo.nhs.uk", True),
    ("chloe@demo.nhs.uk", True),
    ("kai@demo.nhs.uk", False),
]
DIRECTORY_IN_POLICY = "http://127.0.0.1:1/entra"
GRAPH_SECRET_ENV = "WARDKEY_DEMO_GRAPH_SECRET"


class DemoFailed(Exception):
    """The scenario did not go as it should: a bug, said plainly instead of a happy transcript."""


# The on-call rota's rostering export, shipped with the demo and copied beside its database.
ROSTER = "clinical_roster.csv"
ROSTER_IN_POLICY = "/wardkey-demo/clinical_roster.csv"


def write_demo_roster(folder: Path) -> Path:
    """The demo's rostering export, written into `folder`; returns where."""
    path = folder / ROSTER
    path.write_bytes(resources.files("app.demo").joinpath(ROSTER).read_bytes())
    return path


def demo_policy_text(console_url: str, roster: Path | None = None) -> str:
    """The demo's policy, naming the local console and (when given) the roster export's path."""
    text = resources.files("app.demo").joinpath("demo_policy.yaml").read_text()
    if roster is not None:
        text = text.replace(ROSTER_IN_POLICY, str(roster))
    return text.replace("http://127.0.0.1:1/wardkey", console_url)


def run_demo(out: TextIO, workdir: Path | None = None) -> None:
    with tempfile.TemporaryDirectory(prefix="wardkey-demo-") as scratch:
        _run(out, Path(workdir or scratch))


def _run(out: TextIO, workdir: Path) -> None:
    key = secrets.token_bytes(32)
    console = WebhookTarget(key, name="EPR console").start()
    graph_secret = secrets.token_urlsafe(24)
    entra = DemoEntra(graph_secret, DIRECTORY_PEOPLE).start()
    fake = FakeSlack(team_id=TEAM).start()
    for person in PEOPLE:
        fake.add_user(person)
    for channel_id, name in CHANNELS.items():  # cards name them as Slack does
        fake.add_channel(SlackChannel(channel_id, name.removeprefix("#")))
    url = f"sqlite:///{workdir / 'wardkey-demo.db'}"
    upgrade(url)
    db = Database(url)
    text = demo_policy_text(console.url, write_demo_roster(workdir))
    policy = parse_policy(text.replace(DIRECTORY_IN_POLICY, entra.url), "demo policy")
    clock = ManualClock(START)
    # The clinical systems group read from the Entra ID stand-in, on the demo's clock.
    policy = policy.with_groups(
        DirectoryGroups(policy, clock, env={GRAPH_SECRET_ENV: graph_secret})
    )
    policy = policy.with_on_call(OnCall(policy, clock))  # the roster read on the demo's clock
    console_settings = WebhookSettings.model_validate(policy.targets["epr-console"].settings)
    service = AccessService(
        CoreDeps(db, policy, {"epr-console": WebhookAdapter(console_settings, key)}, clock)
    )
    client = web_client(fake.token, fake.api_url)
    signing_secret = secrets.token_hex(16)
    listeners = TrackingExecutor(max_workers=4)
    # One pool for work and dialogs, so waiting for it to be idle covers both.
    notifier = Notifier(client, service, SlackDirectory(client))
    bolt = slack_app(
        service, client, signing_secret, listeners, dialogs=listeners, notifier=notifier
    )
    deps = job_deps(service, notifier.outbox)
    names = {p.id: p.real_name for p in PEOPLE}
    story = Transcript(fake, out, names, CHANNELS, clock.now, ZONE, console.log)
    http = httpx.Client(timeout=10)
    try:
        wsgi = WardKeyWSGI(bolt, db, signing_secret)
        with closing(wsgi), serving(wsgi, threads=4) as app_url:
            slack = SlackDriver(app_url, fake, http, signing_secret, TEAM, (listeners,))
            try:
                _night_shift(Scene(slack, story, clock), service, deps)
            finally:
                listeners.wait_idle()
                http.close()  # before the server closes, so no connection is cut mid-answer
        _closing(out, service, db, console)
    finally:
        listeners.shutdown(wait=True)
        fake.stop()
        console.stop()
        entra.stop()
        db.engine.dispose()


class Scene:
    """One place that sends a step to the app, waits until WardKey is done, and prints it."""

    def __init__(
        self,
        slack: SlackDriver,
        story: Transcript,
        clock: ManualClock,
    ) -> None:
        self.slack = slack
        self.story = story
        self.clock = clock
        self._homes_opened = 0

    def at(self, minutes_later: int) -> None:
        self.clock.advance(timedelta(minutes=minutes_later))

    def until(self, hour: int, minute: int = 0) -> None:
        now = self.clock.now().astimezone(ZONE)
        self.clock.set(now.replace(hour=hour, minute=minute, second=0, microsecond=0))

    def _settle(self) -> None:
        try:
            self.slack.settle(timeout=15)
        except AssertionError:
            raise DemoFailed("WardKey did not finish reacting within 15 s") from None
        self.story.flush()

    def command(self, user: str, command: str, text: str) -> None:
        self.story.said(user, f"{command} {text}".strip())
        answer = self.slack.command(command, text, user)
        if answer.status_code != 200:
            raise DemoFailed(f"{command} was refused: HTTP {answer.status_code}")
        body = answer.text and answer.headers.get("content-type", "").startswith("application/json")
        if body and answer.json().get("text"):
            self.story.note("Slack shows the reply below at once; it came back with the ack")
            for line in answer.json()["text"].splitlines():
                print(f"        │ {line}", file=self.story.out)
        self._settle()

    def click(
        self,
        user: str,
        action: str,
        request_id: int,
        label: str,
        where: str,
        channel: str | None = None,
    ) -> None:
        self.story.clicked(user, label, where)
        self.slack.click(action, str(request_id), user, channel=channel or "D" + user[1:])
        self._settle()

    def click_home(self, user: str, action: str, request_id: int, label: str) -> None:
        """A button on the person's own App Home."""
        self.story.clicked(user, label, f"for #{request_id} on their App Home")
        self.slack.click(action, str(request_id), user, channel=None, view={"id": "VHOME"})
        self._settle()

    def open_home(self, user: str) -> None:
        self.story.opened_home(user)
        self._homes_opened += 1
        event = {"type": "app_home_opened", "user": user, "tab": "home"}
        self.slack.event(event, f"EvHome{self._homes_opened}")
        self._settle()

    def review(self, user: str, request_id: int, note: str) -> None:
        where = f"on review card #{request_id} in #manager-reviews"
        self.click(user, REVIEW_JUSTIFIED, request_id, "Justified", where, MANAGERS)
        opened = self.slack.fake.calls_to("views.open")[-1]
        self.story.said(user, f"types the note “{note}” and presses [Justified]")
        self.slack.submit_view(
            REVIEW_VIEW,
            {NOTE_BLOCK: {NOTE_INPUT: {"value": note}}},
            user,
            opened.args["view"]["private_metadata"],
        )
        self._settle()

    def deny(self, user: str, request_id: int, reason: str) -> None:
        self.click(user, DENY_ACTION, request_id, "Deny", f"on card #{request_id}")
        opened = self.slack.fake.calls_to("views.open")[-1]
        self.story.said(user, f"types the reason “{reason}” and presses [Deny]")
        self.slack.submit_view(
            DENY_VIEW,
            {DENY_BLOCK: {DENY_INPUT: {"value": reason}}},
            user,
            opened.args["view"]["private_metadata"],
        )
        self._settle()

    def sweep(self, what: str, run: Callable[[], object]) -> None:
        self.story.note(f"{self.clock_text()}  the {what} sweep runs")
        run()
        self.story.flush()

    def clock_text(self) -> str:
        return self.clock.now().astimezone(ZONE).strftime("%H:%M")


def _night_shift(scene: Scene, service: AccessService, deps: JobDeps) -> None:
    story = scene.story

    def latest(requester: str) -> int:
        views = service.requests_of_key(requester)
        if not views:
            raise DemoFailed(f"no request from {requester} was recorded")
        return max(v.id for v in views)

    def expect(request_id: int, state: RequestState) -> None:
        actual = service.get(request_id).state
        if actual != state:
            raise DemoFailed(f"request #{request_id} is {actual.value}, expected {state.value}")

    story.heading("1. A clinical request, approved by the on-call lead at 3 am")
    story.note(
        "clinical-systems, who may ask for ward-admin, is read "
        + describe_group(service.policy, "clinical-systems")
    )
    story.note("who is on call comes from the ward's e-rostering export, clinical_roster.csv")
    scene.command(
        "U0AMIRA",
        "/jit",
        "request epr-console:ward-admin 30m discharge letters stuck on ward 12, patients waiting",
    )
    clinical = latest("amira@demo.nhs.uk")
    scene.at(2)
    scene.click("U0BEN", APPROVE_ACTION, clinical, "Approve", f"on card #{clinical}")
    expect(clinical, RequestState.ACTIVE)
    scene.open_home("U0AMIRA")

    story.heading("2. A request that is refused, with the reason")
    scene.at(2)
    scene.command(
        "U0CHLOE", "/jit", "request epr-console:ward-admin 1h bulk edit of all ward patient lists"
    )
    denied = latest("chloe@demo.nhs.uk")
    scene.at(1)
    scene.deny("U0BEN", denied, "bulk edits go through the change board; raise a CHG please")
    expect(denied, RequestState.DENIED)

    story.heading("3. High-risk engineering work: a ticket and two approvers")
    scene.at(3)
    scene.command("U0DEV", "/jit", "request epr-console 1h restart the results feed")
    scene.command(
        "U0DEV",
        "/jit",
        "request epr-console:interface-engine 1h restart the HL7 results feed after the "
        "lab patch CHG0012345",
    )
    engineering = latest("dev@demo.nhs.uk")
    scene.at(1)
    scene.click("U0CHLOE", APPROVE_ACTION, engineering, "Approve", "on a forwarded card")
    scene.click("U0ERIN", APPROVE_ACTION, engineering, "Approve", f"on card #{engineering}")
    expect(engineering, RequestState.PENDING)
    scene.at(2)
    scene.click("U0FARID", APPROVE_ACTION, engineering, "Approve", f"on card #{engineering}")
    expect(engineering, RequestState.ACTIVE)

    story.heading("4. Break-glass replaces a request still waiting; security alerted, review due")
    scene.at(3)
    scene.command(
        "U0CHLOE",
        "/jit",
        "request epr-console:ward-admin 30m ED admissions screen rejects every nurse login",
    )
    waiting = latest("chloe@demo.nhs.uk")
    expect(waiting, RequestState.PENDING)
    scene.at(2)  # nobody has decided yet, and now ED cannot admit at all
    scene.command(
        "U0CHLOE",
        "/breakglass",
        "epr-console:ward-admin ED cannot admit patients: EPR locked every nurse out",
    )
    emergency = latest("chloe@demo.nhs.uk")
    expect(emergency, RequestState.ACTIVE)
    expect(
        waiting, RequestState.CANCELLED
    )  # replaced: its cards say so, its audit names #emergency

    story.heading("5. Time passes: access ends on its own, on the target too")
    scene.at(6)
    scene.sweep("expiry warning", lambda: grant_jobs.warn(deps))
    scene.at(8)
    scene.command("U0AMIRA", "/jit", "status")
    scene.at(2)
    scene.sweep("expiry", lambda: grant_jobs.expire(deps))
    expect(clinical, RequestState.ENDED)
    scene.at(39)
    scene.sweep("expiry", lambda: grant_jobs.expire(deps))
    expect(engineering, RequestState.ENDED)
    scene.at(5)
    scene.sweep("expiry", lambda: grant_jobs.expire(deps))
    expect(emergency, RequestState.ENDED)

    story.heading("6. The break-glass use is reviewed by a manager, never by its user")
    scene.at(1)
    scene.sweep("review", lambda: review_jobs.review(deps))
    # ── The review card ─────────────────────────────────────────────────────────────────
    # Its richer form (people and channels by name, the user's earlier requests for this
    # access, such as the one this use replaced, and their break-glass count over 30 days)
    # is printed by the sweep above; tests/demo/test_demo.py checks it under "the review card".
    # ─────────────────────────────────────────────────────────────────────────────────────
    where = f"on review card #{emergency} in #manager-reviews"
    scene.click("U0CHLOE", REVIEW_JUSTIFIED, emergency, "Justified", where, MANAGERS)
    scene.at(20)
    scene.review("U0HANA", emergency, "ED admissions were blocked; the right call, used briefly")
    review = service.get(emergency).review
    if review is None or review.state != "justified":
        raise DemoFailed(f"the review of #{emergency} was not recorded")

    story.heading("7. A request withdrawn before anyone decides")
    scene.at(23)
    scene.command(
        "U0AMIRA",
        "/jit",
        "request epr-console:ward-admin 30m re-send ward 12 discharge letters that failed",
    )
    withdrawn = latest("amira@demo.nhs.uk")
    scene.at(2)  # the letters went out after all: she withdraws it from her App Home
    scene.click_home("U0AMIRA", CANCEL_ACTION, withdrawn, "Cancel request")
    expect(withdrawn, RequestState.CANCELLED)

    story.heading("8. 08:00: the managers' daily digest")
    scene.until(8)
    scene.sweep("digest", lambda: digest_jobs.digest(deps))


def _closing(out: TextIO, service: AccessService, db: Database, console: WebhookTarget) -> None:
    holders = {e: sorted(a) for e, a in console.members.items() if a}
    result = verify(db)
    if not result.ok:
        raise DemoFailed(f"the audit chain does not verify: {result.summary()}")
    print(file=out)
    print("── What is left " + "─" * 58, file=out)
    print(f"   EPR console access still held: {holders or 'none'}", file=out)
    print(f"   Audit trail: {result.summary()}", file=out)
    print(
        "   Next: `wardkey policy check manifests/policy.example.yaml`, then README.md "
        "“Running the Slack app”.",
        file=out,
    )
