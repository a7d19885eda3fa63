"""Connection limits of the HTTP listener: caps on open connections (in all, and per client
address), and a deadline for a new connection's first request header (Slowloris).

`GuardedSite` is aiohttp's `TCPSite` whose protocol factory wraps each connection's
`RequestHandler` in a `Guard`: the guard counts the connection, closes it at once past a
cap, and closes it when no complete request header (`\\r\\n\\r\\n`) has arrived within
`header_timeout`. Requests aiohttp cannot parse get JSON errors (`JsonErrors`). Idle
keep-alive connections between requests are aiohttp's own `keepalive_timeout` (the hub
passes `--idle-timeout`). Each closing logs one line.

With a `FastLane` (hub/fastlane.py), a new connection's requests are offered to it first:
plain publishes are answered there, in order, one at a time (reading pauses while a
backlog waits); from the first request it defers on, every byte goes to aiohttp. An idle
fast-lane connection is closed after `idle_timeout`, as aiohttp closes its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections import Counter
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from cachewire.hub.fastlane import Defer

if TYPE_CHECKING:
    from cachewire.hub.fastlane import FastLane

log = logging.getLogger("cachewire.hub.connections")

END_OF_HEADER = b"\r\n\r\n"
MAX_LINE = 8190  # aiohttp's limit on the request line and on one header line
MESSAGES = {
    "max_connections": (503, "too many open connections to the hub (--max-connections)"),
    "max_connections_per_client": (
        503,
        "too many open connections from this address (--max-connections-per-client)",
    ),
    "header_timeout": (408, "no complete request header in time (--header-timeout)"),
}


def closing_response(reason: str) -> bytes:
    """The JSON error a connection closed by a limit gets before it is closed."""
    status, message = MESSAGES[reason]
    body = json.dumps({"error": message, "status": status}).encode()
    phrase = "Request Timeout" if status == 408 else "Service Unavailable"
    head = (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class Limits:
    """The open connections, by client address, and the caps on them."""

    def __init__(
        self,
        max_total: int,
        max_per_client: int,
        header_timeout: float,
        idle_timeout: float = 60.0,
        lane: FastLane | None = None,
    ) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout  # of a fast-lane connection between requests
        self.lane = lane  # None: every request goes to aiohttp
        self.open = 0
        self.by_client: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()  # reason → connections closed by a limit

    def admit(self, client: str) -> str | None:
        """Count a new connection in; or the reason it is refused (not counted)."""
        if self.open >= self.max_total:
            return "max_connections"
        if self.by_client[client] >= self.max_per_client:
            return "max_connections_per_client"
        self.open += 1
        self.by_client[client] += 1
        return None

    def release(self, client: str) -> None:
        self.open -= 1
        self.by_client[client] -= 1
        if not self.by_client[client]:
            del self.by_client[client]


class JsonErrors(RequestHandler):
    """aiohttp's request handler, whose protocol errors (a request line or header over
    aiohttp's limits, a malformed request) answer JSON like every other error:
    414 for a request line too long, 431 for headers too large or too many, else 400."""

    first_line_seen = False  # set by the Guard once the request line has ended

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status != 400 or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        text = str(getattr(exc, "message", "") or message or "bad request")
        if isinstance(exc, LineTooLong):
            if self.first_line_seen:
                status, text = 431, f"a request header is longer than {MAX_LINE} bytes"
            else:
                status, text = 414, f"the request line is longer than {MAX_LINE} bytes"
        elif "too many headers" in text.lower():
            status, text = 431, "too many request headers"
        log.info(
            "request rejected",
            extra={"status": status, "error": text, "peer": request.remote},
        )
        response = web.json_response({"error": text, "status": status}, status=status)
        response.force_close()
        return response


class Guard(asyncio.Protocol):
    """Wraps one connection's aiohttp protocol; everything is passed on to it."""

    def __init__(self, inner: Any, limits: Limits) -> None:
        self._inner = inner
        self._limits = limits
        self._client = ""
        self._admitted = False
        self._before_newline = 0  # bytes of the first request line so far; -1 once ended
        self._tail = b""  # the last bytes seen, to find a header end split across reads
        self._deadline: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        self._lane = limits.lane  # None once the connection is aiohttp's
        self._buf = bytearray()  # bytes the fast lane has not answered yet
        self._busy = False  # a fast-lane publish is being stored
        self._paused = False
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._client = str(peer[0]) if isinstance(peer, tuple) else str(peer or "")
        refused = self._limits.admit(self._client)
        if refused is not None:
            self._limits.refused[refused] += 1
            log.warning(
                "connection refused: too many open connections",
                extra={
                    "peer": self._client,
                    "limit": refused,
                    "open": self._limits.open,
                    "from_peer": self._limits.by_client[self._client],
                },
            )
            self._transport.write(closing_response(refused))
            transport.close()
            return
        self._admitted = True
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self._limits.header_timeout, self._too_slow)
        self._inner.connection_made(transport)

    def _too_slow(self) -> None:
        self._deadline = None
        self._limits.refused["header_timeout"] += 1
        log.info(
            "connection closed: no complete request header in time",
            extra={"peer": self._client, "header_timeout": self._limits.header_timeout},
        )
        if self._transport is not None:
            self._transport.write(closing_response("header_timeout"))
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        if self._deadline is not None:
            seen = self._tail + data
            if END_OF_HEADER in seen:
                self._deadline.cancel()
                self._deadline = None
            else:
                self._tail = seen[-3:]
        if self._lane is None:
            self._to_inner(data)
            return
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._buf += data
        self._next()

    def _next(self) -> None:
        """Answer the next plain publish in the buffer, or hand the buffer to aiohttp."""
        assert self._lane is not None and self._transport is not None
        if self._busy:
            return
        got = self._lane.parse(self._buf) if self._buf else None
        if got is None:  # nothing, or an incomplete request: read on
            if not self._buf:
                loop = asyncio.get_running_loop()
                self._idle = loop.call_later(self._limits.idle_timeout, self._transport.close)
            return
        if isinstance(got, Defer):
            if self._buf.startswith(b"POST /v1/publish"):
                self._lane.deferred += 1
            self._lane, data = None, bytes(self._buf)
            self._buf.clear()
            self._to_inner(data)
            return
        del self._buf[: got.size]
        self._busy = True
        task = asyncio.get_running_loop().create_task(self._lane.publish(got, self._client))
        task.add_done_callback(self._answered)
        if len(self._buf) > 2 * self._lane.settings.max_body and not self._paused:
            self._paused = True  # a client sending faster than its publishes are stored
            self._transport.pause_reading()

    def _answered(self, task: asyncio.Task[bytes]) -> None:
        self._busy = False
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if task.cancelled():  # the hub is stopping
            transport.close()
            return
        transport.write(task.result())
        if self._paused:
            self._paused = False
            transport.resume_reading()
        if self._lane is not None:
            self._next()

    def _to_inner(self, data: bytes) -> None:
        if self._before_newline >= 0:  # still in the first request line
            end = data.find(b"\n")
            if end < 0:
                self._before_newline += len(data)
            else:
                # The request line ended: within aiohttp's limit, a later error is a header's.
                self._inner.first_line_seen = self._before_newline + end <= MAX_LINE + 1
                self._before_newline = -1
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if not self._admitted:
            return None
        result: bool | None = self._inner.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._admitted:
            self._admitted = False
            self._limits.release(self._client)
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class GuardedSite(web.TCPSite):
    """`TCPSite` whose connections go through a `Guard` sharing one `Limits`."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        limits: Limits,
        ssl_context: ssl.SSLContext | None = None,
        reuse_port: bool = False,  # --workers: every worker binds the same port
    ) -> None:
        super().__init__(runner, host, port, reuse_port=reuse_port, ssl_context=ssl_context)
        self.limits = limits
        self._reuse = reuse_port

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        limits = self.limits
        kwargs = server._kwargs  # what Server() passes its RequestHandlers

        def factory() -> asyncio.Protocol:
            return Guard(JsonErrors(server, loop=loop, **kwargs), limits)

        self._server = await loop.create_server(
            factory,
            self._host,
            self._port,
            ssl=self._ssl_context,
            reuse_port=self._reuse or None,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]
