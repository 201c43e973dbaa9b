"""The webhook adapter against a real receiver on loopback that checks every signature, and an
attacker who captured signed requests on the way and sends them again."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from app.adapters import PermanentAdapterError, TransientAdapterError
from app.adapters.registry import AdapterConfigError, build_adapters
from app.adapters.webhook import (
    IDEMPOTENCY_HEADER,
    Envelope,
    WebhookAdapter,
    WebhookSettings,
    sign,
    verify,
)
from app.clock import ManualClock
from app.demo.webhook_target import WebhookTarget
from app.policy import parse_policy
from tests.conftest import HERE, NIGHT_SHIFT
from tests.policy.test_policy import ward

KEY = b"shared-webhook-key-for-tests"
UNTIL = datetime(2026, 11, 30, 3, 30, tzinfo=UTC)


@pytest.fixture
def epr(clock: ManualClock) -> Iterator[WebhookTarget]:
    target = WebhookTarget(KEY, "EPR admin console", clock=clock).start()
    yield target
    target.stop()


class Wire:
    """Every request the adapter sends, as it went over the wire: what someone on the path, or
    reading a proxy's log, could capture and send again."""

    def __init__(self) -> None:
        self.sent: list[httpx.Request] = []

    def client(self, timeout: float = 5.0) -> httpx.Client:
        return httpx.Client(timeout=timeout, event_hooks={"request": [self.sent.append]})

    def last(self, operation: str) -> httpx.Request:
        return [r for r in self.sent if r.url.path.endswith(f"/{operation}")][-1]

    def keys(self, operation: str) -> list[str]:
        return [r.headers[IDEMPOTENCY_HEADER] for r in self.sent if r.url.path.endswith(operation)]

    @staticmethod
    def replay(captured: httpx.Request, url: str) -> httpx.Response:
        headers = {
            k: v
            for k, v in captured.headers.items()
            if k.lower().startswith(("x-", "idem", "content-type"))
        }
        return httpx.post(url, content=captured.content, headers=headers, timeout=5)


@pytest.fixture
def wire() -> Wire:
    return Wire()


def adapter(
    url: str,
    key: bytes = KEY,
    timeout: float = 5.0,
    clock: ManualClock | None = None,
    wire: Wire | None = None,
) -> WebhookAdapter:
    settings = WebhookSettings(url=url, timeout_seconds=timeout)  # type: ignore[arg-type]
    client = wire.client(timeout) if wire else None
    # The receiver's clock by default: both read the night shift's 03:00, never the wall clock.
    return WebhookAdapter(settings, key, client, clock=clock or ManualClock(NIGHT_SHIFT))


