"""The LDAP adapter against a real OpenLDAP slapd started for these tests (see tests/slapd.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme
from pydantic import ValidationError

from app.adapters.base import PermanentAdapterError, TransientAdapterError
from app.adapters.ldap import LdapAdapter, LdapSettings, ttl_member_value
from app.store.models import RequestState as S
from tests import slapd
from tests.conftest import IN_CI
from tests.small_trust import AMIRA, BEN, one_target_service, role

UNTIL = datetime(2030, 1, 1, tzinfo=UTC)
HELPDESK = slapd.group_dn("helpdesk")


def need_slapd() -> None:
    if not slapd.available():
        reason = "OpenLDAP's slapd is not installed (.ci/run installs Debian's slapd package)"
        if IN_CI:
            pytest.fail(f"CI must run the LDAP tests: {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[slapd.Slapd]:
    need_slapd()
    with slapd.running(tmp_path_factory.mktemp("slapd")) as server:
        yield server


@pytest.fixture(scope="module")
def trust_ca(tmp_path_factory: pytest.TempPathFactory) -> trustme.CA:
    return trustme.CA(organization_name="Test Valley Hospitals")


@pytest.fixture(scope="module")
def tls_directory(
    tmp_path_factory: pytest.TempPathFactory, trust_ca: trustme.CA
) -> Iterator[slapd.Slapd]:
    """A directory with a certificate from the trust's CA, refusing binds without TLS."""
    need_slapd()
    work = tmp_path_factory.mktemp("slapd-tls")
    issued = trust_ca.issue_cert("127.0.0.1", "localhost")
    files = slapd.TlsFiles(work / "server.pem", work / "server.key", work / "ca.pem")
    issued.cert_chain_pems[0].write_to_path(str(files.cert))
    issued.private_key_pem.write_to_path(str(files.key))
    trust_ca.cert_pem.write_to_path(str(files.ca))
    with slapd.running(work / "server", files) as server:
        yield server


def settings(url: str, **changes: object) -> LdapSettings:
    values: dict[str, object] = {
        "url": url,
        "bind_dn": slapd.WARDKEY_DN,
        "user_base": f"ou=people,{slapd.SUFFIX}",
        "verify_tls": False,
        "timeout_seconds": 3,
    }
    return LdapSettings.model_validate({**values, **changes})


@pytest.fixture
def adapter(directory: slapd.Slapd) -> Iterator[LdapAdapter]:
    yield LdapAdapter(settings(directory.url), slapd.WARDKEY_PASSWORD)
    admin = directory.admin()  # put the groups back as they were seeded
    for group in ("helpdesk", "ward-admins"):
        admin.modify(slapd.group_dn(group), {"member": [("MODIFY_REPLACE", [slapd.PLACEHOLDER])]})


class TestMembership:
    def test_grant_check_list_and_revoke(self, adapter: LdapAdapter) -> None:
        assert not adapter.check("amira", HELPDESK)
        assert not adapter.grant("amira", HELPDESK, UNTIL).already_present
        assert adapter.check("amira", HELPDESK)
        assert adapter.list_members(HELPDESK) == {"amira"}  # the placeholder has no uid
        assert not adapter.revoke("amira", HELPDESK).already_absent
        assert not adapter.check("amira", HELPDESK)
        assert adapter.end_sessions("amira") == 0

    def test_twice_is_success(self, adapter: LdapAdapter) -> None:
        adapter.grant("ben", HELPDESK, UNTIL)
        assert adapter.grant("ben", HELPDESK, UNTIL).already_present
        adapter.revoke("ben", HELPDESK)
        assert adapter.revoke("ben", HELPDESK).already_absent

    def test_a_dn_with_commas_and_quotes(self, adapter: LdapAdapter) -> None:
        adapter.grant("o'brien, jr", HELPDESK, UNTIL)
        assert adapter.check("o'brien, jr", HELPDESK)
        assert "o'brien, jr" in adapter.list_members(HELPDESK)
        adapter.revoke("o'brien, jr", HELPDESK)
        assert not adapter.check("o'brien, jr", HELPDESK)

    def test_the_last_member_cannot_be_removed_and_says_why(self, adapter: LdapAdapter) -> None:
        with pytest.raises(PermanentAdapterError, match="placeholder member"):
            adapter.revoke("lone", slapd.group_dn("solo"))


