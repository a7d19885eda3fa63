"""The publish fast lane: a plain `POST /v1/publish` answered without aiohttp's request cycle.

A single-event publish spends most of its hub CPU in aiohttp's per-request machinery
(request and response objects, router, handler task), not in the publish itself
(bench/RESULTS.md, "Publish path"). A publisher's keep-alive connection carries nothing but
publishes, so the connection guard (hub/connections.py) offers each request on a new
connection to `FastLane.parse` first. A *plain* request is published here and answered with
the bytes aiohttp's handler would send:

- the request line is exactly `POST /v1/publish HTTP/1.1`;
- one `Content-Length` within --max-body; no `Transfer-Encoding`, `Expect`, `Upgrade` or
  `Origin`, `Connection` at most `keep-alive`, each header line plain visible ASCII;
- `Content-Type` JSON or NDJSON, a body that validates, a valid `Idempotency-Key` if any;
- at most one `Authorization` and one `X-API-Key`: with --auth protected they are checked
  here by the same `Auth.check_publish` call, and refusals answered as the full stack does.

Anything else, including every request with an error, goes to aiohttp with every byte after
it, and the connection stays with aiohttp from then on. So error answers, auth, CORS and
logging have one implementation, and no request's framing is ever decided twice.
`--fast-publish off` sends everything to aiohttp.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Final

from aiohttp.http import SERVER_SOFTWARE

from cachewire.common import wirejson
from cachewire.hub.auth.service import Credentials, bearer_of
from cachewire.hub.errors import Denied, HubError, Overloaded
from cachewire.hub.events import Draft, idempotency_key
from cachewire.hub.http_api import NDJSON, accept, drafts_of, ids_body

if TYPE_CHECKING:
    from cachewire.hub.server import Hub

log = logging.getLogger("cachewire.hub.http")

REQUEST_LINE: Final = b"POST /v1/publish HTTP/1.1\r\n"
SERVER: Final = SERVER_SOFTWARE.encode()  # the Server header aiohttp sends
MAX_HEAD: Final = 8190  # a longer header block goes to aiohttp (its limits, its 431)
# name ":" optional whitespace, value of visible ASCII with inner spaces or tabs
_HEADER = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*((?:[\x21-\x7e][ \t]*)*)")
_REFUSED = frozenset({b"transfer-encoding", b"expect", b"upgrade", b"origin"})
# Headers the lane reads: twice is not plain (aiohttp would read the first one).
_SINGLE = frozenset(
    {
        b"content-length",
        b"content-type",
        b"idempotency-key",
        b"authorization",
        b"x-api-key",
        b"traceparent",
        b"tracestate",
        b"connection",
    }
)
_BODY_TYPES = {b"application/json": False, NDJSON.encode(): True}  # → is NDJSON


class Defer:
    """`parse`'s answer for a request aiohttp must handle (with every byte after it)."""


DEFER: Final = Defer()


@dataclass(frozen=True, slots=True)
class Plain:
    """A plain publish request, checked: what to store and how many bytes it took."""

    drafts: list[Draft]
    key: str
    size: int
    credentials: Credentials


class FastLane:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.settings = hub.settings
        self._date = b""
        self._second = -1
        self.answered = 0  # requests answered here (cachewire_hub_fast_publishes_total)
        self.deferred = 0  # publish requests handed to aiohttp (with their connection)

    def parse(self, buf: bytearray) -> Plain | Defer | None:
        """The request at the start of `buf`: Plain, DEFER, or None (incomplete: read more)."""
        if not buf.startswith(REQUEST_LINE):
            return None if REQUEST_LINE.startswith(buf) else DEFER
        start = len(REQUEST_LINE)
        end = buf.find(b"\r\n\r\n", start - 2)
        if end < 0:
            return None if len(buf) <= MAX_HEAD else DEFER
        if end > MAX_HEAD:
            return DEFER
        headers: dict[bytes, bytes] = {}
        if end > start:
            for line in bytes(buf[start:end]).split(b"\r\n"):
                match = _HEADER.fullmatch(line)
                if match is None:
                    return DEFER
                name = match[1].lower()
                if name in _REFUSED or (name in _SINGLE and name in headers):
                    return DEFER
                headers[name] = match[2].rstrip(b" \t")
        length = headers.get(b"content-length", b"")
        kind = headers.get(b"content-type", b"").partition(b";")[0].strip().lower()
        ndjson = _BODY_TYPES.get(kind)
        if (
            ndjson is None
            or not (length.isdigit() and len(length) <= 12)
            or int(length) > self.settings.max_body
            or headers.get(b"connection", b"keep-alive").lower() != b"keep-alive"
        ):
            return DEFER
        size = end + 4 + int(length)
        if len(buf) < size:
            return None
        try:
            drafts = drafts_of(
                bytes(buf[end + 4 : size]),
                ndjson,
                headers.get(b"traceparent", b"").decode(),
                headers.get(b"tracestate", b"").decode(),
                self.settings,
            )
            key = idempotency_key(headers.get(b"idempotency-key", b"").decode())
        except Exception:  # aiohttp's handler gives the error its answer
            return DEFER
        authorization = headers.get(b"authorization")
        token, malformed = bearer_of(None if authorization is None else authorization.decode())
        api_key = headers.get(b"x-api-key")
        key_text = None if api_key is None else api_key.decode()
        return Plain(drafts, key, size, Credentials(token, key_text, None, malformed))

    async def publish(self, request: Plain, peer: str) -> bytes:
        """Store a plain request's drafts: the whole HTTP response (errors as JSON)."""
        self.answered += 1
        try:
            if self.hub.auth is not None:  # --auth off: no auth work at all
                await self.hub.auth.check_publish(request.credentials, request.drafts)
            ids = await accept(self.hub, request.drafts, request.key)
        except Exception as exc:
            return self._error(exc, peer)
        return self._response(200, "OK", b"application/json", ids_body(ids))

    def _error(self, exc: Exception, peer: str) -> bytes:
        """After validation only auth, the broker or the back-pressure can refuse: the
        answer aiohttp's handler gives (http_api._error), without the request object."""
        extra = b""
        if isinstance(exc, Denied) and self.hub.auth is not None:
            self.hub.auth.note(exc, "http", peer)
            extra = b"WWW-Authenticate: %s\r\n" % exc.challenge.encode()
        if isinstance(exc, HubError):
            status, message = exc.http_status, str(exc)
            log.info(
                "request rejected",
                extra={
                    "method": "POST",
                    "path": "/v1/publish",
                    "status": status,
                    "error": message,
                    "peer": peer,
                },
            )
        else:
            status, message = 500, "internal error"
            log.exception("unhandled error", extra={"path": "/v1/publish"}, exc_info=exc)
        if isinstance(exc, Overloaded):
            extra = b"Retry-After: %d\r\n" % exc.retry_after
        body = wirejson.dumpb({"error": message, "status": status})
        phrase = HTTPStatus(status).phrase
        return self._response(status, phrase, b"application/json; charset=utf-8", body, extra)

    def _response(
        self, status: int, phrase: str, kind: bytes, body: bytes, extra: bytes = b""
    ) -> bytes:
        now = int(time.time())
        if now != self._second:  # the Date header changes once a second
            self._second = now
            self._date = formatdate(now, usegmt=True).encode()
        head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n" % (
            status,
            phrase.encode(),
            kind,
            len(body),
        )
        return b"%s%sDate: %s\r\nServer: %s\r\n\r\n%s" % (head, extra, self._date, SERVER, body)