class TestWebhook:
    def test_grant_check_revoke_and_members(self, epr: WebhookTarget) -> None:
        hook = adapter(epr.url)
        assert hook.grant("amira", "ORDERSET_ADMIN", UNTIL).already_present is False
        assert hook.grant("amira", "ORDERSET_ADMIN", UNTIL).already_present is True
        assert hook.check("amira", "ORDERSET_ADMIN") is True
        assert hook.list_members("ORDERSET_ADMIN") == {"amira"}
        epr.sessions["amira"] = 2
        revoked = hook.revoke("amira", "ORDERSET_ADMIN")
        assert (revoked.already_absent, revoked.sessions_ended) == (False, 2)
        assert hook.revoke("amira", "ORDERSET_ADMIN").already_absent is True
        assert hook.check("amira", "ORDERSET_ADMIN") is False

    def test_a_wrong_key_is_refused_by_the_receiver(self, epr: WebhookTarget) -> None:
        with pytest.raises(PermanentAdapterError, match="401"):
            adapter(epr.url, key=b"not-the-key").grant("amira", "X", UNTIL)
        assert epr.refused == 1
        assert not epr.members["X"]

    def test_server_errors_and_throttling_are_transient(self, epr: WebhookTarget) -> None:
        for status in (429, 503):
            epr.fail_with = status
            with pytest.raises(TransientAdapterError, match=str(status)):
                adapter(epr.url).check("amira", "X")

    def test_a_target_that_is_down_or_slow_is_transient(self, epr: WebhookTarget) -> None:
        epr.delay_seconds = 0.5
        with pytest.raises(TransientAdapterError, match="no answer in time"):
            adapter(epr.url, timeout=0.1).check("amira", "X")
        url = epr.url
        epr.stop()
        with pytest.raises(TransientAdapterError, match="cannot reach"):
            adapter(url).check("amira", "X")

    def test_signatures_cover_method_path_time_nonce_key_and_body(self, clock: ManualClock) -> None:
        now = clock.now().timestamp()
        sent = Envelope(
            "POST", "/wardkey/check", str(int(now)), "n1", "k1", b'{"operation":"check"}'
        )
        good = sign(KEY, sent)
        assert verify(KEY, sent, good, now)
        for changed in (
            sent._replace(path="/wardkey/grant"),
            sent._replace(method="PUT"),
            sent._replace(body=sent.body + b" "),
            sent._replace(nonce="n2"),
            sent._replace(idempotency_key="k2"),
            sent._replace(timestamp=str(int(now) + 1)),
        ):
            assert not verify(KEY, changed, good, now), changed
        assert not verify(b"other", sent, good, now)
        assert not verify(KEY, sent, good, now + 301), "five minutes is the window"
        assert not verify(KEY, sent._replace(timestamp="soon"), good, now)

    def test_the_string_to_sign_is_the_one_docs_webhook_md_gives_vendors(self) -> None:
        docs = (HERE.parent / "docs" / "webhook.md").read_text()
        snippet = docs.split("```python\n", 1)[1].split("```", 1)[0]
        sent = Envelope(
            "POST", "/wardkey/grant", "1796007600", "n-7", "k-7", b'{"operation":"grant"}'
        )
        found: dict[str, object] = {"hmac": hmac, "hashlib": hashlib, "key": KEY, **sent._asdict()}
        exec(snippet, found)  # the vendor's code, as the page gives it
        assert found["expected"] == sign(KEY, sent)


class TestCapturedRequests:
    """Someone captured signed requests (a proxy's log, a misconfigured TLS inspector) and sends
    them again: nothing they send may change access."""

    def test_a_captured_check_posted_to_grant_grants_nothing(
        self, epr: WebhookTarget, clock: ManualClock, wire: Wire
    ) -> None:
        assert adapter(epr.url, clock=clock, wire=wire).check("mallory", "ORDERSET_ADMIN") is False
        captured = wire.last("check")
        answer = Wire.replay(captured, f"{epr.url}/grant")
        assert answer.status_code in (400, 401)
        assert "mallory" not in epr.members["ORDERSET_ADMIN"]

    def test_a_captured_grant_replayed_after_the_revoke_grants_nothing(
        self, epr: WebhookTarget, clock: ManualClock, wire: Wire
    ) -> None:
        hook = adapter(epr.url, clock=clock, wire=wire)
        hook.grant("amira", "ORDERSET_ADMIN", UNTIL)
        captured = wire.last("grant")
        clock.advance(timedelta(minutes=2))  # the access ends early, inside the signing window
        hook.revoke("amira", "ORDERSET_ADMIN")
        answer = Wire.replay(captured, str(captured.url))
        assert answer.status_code == 401
        assert "replay" in answer.text
        assert "amira" not in epr.members["ORDERSET_ADMIN"]

    def test_a_captured_grant_sent_after_the_window_is_stale(
        self, epr: WebhookTarget, clock: ManualClock, wire: Wire
    ) -> None:
        hook = adapter(epr.url, clock=clock, wire=wire)
        hook.grant("amira", "ORDERSET_ADMIN", UNTIL)
        hook.revoke("amira", "ORDERSET_ADMIN")
        clock.advance(timedelta(minutes=5, seconds=1))
        assert Wire.replay(wire.last("grant"), str(wire.last("grant").url)).status_code == 401
        assert "amira" not in epr.members["ORDERSET_ADMIN"]

    def test_a_signed_body_whose_operation_is_not_the_path_is_refused(
        self, epr: WebhookTarget, clock: ManualClock
    ) -> None:
        """The receiver's own check, for a sender that signed the wrong path by mistake."""
        body = json.dumps({"operation": "check", "account": "amira", "entitlement": "X"}).encode()
        path = httpx.URL(epr.url).path + "/grant"
        sent = Envelope("POST", path, str(int(clock.now().timestamp())), "n-1", "k-1", body)
        answer = httpx.post(f"{epr.url}/grant", content=body, headers=sent.headers(sign(KEY, sent)))
        assert answer.status_code == 400
        assert not epr.members["X"]