class TestRefusals:
    @pytest.mark.parametrize("hostile", ["*", "amira)(uid=*", "*)(|(uid=*", "ben\\2a", "\x00"])
    def test_filter_metacharacters_match_nobody(self, adapter: LdapAdapter, hostile: str) -> None:
        with pytest.raises(PermanentAdapterError):
            adapter.grant(hostile, HELPDESK, UNTIL)
        assert adapter.list_members(HELPDESK) == set()

    def test_an_unknown_group_is_permanent(self, adapter: LdapAdapter) -> None:
        with pytest.raises(PermanentAdapterError, match="no group"):
            adapter.check("amira", slapd.group_dn("no-such-group"))

    def test_only_the_groups_are_writable_by_wardkey(
        self, directory: slapd.Slapd, adapter: LdapAdapter
    ) -> None:
        outside = f"cn=placeholder,{slapd.SUFFIX}"  # not a group under ou=groups
        with pytest.raises(PermanentAdapterError):
            adapter.grant("amira", outside, UNTIL)

    def test_a_wrong_password_is_permanent(self, directory: slapd.Slapd) -> None:
        wrong = LdapAdapter(settings(directory.url), "not-the-password")
        with pytest.raises(PermanentAdapterError, match="invalidCredentials"):
            wrong.check("amira", HELPDESK)

    def test_a_directory_that_is_down_is_transient(self) -> None:
        down = LdapAdapter(settings("ldap://127.0.0.1:1"), slapd.WARDKEY_PASSWORD)
        with pytest.raises(TransientAdapterError, match="cannot reach"):
            down.check("amira", HELPDESK)


class TestTls:
    @pytest.fixture
    def ca_file(self, tls_directory: slapd.Slapd, tmp_path: Path, trust_ca: trustme.CA) -> str:
        path = tmp_path / "trust-ca.pem"
        trust_ca.cert_pem.write_to_path(str(path))
        return str(path)

    def tls_adapter(self, url: str, ca_file: str, **changes: object) -> LdapAdapter:
        config = settings(url, verify_tls=True, ca_file=ca_file, **changes)
        return LdapAdapter(config, slapd.WARDKEY_PASSWORD)

    def test_ldaps_with_the_trusts_ca(self, tls_directory: slapd.Slapd, ca_file: str) -> None:
        assert tls_directory.ldaps_url
        adapter = self.tls_adapter(tls_directory.ldaps_url, ca_file)
        assert adapter.grant("amira", HELPDESK, UNTIL).already_present is False
        assert adapter.check("amira", HELPDESK)
        assert adapter.revoke("amira", HELPDESK).already_absent is False
        assert not adapter.check("amira", HELPDESK)

    def test_start_tls_on_the_plain_port(self, tls_directory: slapd.Slapd, ca_file: str) -> None:
        adapter = self.tls_adapter(tls_directory.url, ca_file, start_tls=True)
        assert adapter.check("amira", HELPDESK) is False
        # The same port refuses a bind in the clear: the check above ran encrypted.
        clear = LdapAdapter(settings(tls_directory.url), slapd.WARDKEY_PASSWORD)
        with pytest.raises(PermanentAdapterError, match="confidentiality"):
            clear.check("amira", HELPDESK)

    @pytest.mark.parametrize("start_tls", [False, True], ids=["ldaps", "starttls"])
    def test_a_certificate_from_another_ca_is_refused(
        self, tls_directory: slapd.Slapd, tmp_path: Path, start_tls: bool
    ) -> None:
        other = tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(other))
        url = tls_directory.url if start_tls else tls_directory.ldaps_url
        assert url
        adapter = self.tls_adapter(url, str(other), start_tls=start_tls)
        with pytest.raises(PermanentAdapterError, match="certificate"):
            adapter.check("amira", HELPDESK)


class TestActiveDirectoryTimeToLive:
    def test_value_format(self) -> None:
        now = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)
        dn = "CN=Khan\\, Amira,OU=Staff,DC=trust,DC=nhs,DC=uk"
        assert ttl_member_value(dn, now + timedelta(minutes=30), now) == f"<TTL=1800,{dn}>"
        # Rounded up, never zero (zero would mean "no expiry" to some tools).
        assert ttl_member_value(dn, now + timedelta(seconds=0.2), now) == f"<TTL=1,{dn}>"
        assert ttl_member_value(dn, now - timedelta(seconds=5), now) == f"<TTL=1,{dn}>"

    def test_ttl_needs_active_directory(self) -> None:
        with pytest.raises(ValidationError, match="ttl_membership needs directory"):
            settings("ldaps://dc1.trust.nhs.uk", ttl_membership=True)
        assert settings(
            "ldaps://dc1.trust.nhs.uk", ttl_membership=True, directory="active_directory"
        ).ttl_membership


def test_access_through_the_service_ends_in_the_directory(
    adapter: LdapAdapter, tmp_path: Path, sqlite_template: Path
) -> None:
    target = {
        "kind": "ldap",
        "settings": {
            "url": "ldap://127.0.0.1",
            "bind_dn": slapd.WARDKEY_DN,
            "user_base": f"ou=people,{slapd.SUFFIX}",
        },
        "secrets": {"bind_password": "LDAP_PASSWORD"},
        "account": {"template": "{local}"},
        "roles": {"helpdesk": role("admin", HELPDESK)},
        "insecure": True,  # the test directory on this machine, without TLS
    }
    service, _, clock = one_target_service(tmp_path, sqlite_template, "directory", target, adapter)
    view = service.request(AMIRA, "directory", "helpdesk", timedelta(minutes=30), "reset ward pcs")
    assert service.approve(view.id, BEN).state == S.ACTIVE
    assert adapter.check("amira", HELPDESK)
    clock.advance(timedelta(minutes=31))
    service.expire_due()
    assert service.get(view.id).state == S.ENDED
    assert not adapter.check("amira", HELPDESK)
    service.db.dispose()
