"""Take credentials out of text before it is logged, audited or shown in Slack.

Policy check refuses a password in a target's URL, but a driver's error can still echo a
connection string; whatever text leaves an adapter goes through `redact` first.
"""

from __future__ import annotations

import re

# scheme://user:password@host -> scheme://***@host (up to the last @ before the path).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#]*@")
# password=…, ?token=…, &client_secret=… in connection strings and query strings: a name that
# ends in one of these words (so `design=` is left alone).
_SECRET_PAIR = re.compile(
    r"(?P<name>\b[\w.-]*(?:password|passwd|pwd|secret|token|api_?key|signature|sig))"
    r"(?P<eq>\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'|\"[^\"]*\"|[^\s&;,'\")]+)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """`text` with URL user names and passwords, and `name=secret` pairs, replaced by ***."""
    text = _USERINFO.sub(r"\g<scheme>***@", text)
    return _SECRET_PAIR.sub(r"\g<name>\g<eq>***", text)
