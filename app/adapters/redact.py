"""Take credentials out of text before it is logged, audited or shown in Slack.

Policy check refuses a password in a target's URL, but a driver's error can still echo a
connection string; whatever text leaves an adapter goes through `redact` first.
"""

from __future__ import annotations

import re

# scheme://user:password@host -> scheme://***@host (up to the last @ before the path).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#]*@")
# password=…, ?token=…, &client_secret=…, key=… in connection strings and query strings: a
# name that ends in one of these words (so `design=` is left alone).
_SECRET_NAME = r"(?:[\w.-]*(?:password|passwd|pwd|secret|token|api_?key|signature|sig)|key)"
_VALUE = r"(?P<value>'(?:[^'\\]|\\.)*'|\"[^\"]*\"|[^\s&;,'\")}]+)"
_SECRET_PAIR = re.compile(rf"(?P<name>\b{_SECRET_NAME})(?P<eq>\s*=\s*){_VALUE}", re.IGNORECASE)
# JSON's "client_secret": "…", and `password: …` as a driver may echo its settings (not
# `token: cannot reach …`, which is how an adapter names the step that failed).
_SECRET_FIELD = re.compile(
    rf"(?P<name>\"{_SECRET_NAME}\"|\b[\w.-]*(?:password|passwd|pwd|secret))(?P<eq>\s*:\s*){_VALUE}",
    re.IGNORECASE,
)
# Authorization: Bearer …, Basic … (a header echoed in an error).
_AUTHORIZATION = re.compile(r"(?P<scheme>\b(?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=-]+", re.I)


def redact(text: str) -> str:
    """`text` with URL user names and passwords, and `name=secret` pairs, replaced by ***."""
    text = _USERINFO.sub(r"\g<scheme>***@", text)
    text = _AUTHORIZATION.sub(r"\g<scheme>***", text)
    text = _SECRET_FIELD.sub(r"\g<name>\g<eq>***", text)
    return _SECRET_PAIR.sub(r"\g<name>\g<eq>***", text)
