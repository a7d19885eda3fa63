"""Credentials never reach a message or a log line: `redact(text)` masks the password of
every URL in it (`redis://:secret@h` → `redis://:***@h`) and password query parameters."""

from __future__ import annotations

import re

_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:@/\s\"']*):[^@/\s\"']*@")
_QUERY = re.compile(r"(?P<head>[?&](?:password|passwd|pass|pwd|token)=)[^&\s\"']*", re.I)


def redact(text: str) -> str:
    return _QUERY.sub(r"\g<head>***", _USERINFO.sub(r"\g<head>:***@", text))