class TestBodiesAStrangerSends:
    """Anyone who can reach the receiver can send it a body; it must cost little to refuse."""

    @staticmethod
    def raw_post(epr: WebhookTarget, length: str, body: bytes) -> bytes:
        """POST with this Content-Length as written, the body, then end the sending side; the
        whole answer."""
        url = httpx.URL(epr.url)
        with socket.create_connection((url.host, url.port or 80)) as conn:
            head = f"POST {url.path}/grant HTTP/1.1\r\nHost: {url.host}\r\n"
            conn.sendall(f"{head}Content-Length: {length}\r\n\r\n".encode() + body)
            conn.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
        return answer

    @pytest.mark.parametrize("length", ["-1", "+5", "abc", "1e3"])
    def test_a_length_that_is_not_a_count_of_bytes_is_refused_unread(
        self, epr: WebhookTarget, length: str
    ) -> None:
        # "-1" read to the end of the connection: 200 MiB sent that way took 200 MB.
        answer = self.raw_post(epr, length, b'{"operation":"grant"}')
        assert answer.startswith(b"HTTP/1.0 400 ") or answer.startswith(b"HTTP/1.1 400 ")
        assert b"bad Content-Length" in answer
        assert epr.refused == 0  # never got as far as reading and checking the body

    def test_a_body_over_the_limit_is_refused_from_its_length(self, epr: WebhookTarget) -> None:
        answer = self.raw_post(epr, str(10 * 1024 * 1024), b"x" * 10)
        assert b" 413 " in answer.split(b"\r\n", 1)[0]
        assert epr.refused == 0


