"""The Entra ID adapter against a local HTTP stand-in for Microsoft Graph (tests/fakes/graph.py):
Graph cannot run here, so it is faked over real HTTP, never by patching the adapter."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app.adapters.base import PermanentAdapterError, TransientAdapterError
from app.adapters.entra import EntraAdapter, EntraSettings
from app.store.models import RequestState as S
from tests.fakes.graph import FakeGraph
from tests.small_trust import AMIRA, BEN, one_target_service, role

TENANT, CLIENT, SECRET = str(uuid.uuid4()), str(uuid.uuid4()), "client-secret"
UNTIL = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    fake = FakeGraph(TENANT, CLIENT, SECRET).start()
    for upn in ("amira@ward.nhs.uk", "ben@ward.nhs.uk", "chloe@ward.nhs.uk"):
        fake.add_user(upn)
    yield fake
    fake.stop()


def make(graph: FakeGraph, secret: str = SECRET, **changes: object) -> tuple[EntraAdapter, list]:
    waits: list[float] = []
    settings = EntraSettings.model_validate(
        {
            "tenant_id": TENANT,
            "client_id": CLIENT,
            "authority": graph.authority,
            "graph_url": graph.graph_url,
            "timeout_seconds": 3,
            **changes,
        }
    )
    return EntraAdapter(settings, secret, sleep=waits.append), waits


class TestMembership:
    def test_grant_check_list_revoke(self, graph: FakeGraph) -> None:
        adapter, _ = make(graph)
        group = graph.add_group()
        assert not adapter.check("amira@ward.nhs.uk", group)
        for upn in ("amira@ward.nhs.uk", "ben@ward.nhs.uk", "chloe@ward.nhs.uk"):
            assert not adapter.grant(upn, group, UNTIL).already_present
        assert adapter.check("amira@ward.nhs.uk", group)
        # Three members, two per page: the adapter follows @odata.nextLink.
        assert adapter.list_members(group) == {
            "amira@ward.nhs.uk",
            "ben@ward.nhs.uk",
            "chloe@ward.nhs.uk",
        }
        assert not adapter.revoke("amira@ward.nhs.uk", group).already_absent
        assert not adapter.check("amira@ward.nhs.uk", group)
        assert graph.token_requests == 1  # one token, cached for every call

    def test_already_a_member_and_already_gone_are_success(self, graph: FakeGraph) -> None:
        adapter, _ = make(graph)
        group = graph.add_group()
        adapter.grant("ben@ward.nhs.uk", group, UNTIL)
        assert adapter.grant("ben@ward.nhs.uk", group, UNTIL).already_present
        adapter.revoke("ben@ward.nhs.uk", group)
        assert adapter.revoke("ben@ward.nhs.uk", group).already_absent

    def test_an_expired_token_is_renewed_once(self, graph: FakeGraph) -> None:
        adapter, _ = make(graph)
        group = graph.add_group()
        adapter.grant("amira@ward.nhs.uk", group, UNTIL)
        graph.tokens.clear()  # Graph no longer accepts the cached token
        assert adapter.check("amira@ward.nhs.uk", group)
        assert graph.token_requests == 2

    def test_signing_out_everywhere_is_opt_in(self, graph: FakeGraph) -> None:
        quiet, _ = make(graph)
        assert quiet.end_sessions("amira@ward.nhs.uk") == 0
        loud, _ = make(graph, revoke_sign_in_sessions=True)
        assert loud.end_sessions("amira@ward.nhs.uk") == 1
        assert ("POST", f"/v1.0/users/{graph.users['amira@ward.nhs.uk']}/revokeSignInSessions") in (
            graph.requests
        )


class TestThrottling:
    @pytest.mark.parametrize("status", [429, 503])
    def test_retry_after_is_honoured(self, graph: FakeGraph, status: int) -> None:
        adapter, waits = make(graph)
        group = graph.add_group()
        graph.throttle(2, status=status, retry_after=3)
        adapter.grant("amira@ward.nhs.uk", group, UNTIL)
        assert waits == [3.0, 3.0]
        assert adapter.check("amira@ward.nhs.uk", group)

    def test_throttled_past_the_attempts_is_transient(self, graph: FakeGraph) -> None:
        adapter, waits = make(graph, max_attempts=3)
        graph.throttle(5, retry_after=1)
        with pytest.raises(TransientAdapterError, match="throttling"):
            adapter.check("amira@ward.nhs.uk", graph.add_group())
        assert waits == [1.0, 1.0]

    def test_a_retry_after_beyond_the_limit_is_not_waited(self, graph: FakeGraph) -> None:
        adapter, waits = make(graph, max_retry_after_seconds=10)
        graph.throttle(1, retry_after=120)
        with pytest.raises(TransientAdapterError):
            adapter.check("amira@ward.nhs.uk", graph.add_group())
        assert waits == []


class TestRefusals:
    def test_a_wrong_client_secret_is_permanent(self, graph: FakeGraph) -> None:
        adapter, _ = make(graph, secret="wrong")
        with pytest.raises(PermanentAdapterError, match="invalid_client"):
            adapter.check("amira@ward.nhs.uk", graph.add_group())

    def test_unknown_user_and_group(self, graph: FakeGraph) -> None:
        adapter, _ = make(graph)
        with pytest.raises(PermanentAdapterError, match="no user"):
            adapter.grant("nobody@ward.nhs.uk", graph.add_group(), UNTIL)
        with pytest.raises(PermanentAdapterError, match="no group"):
            adapter.grant("amira@ward.nhs.uk", str(uuid.uuid4()), UNTIL)

    @pytest.mark.parametrize("hostile", ["../groups", "amira@ward.nhs.uk?$select=x", "a#b", ""])
    def test_account_names_that_would_change_the_url_are_refused(
        self, graph: FakeGraph, hostile: str
    ) -> None:
        adapter, _ = make(graph)
        with pytest.raises(PermanentAdapterError, match="not a user principal name"):
            adapter.grant(hostile, graph.add_group(), UNTIL)

    def test_an_entitlement_that_is_not_a_group_id_is_refused(self, graph: FakeGraph) -> None:
        adapter, _ = make(graph)
        with pytest.raises(PermanentAdapterError, match="not a group object ID"):
            adapter.grant("amira@ward.nhs.uk", "Domain Admins", UNTIL)

    def test_graph_unreachable_is_transient(self, graph: FakeGraph) -> None:
        adapter = EntraAdapter(
            EntraSettings(
                tenant_id=TENANT, client_id=CLIENT, authority="http://127.0.0.1:1",  # type: ignore[arg-type]
                graph_url="http://127.0.0.1:1/v1.0", timeout_seconds=2,  # type: ignore[arg-type]
            ),
            SECRET,
        )  # fmt: skip
        with pytest.raises(TransientAdapterError, match="cannot reach"):
            adapter.check("amira@ward.nhs.uk", graph.add_group())


def test_a_revoke_throttled_past_all_attempts_fails_then_the_retry_ends_it(
    graph: FakeGraph, tmp_path: Path, sqlite_template: Path
) -> None:
    group = graph.add_group()
    adapter, _ = make(graph, max_attempts=2)
    target = {
        "kind": "entra",
        "settings": {"tenant_id": TENANT, "client_id": CLIENT},
        "secrets": {"client_secret": "ENTRA_SECRET"},
        "roles": {"exchange-admin": role("admin", group)},
    }
    service, _, clock = one_target_service(tmp_path, sqlite_template, "m365", target, adapter)
    pauses: list[float] = []
    service.deps.pause = pauses.append
    view = service.request(
        AMIRA, "m365", "exchange-admin", timedelta(minutes=30), "fix shared mailbox"
    )
    assert service.approve(view.id, BEN).state == S.ACTIVE
    assert adapter.check("amira@ward.nhs.uk", group)
    clock.advance(timedelta(minutes=31))
    # Two tries per Graph call (the adapter), three calls (the target's attempts, with
    # back-off between them): six throttled answers exhaust both.
    graph.throttle(6, retry_after=1)
    service.expire_due()
    assert service.get(view.id).state == S.REVOKE_FAILED
    assert len(pauses) == 2
    assert adapter.check("amira@ward.nhs.uk", group)  # honest: still there
    assert service.grants.retry_revoke(view.id).state == S.ENDED
    assert not adapter.check("amira@ward.nhs.uk", group)
    service.db.dispose()
