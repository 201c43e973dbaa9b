"""A real OpenLDAP server for the LDAP adapter's tests: Debian's slapd (installed by .ci/run),
started on a free loopback port with a throw-away database and a seeded tree.

WardKey binds as cn=wardkey,ou=services, which may write only the `member` attribute of entries
under ou=groups: the least privilege README.md asks for.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ldap3 import Connection, Server

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
modulepath /usr/lib/ldap
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


@dataclass
class Slapd:
    url: str
    process: subprocess.Popen[bytes]

    def admin(self) -> Connection:
        return Connection(Server(self.url), ROOT_DN, ROOT_PASSWORD, auto_bind=True)


def available() -> bool:
    return Path(SLAPD).exists() and Path("/usr/lib/ldap").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running(work: Path) -> Iterator[Slapd]:
    (work / "data").mkdir(parents=True)
    config = work / "slapd.conf"
    config.write_text(
        CONFIG.format(
            work=work,
            suffix=SUFFIX,
            root_dn=ROOT_DN,
            root_password=ROOT_PASSWORD,
            wardkey_dn=WARDKEY_DN,
        )
    )
    url = f"ldap://127.0.0.1:{_free_port()}"
    # -d 0 keeps slapd in the foreground (no fork), so the test owns the process.
    process = subprocess.Popen(
        [SLAPD, "-f", str(config), "-h", f"{url}/", "-d", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                Connection(Server(url, connect_timeout=1), ROOT_DN, ROOT_PASSWORD, auto_bind=True)
                break
            except Exception:
                if process.poll() is not None:
                    err = process.stderr.read().decode() if process.stderr else ""
                    raise RuntimeError(f"slapd exited: {err[-2000:]}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError("slapd did not start in 20 s") from None
                time.sleep(0.1)
        server = Slapd(url, process)
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