class TestIdempotency:
    def test_retries_of_one_grant_carry_one_key_and_a_new_grant_a_new_one(
        self, epr: WebhookTarget, clock: ManualClock, wire: Wire
    ) -> None:
        hook = adapter(epr.url, clock=clock, wire=wire)
        epr.fail_with = 503  # the console is restarting
        with pytest.raises(TransientAdapterError):
            hook.grant("amira", "ORDERSET_ADMIN", UNTIL)
        epr.fail_with = None
        clock.advance(timedelta(seconds=4))  # the service's back-off, then the same grant again
        hook.grant("amira", "ORDERSET_ADMIN", UNTIL)
        first, retry = wire.keys("grant")
        assert first == retry
        assert len({r.headers["X-WardKey-Nonce"] for r in wire.sent}) == len(wire.sent)

        hook.revoke("amira", "ORDERSET_ADMIN")
        hook.grant("amira", "ORDERSET_ADMIN", UNTIL)  # a new request, same access and end time
        assert wire.keys("grant")[-1] != first
        assert hook.check("amira", "ORDERSET_ADMIN") is True

    def test_a_read_after_one_that_failed_gets_a_fresh_answer(
        self, epr: WebhookTarget, clock: ManualClock, wire: Wire
    ) -> None:
        """A check and a member list WardKey gave up waiting for (the console answered them
        late and kept the answers), then access changes by hand: the next reads must see the
        change, not be served the answers the console kept for the first ones."""
        hook = adapter(epr.url, timeout=0.3, clock=clock, wire=wire)
        hook.grant("amira", "ORDERSET_ADMIN", UNTIL)
        epr.delay_seconds = 0.6
        for late_read in (
            lambda: hook.check("amira", "ORDERSET_ADMIN"),
            lambda: hook.list_members("ORDERSET_ADMIN"),
        ):
            with pytest.raises(TransientAdapterError):
                late_read()
        epr.delay_seconds = 0.0
        time.sleep(0.8)  # the console finishes both reads after WardKey stopped waiting
        epr.members["ORDERSET_ADMIN"].discard("amira")
        epr.members["ORDERSET_ADMIN"].add("mallory")
        assert hook.check("amira", "ORDERSET_ADMIN") is False
        assert hook.list_members("ORDERSET_ADMIN") == {"mallory"}
        checks = wire.keys("check")
        assert len(set(checks)) == len(checks)

    def test_a_retry_the_console_already_did_gets_the_first_answer_again(
        self, epr: WebhookTarget, clock: ManualClock
    ) -> None:
        """The console granted, but its answer was lost; the retry must not look like a second,
        different grant (already present), nor be done twice."""
        body = json.dumps(
            {
                "operation": "grant",
                "account": "amira",
                "entitlement": "X",
                "until": "2026-11-30T03:30:00Z",
            }
        ).encode()
        path = httpx.URL(epr.url).path + "/grant"
        answers = []
        for nonce in ("attempt-1", "attempt-2"):
            sent = Envelope(
                "POST", path, str(int(clock.now().timestamp())), nonce, "grant-42", body
            )
            response = httpx.post(
                f"{epr.url}/grant", content=body, headers=sent.headers(sign(KEY, sent))
            )
            answers.append((response.status_code, response.json()))
        assert answers[0] == answers[1] == (200, {"already_present": False})
        assert epr.log == ["EPR admin console: gave amira X"]

        other = body.replace(b"amira", b"mallory")
        sent = Envelope(
            "POST", path, str(int(clock.now().timestamp())), "attempt-3", "grant-42", other
        )
        reused = httpx.post(
            f"{epr.url}/grant", content=other, headers=sent.headers(sign(KEY, sent))
        )
        assert reused.status_code == 422
        assert "mallory" not in epr.members["X"]


class TestRegistry:
    def test_every_target_gets_the_adapter_of_its_kind(self) -> None:
        data = ward()
        data["targets"]["epr"] = {
            "kind": "webhook",
            "settings": {"url": "https://epr.example.nhs.uk/wardkey"},
            "secrets": {"signing_key": "EPR_KEY"},
            "roles": {
                "admin": {"path": "clinical", "entitlement": "A", "eligible": ["clinical-systems"]}
            },
        }
        import yaml

        policy = parse_policy(yaml.safe_dump(data))
        secrets = {"PHARMACY_DB_PASSWORD": "p", "DIRECTORY_PASSWORD": "d"}
        adapters = build_adapters(policy, {**secrets, "EPR_KEY": "k"})
        assert {name: type(a).__name__ for name, a in adapters.items()} == {
            "pharmacy-db": "PostgresAdapter",
            "directory": "LdapAdapter",
            "epr": "WebhookAdapter",
        }
        with pytest.raises(AdapterConfigError, match="set the environment variable EPR_KEY"):
            build_adapters(policy, secrets)

    def test_bad_webhook_settings_fail_policy_check(self) -> None:
        from tests.policy.test_policy import problems

        data = ward()
        data["targets"]["epr"] = {
            "kind": "webhook",
            "settings": {"url": "not a url", "colour": "red"},
            "roles": {
                "admin": {"path": "clinical", "entitlement": "A", "eligible": ["clinical-systems"]}
            },
        }
        found = problems(data)
        assert any(p.startswith("targets.epr.settings.url:") for p in found)
        assert any(p.startswith("targets.epr.settings.colour:") for p in found)
