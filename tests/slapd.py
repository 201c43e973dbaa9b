"""A real OpenLDAP server for the LDAP adapter's tests: Debian's slapd (installed by .ci/run),
started on a free loopback port with a throw-away database and a seeded tree.

WardKey binds as cn=wardkey,ou=services, which may write only the `member` attribute of entries
under ou=groups: the least privilege docs/targets.md asks for. Given a certificate, it also listens
for LDAPS and offers StartTLS on its plain port.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ldap3 import Connection, Server, Tls

SLAPD = shutil.which("slapd") or "/usr/sbin/slapd"
SUFFIX = "dc=ward,dc=test"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PASSWORD = "root-secret"
WARDKEY_DN = f"cn=wardkey,ou=services,{SUFFIX}"
WARDKEY_PASSWORD = "wardkey-secret"
PLACEHOLDER = f"cn=placeholder,{SUFFIX}"

CONFIG = """
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
{extra_schemas}modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {work}/slapd.pid
database mdb
maxsize 10485760
suffix "{suffix}"
rootdn "{root_dn}"
rootpw {root_password}
directory {work}/data
access to dn.subtree="ou=groups,{suffix}" attrs=member
    by dn.exact="{wardkey_dn}" write
    by * read
access to attrs=userPassword
    by anonymous auth
    by * none
access to * by * read
"""


# Loaded after the database it applies to (slapd.conf reads overlays in order).
MEMBEROF = """
moduleload memberof
overlay memberof
"""


# With TLS, a simple bind without it is refused ("confidentiality required"), as a trust's
# directory should be set up: so a test that binds proves the channel was encrypted.
TLS_CONFIG = """
TLSCACertificateFile {ca}
TLSCertificateFile {cert}
TLSCertificateKeyFile {key}
security simple_bind=128
"""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the server's certificate and key, and the CA that issued it."""

    cert: Path
    key: Path
    ca: Path


@dataclass
class Slapd:
    url: str
    process: subprocess.Popen[bytes]
    ldaps_url: str | None = None

    def admin(self) -> Connection:
        return Connection(_server(self.url, self.ldaps_url), ROOT_DN, ROOT_PASSWORD, auto_bind=True)


def _server(url: str, ldaps_url: str | None, timeout: int | None = None) -> Server:
    if ldaps_url is None:
        return Server(url, connect_timeout=timeout)
    return Server(ldaps_url, tls=Tls(validate=ssl.CERT_NONE), connect_timeout=timeout)


def available() -> bool:
    return Path(SLAPD).exists() and Path("/usr/lib/ldap").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running(
    work: Path,
    tls: TlsFiles | None = None,
    schemas: tuple[Path, ...] = (),
    memberof: bool = False,
) -> Iterator[Slapd]:
    """`schemas`: more schema files to include (tests/data/directory-accounts.schema gives
    people Active Directory's userAccountControl and 389 DS's nsAccountLock). `memberof`: the
    memberof overlay, which keeps each member's memberOf in step with groupOfNames' member."""
    (work / "data").mkdir(parents=True)
    config = work / "slapd.conf"
    tls_config = TLS_CONFIG.format(ca=tls.ca, cert=tls.cert, key=tls.key) if tls else ""
    config.write_text(
        tls_config
        + CONFIG.format(
            work=work,
            suffix=SUFFIX,
            root_dn=ROOT_DN,
            root_password=ROOT_PASSWORD,
            wardkey_dn=WARDKEY_DN,
            extra_schemas="".join(f"include {schema}\n" for schema in schemas),
        )
        + (MEMBEROF if memberof else "")
    )
    url = f"ldap://127.0.0.1:{_free_port()}"
    ldaps_url = f"ldaps://127.0.0.1:{_free_port()}" if tls else None
    listen = f"{url}/ {ldaps_url}/" if ldaps_url else f"{url}/"
    # -d 0 keeps slapd in the foreground (no fork), so the test owns the process.
    process = subprocess.Popen(
        [SLAPD, "-f", str(config), "-h", listen, "-d", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                probe = _server(url, ldaps_url, timeout=1)
                Connection(probe, ROOT_DN, ROOT_PASSWORD, auto_bind=True)
                break
            except Exception:
                if process.poll() is not None:
                    err = process.stderr.read().decode() if process.stderr else ""
                    raise RuntimeError(f"slapd exited: {err[-2000:]}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError("slapd did not start in 20 s") from None
                time.sleep(0.1)
        server = Slapd(url, process, ldaps_url)
        _seed(server.admin())
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)


def person_dn(uid: str) -> str:
    from ldap3.utils.dn import escape_rdn

    return f"uid={escape_rdn(uid)},ou=people,{SUFFIX}"


def group_dn(name: str) -> str:
    return f"cn={name},ou=groups,{SUFFIX}"


def _seed(conn: Connection) -> None:
    def add(dn: str, classes: list[str], **attributes: object) -> None:
        if not conn.add(dn, classes, attributes):
            raise RuntimeError(f"seeding {dn}: {conn.result}")

    add(SUFFIX, ["dcObject", "organization"], o="Test Valley Hospitals", dc="ward")
    add(PLACEHOLDER, ["organizationalRole"], cn="placeholder")
    for unit in ("people", "groups", "services"):
        add(f"ou={unit},{SUFFIX}", ["organizationalUnit"], ou=unit)
    add(
        WARDKEY_DN,
        ["organizationalRole", "simpleSecurityObject"],
        cn="wardkey",
        userPassword=WARDKEY_PASSWORD,
    )
    for uid, name in [
        ("amira", "Amira Khan"),
        ("ben", "Ben Hughes"),
        ("o'brien, jr", "Pat O'Brien Jr"),
        ("lone", "Lone Member"),
    ]:
        add(person_dn(uid), ["inetOrgPerson"], uid=uid, cn=name, sn=name.split()[-1])
    add(group_dn("helpdesk"), ["groupOfNames"], cn="helpdesk", member=[PLACEHOLDER])
    add(group_dn("ward-admins"), ["groupOfNames"], cn="ward-admins", member=[PLACEHOLDER])
    add(group_dn("solo"), ["groupOfNames"], cn="solo", member=[person_dn("lone")])
