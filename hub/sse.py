"""Server-Sent Events, Plasma-compatible: GET /?eventType=a,b:c.

Delivery does no per-event work per subscriber beyond appending a reference: each event's
frame is encoded once, as one HTTP/1.1 chunk (`Event.sse_chunk`); a subscriber collects the
shared chunks of one loop iteration, and the `Flusher` writes them to its transport in one
write (the shared bytes themselves when there is one). A subscriber whose socket does not
drain keeps frames pending; past its queue size it is reset and dropped, alone, and a
client that does not read its last bytes within the grace period is cut.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING

from aiohttp import web

from cachewire.hub.auth.decide import ANONYMOUS
from cachewire.hub.auth.transport import http_credentials
from cachewire.hub.brokers.base import ResetReason
from cachewire.hub.core import Pressure, Subscription, Tracked
from cachewire.hub.errors import Denied, HubError, InvalidInput
from cachewire.hub.events import RESET_TYPE, Event, as_chunk, parse_topics

if TYPE_CHECKING:
    from cachewire.hub.server import Hub

log = logging.getLogger("cachewire.hub.sse")

# The one application key: handlers reach settings, broker, fan-out and flusher through it.
HUB: web.AppKey[Hub] = web.AppKey("hub")

HEARTBEAT = b": heartbeat\n\n"
REAUTH_TYPE = "cachewire:reauth"
# Sent before the hub ends a stream whose credential expired or lost its grant: the client
# gets a fresh cookie or ticket and reconnects with Last-Event-ID (nothing is lost).
REAUTH_FRAME = (
    b"event: "
    + REAUTH_TYPE.encode()
    + b'\ndata: {"meta":{"type":"'
    + REAUTH_TYPE.encode()
    + b'"}}\n\n'
)
# Bytes a subscriber's socket may hold unsent before we stop writing to it.
TRANSPORT_LIMIT = 256 * 1024
STALLED_RETRY = 0.05
# The longest a flush waits for the previous one's duration (bounds the latency it adds).
MAX_COALESCE = 0.05


class Flusher:
    """Coalesces writes into one write per subscriber per flush.

    A flush runs at the next loop iteration after a send, but no sooner after the previous
    flush ended than that flush took (at most MAX_COALESCE). Idle, that is at once; when
    fan-out saturates the loop (each write is a system call, and on loopback the costliest
    part of a delivery), events published meanwhile coalesce into fewer, larger writes, and
    writing takes at most about half of the loop, so publishes and new connections are
    still served. The latency this adds stays near the time of one flush.
    """

    def __init__(self) -> None:
        self._dirty: set[SseSink] = set()
        self._scheduled = False
        self._not_before = 0.0  # loop time before which the next flush waits
        self._stalled: set[SseSink] = set()
        self._retry: asyncio.TimerHandle | None = None

    def mark(self, sink: SseSink) -> None:
        self._dirty.add(sink)
        if not self._scheduled:
            self._scheduled = True
            loop = asyncio.get_running_loop()
            if self._not_before > loop.time():
                loop.call_at(self._not_before, self.run)
            else:
                loop.call_soon(self.run)

    def run(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._scheduled = False
        dirty, self._dirty = self._dirty, set()
        for sink in dirty:
            try:
                if not sink.flush():
                    self._stalled.add(sink)
            except Exception:  # one broken transport must not starve the others
                log.exception("sse write failed")
                sink.abort()
        ended = loop.time()
        self._not_before = ended + min(ended - started, MAX_COALESCE)
        if self._stalled and self._retry is None:
            self._retry = loop.call_later(STALLED_RETRY, self._unstall)

    def _unstall(self) -> None:
        self._retry = None
        stalled, self._stalled = self._stalled, set()
        for sink in stalled:
            self.mark(sink)


class SseSink(Tracked):
    kind = "sse"

    def __init__(
        self, request: web.Request, chunked: bool, flusher: Flusher, queue_size: int
    ) -> None:
        assert request.transport is not None
        self._transport = request.transport
        self._chunked = chunked
        self._flusher = flusher
        self._queue_size = queue_size
        # Shared bytes (or views into them); a replay's events are encoded as they are
        # written, a transport's worth at a time, so a long replay does not hold the loop.
        self._pending: list[bytes | memoryview | Event] = []
        self._events_pending = 0
        self._lag_at = queue_size + 1  # send checks the backlog from here on (see watch)
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # Whenever `_pending` is not empty the sink is marked dirty or stalled, so a send that
    # finds frames pending appends and returns: per delivery, one reference appended.

    def send(self, event: Event) -> bool:
        pending = self._pending
        pending.append(event.sse_chunk() if self._chunked else event.sse_frame_view())
        self._events_pending = n = self._events_pending + 1
        if n >= self._lag_at:
            if n > self._queue_size and self._over(n, self._queue_size + 1):
                return False
            self._grew(n)
        if len(pending) == 1:
            self._flusher.mark(self)
        return True

    def watch(self, pressure: Pressure | None) -> None:
        super().watch(pressure)
        self._lag_at = self._queue_size + 1
        if pressure is not None:
            self._lag_at = min(self._lag_at, pressure.threshold)

    def send_replay(self, events: list[Event]) -> None:
        """A replay holds references to the history's events only (8 bytes each, however
        large the events, on HTTP/1.0 too): it is bounded by --history and --history-bytes
        and shares their memory; the live events queued behind it count against the queue."""
        self._pending.extend(events)
        self._flusher.mark(self)

    def _wire(self, item: bytes | memoryview | Event) -> bytes | memoryview:
        if isinstance(item, Event):
            return item.sse_chunk() if self._chunked else item.sse_frame_view()
        return item

    def send_frame(self, frame: bytes) -> None:
        """A frame of the hub's own (position, reset, heartbeat)."""
        self._pending.append(as_chunk(frame) if self._chunked else frame)
        self._flusher.mark(self)

    def reset(self, reason: ResetReason, detail: str, resume_from: str) -> None:
        if reason == "slow_consumer":
            # What was not written is discarded; no id line, so the client keeps the id of
            # the last event it really received and a reconnect replays from there.
            self._pending.clear()
            self._drained(0)
        self.send_frame(
            reset_frame(reason, detail, None if reason == "slow_consumer" else resume_from)
        )

    def heartbeat(self, head_id: str) -> None:
        if not self._pending:  # pending frames keep the stream alive already
            self.send_frame(HEARTBEAT)

    def reauth(self, resume_from: str | None) -> None:
        """The credential expired or lost its grant: say so, then end the stream."""
        self.send_frame(reauth_frame(resume_from))
        self.close()

    def close(self) -> None:
        self.flush(force=True)
        if not self.done.done():
            self.done.set_result(None)

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()
        self.close()

    def flush(self, force: bool = False) -> bool:
        """Write what is pending; False when the socket is backed up (try again later)."""
        pending = self._pending
        if not pending:
            return True
        transport = self._transport
        if transport.is_closing():
            pending.clear()
            self._drained(0)
            return True
        buffered = transport.get_write_buffer_size()
        if not force and buffered > TRANSPORT_LIMIT:
            return False
        if len(pending) == 1:  # one event: its shared bytes as they are
            transport.write(self._wire(pending[0]))
            pending.clear()
            self._drained(0)
            return True
        # A burst: one write of its chunks, but no more than the transport limit at a time
        # (a big replay, or a client that reads slowly, would otherwise be copied whole into
        # its buffer); what stays pending is references to the shared bytes.
        room, n = (1 << 62) if force else TRANSPORT_LIMIT - buffered, 0
        for i, item in enumerate(pending):
            piece = pending[i] = self._wire(item)
            room -= len(piece)
            n += 1
            if room <= 0:
                break
        transport.write(b"".join(pending[:n]))  # type: ignore[arg-type]  # encoded above
        del pending[:n]
        # Writes take from the front; live events (those counted) are the last ones queued,
        # after any replay, so at most this many of them are left.
        self._drained(min(self._events_pending, len(pending)))
        if pending:
            self._flusher.mark(self)  # the next flush writes on, as the client drains
        return True

    def _drained(self, n: int) -> None:
        self._events_pending = n
        if self.lagging:
            self._shrank(n)


