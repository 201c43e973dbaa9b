"""The webhook adapter against a real receiver on loopback that checks every signature."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from app.adapters import PermanentAdapterError, TransientAdapterError
from app.adapters.registry import AdapterConfigError, build_adapters
from app.adapters.webhook import WebhookAdapter, WebhookSettings, sign, verify
from app.devtools.webhook_target import WebhookTarget
from app.policy import parse_policy
from tests.test_policy import ward

KEY = b"shared-webhook-key-for-tests"
UNTIL = datetime(2026, 11, 30, 3, 30, tzinfo=UTC)


@pytest.fixture
def epr() -> Iterator[WebhookTarget]:
    target = WebhookTarget(KEY, "EPR admin console").start()
    yield target
    target.stop()


def adapter(url: str, key: bytes = KEY, timeout: float = 5.0) -> WebhookAdapter:
    return WebhookAdapter(WebhookSettings(url=url, timeout_seconds=timeout), key)  # type: ignore[arg-type]


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

    def test_signatures_are_fresh_and_exact(self) -> None:
        now = str(int(time.time()))
        body = b'{"operation":"check"}'
        good = sign(KEY, now, body)
        assert verify(KEY, now, body, good)
        assert not verify(KEY, now, body + b" ", good)
        assert not verify(b"other", now, body, good)
        stale = str(int(time.time()) - 301)
        assert not verify(KEY, stale, body, sign(KEY, stale, body))


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
        from tests.test_policy import problems

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
