"""Where credentials travel, per transport: the transports' only auth code besides mapping
`Denied` to their errors.

HTTP: `Authorization: Bearer`, `X-API-Key`; for a browser's EventSource also the cookie
`cachewire_token` and `?ticket=`. gRPC (both services): metadata `authorization: Bearer`
and `x-api-key`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiohttp import web

from cachewire.hub.auth.service import Credentials, bearer_of

COOKIE = "cachewire_token"


def http_credentials(request: web.Request, *, browser: bool = False) -> Credentials:
    token, malformed = bearer_of(request.headers.get("Authorization"))
    api_key = request.headers.get("X-API-Key")
    if not browser:
        return Credentials(token, api_key, None, malformed)
    if token is None and not malformed and api_key is None:
        token = request.cookies.get(COOKIE) or None
    return Credentials(token, api_key, request.query.get("ticket"), malformed)


def grpc_credentials(metadata: Iterable[tuple[str, Any]] | None) -> Credentials:
    token: str | None = None
    api_key: str | None = None
    malformed = False
    for key, value in metadata or ():
        if not isinstance(value, str):
            continue
        if key == "authorization":
            token, malformed = bearer_of(value)
        elif key == "x-api-key":
            api_key = value
    return Credentials(token, api_key, None, malformed)