def reset_frame(reason: str, detail: str, resume_from: str | None) -> bytes:
    body = json.dumps(
        {
            "meta": {"type": RESET_TYPE, "reason": reason},
            "data": {"reason": reason, "detail": detail},
        },
        separators=(",", ":"),
    )
    id_line = f"id: {resume_from}\n" if resume_from else ""
    return f"{id_line}data: {body}\n\n".encode()


def reauth_frame(resume_from: str | None) -> bytes:
    """`event: cachewire:reauth`, sent before the hub ends a stream whose credential expired
    or lost its grant; the client gets a fresh cookie or ticket and reconnects from its id.

    Its id, when given, is the head when it was queued: every matching event up to there
    was queued before it, so a client that has seen no event since it connected still
    resumes without a gap."""
    id_line = f"id: {resume_from}\n" if resume_from else ""
    data = json.dumps({"meta": {"type": REAUTH_TYPE}}, separators=(",", ":"))
    return f"{id_line}event: {REAUTH_TYPE}\ndata: {data}\n\n".encode()


def topics_from_query(
    request: web.Request, query_name: str, limit: int | None = None
) -> frozenset[str]:
    raw = request.query.get(query_name, "")
    if not raw:
        raise InvalidInput(
            f"query parameter {query_name!r} is required (e.g. ?{query_name}=program:1234)"
        )
    return parse_topics(raw.split(","), "event type", limit)


def _last_event_id(request: web.Request) -> str | None:
    """The browser's Last-Event-ID header, else Plasma's ?lastEventId= (its polyfill's)."""
    raw = request.headers.get("Last-Event-ID") or request.query.get("lastEventId") or ""
    return raw.strip() or None


async def handle(request: web.Request) -> web.StreamResponse:
    """Serve one SSE subscriber until it disconnects or the hub shuts down."""
    hub = request.app[HUB]
    fanout, settings, flusher = hub.fanout, hub.settings, hub.flusher
    topics = topics_from_query(request, settings.sse_event_query, settings.max_topics)
    last_id = _last_event_id(request)
    auth = hub.auth
    principal = ANONYMOUS
    if auth is not None:  # before any byte of the stream: refusals are 401/403 with JSON
        principal = await auth.check_subscribe(http_credentials(request, browser=True), topics)

    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    if settings.cors_origin:
        _allow_origin(request, response, settings.cors_origins, credentials=auth is not None)
    if request.method == "HEAD":
        return response  # the headers a GET would get, and no stream
    response.force_close()  # a stream's connection is never reused for another request
    chunked = request.version >= (1, 1)
    if chunked:
        response.enable_chunked_encoding()
    await response.prepare(request)
    # The first write sends the headers too: the client sees the stream open at once.
    await response.write(f"retry: {settings.sse_retry}\n\n".encode())

    sink = SseSink(request, chunked, flusher, settings.queue_size)
    if last_id is None:
        # An id-only frame dispatches nothing but gives the client a position to resume from.
        sink.send_frame(f"id: {fanout.last_id}\n\n".encode())
    log.info(
        "sse connection opened",
        extra={"peer": request.remote, "topics": sorted(topics), "last_event_id": last_id},
    )
    holder: list[Subscription] = []

    def end(exc: Denied) -> None:
        # While a resume still replays, the head is no position this client has reached.
        live = bool(holder) and holder[0].live
        sink.reauth(fanout.last_id if live else last_id)

    watch = None if auth is None else auth.watch(principal, topics, end)
    try:
        await _serve(request, sink, topics, last_id, holder)
    finally:
        if auth is not None and watch is not None:
            auth.unwatch(watch)
    await _finish(request, response, sink, settings.grace)
    return response


async def _serve(
    request: web.Request,
    sink: SseSink,
    topics: frozenset[str],
    last_id: str | None,
    holder: list[Subscription],
) -> None:
    """Subscribe the sink and wait until its stream ends (or the client goes away)."""
    fanout, peer, started = request.app[HUB].fanout, request.remote, time.monotonic()
    try:
        sub = await fanout.subscribe(topics, sink, last_id)
        holder.append(sub)
    except HubError as exc:  # e.g. the broker cannot replay now: the client retries
        log.warning("sse resume failed", extra={"peer": peer, "error": str(exc)})
        return
    try:
        await sink.done
    finally:  # also when the client went away (aiohttp cancels the handler)
        fanout.unsubscribe(sub)
        log.info(
            "sse connection closed",
            extra={"peer": peer, "seconds": round(time.monotonic() - started, 3)},
        )


def _allow_origin(
    request: web.Request, response: web.StreamResponse, allowed: tuple[str, ...], credentials: bool
) -> None:
    """One configured value is sent as is (Plasma's PLASMA_ORIGIN); from a list, the
    request's Origin when listed. Cookies cross origins only to a listed origin."""
    origin = request.headers.get("Origin")
    if len(allowed) == 1:
        value: str | None = allowed[0]
    else:
        value = origin if origin in allowed else ("*" if "*" in allowed else None)
        response.headers["Vary"] = "Origin"
    if value is None:
        return
    response.headers["Access-Control-Allow-Origin"] = value
    if credentials and value != "*":
        response.headers["Access-Control-Allow-Credentials"] = "true"


async def _finish(
    request: web.Request, response: web.StreamResponse, sink: SseSink, drain_within: float
) -> None:
    """End the stream with its terminating chunk; cut a client that does not read it."""
    transport = request.transport
    if transport is None or transport.is_closing():
        return
    sink.flush(force=True)
    try:
        async with asyncio.timeout(drain_within):
            await response.write_eof()
    except TimeoutError:
        log.info(
            "sse client did not drain its stream; connection aborted",
            extra={"peer": request.remote},
        )
        transport.abort()
    except asyncio.CancelledError:
        transport.abort()
        raise
