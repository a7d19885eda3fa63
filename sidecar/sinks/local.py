"""The local relay: serves `cachewire.v1.Hub/Subscribe` to the app processes of the pod.

The applier hands this sink batches like any other; the relay forwards each invalidation to
every connected app stream whose topics match (`sidecar.client.Invalidator` applies them
to the app's in-process cache). Each stream has a bounded queue: an app that falls behind
gets a SLOW_CONSUMER reset and its stream ends, alone.

The relay keeps the last `history` entries, so an app that reconnects with `resume_from`
gets what it missed; a flush of the sidecar is an entry too (with an id the relay mints,
"relay.<token>.<n>"), so an app that was away during a flush gets a reset on its return.
An id the relay no longer holds, or one from before a relay restart, gets a reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import grpc

from cachewire.sidecar.client import matches, parse_topics
from cachewire.sidecar.sinks.base import Invalidation, SinkError
from cachewire.v1 import hub_pb2, hub_pb2_grpc

log = logging.getLogger("cachewire.sidecar.relay")

BATCH_BYTES = 1 << 20  # split EventBatch messages past about 1 MiB
# What one history entry costs beyond its encoding: the protobuf and entry objects.
ENTRY_OVERHEAD = 300
Response = hub_pb2.SubscribeResponse


@dataclass(frozen=True, slots=True)
class _Entry:
    seq: int
    id: str
    event: hub_pb2.Event | None  # None: the sidecar flushed here
    size: int = ENTRY_OVERHEAD  # bytes held: the event's encoding and its objects


def to_event(inv: Invalidation) -> hub_pb2.Event:
    return hub_pb2.Event(
        id=inv.id,
        type=inv.type,
        data=inv.data_json,
        keys=inv.keys,
        prefixes=inv.prefixes,
        flush=inv.flush,
        published_at_unix_micros=int(inv.published_at * 1_000_000),
        traceparent=inv.traceparent,
        tracestate=inv.tracestate,
    )


def batches(events: Sequence[hub_pb2.Event]) -> list[Response]:
    """EventBatch messages of about BATCH_BYTES at most, in order."""
    out: list[Response] = []
    chunk: list[hub_pb2.Event] = []
    size = 0
    for event in events:
        n = event.ByteSize()
        if chunk and size + n > BATCH_BYTES:
            out.append(Response(events=hub_pb2.EventBatch(events=chunk)))
            chunk, size = [], 0
        chunk.append(event)
        size += n
    if chunk:
        out.append(Response(events=hub_pb2.EventBatch(events=chunk)))
    return out


def _reset(reason: hub_pb2.ResetReason, detail: str, resume_from: str) -> Response:
    return Response(reset=hub_pb2.Reset(reason=reason, detail=detail, resume_from=resume_from))


class AppStream:
    """One app's subscription: an ordered queue of messages, bounded in events."""

    def __init__(
        self, topics: frozenset[str], queue_size: int, peer: str, queue_bytes: int = 16 << 20
    ) -> None:
        self.topics = topics
        self.peer = peer
        self.last_sent_id = ""  # the last event handed to the transport
        self.ending: Literal["slow", "closing"] | None = None
        self._queue_size = queue_size
        self._queue_bytes = queue_bytes
        self._out: deque[tuple[Response, int, int]] = deque()
        self._events = 0  # events queued by live delivery (replays are bounded by history)
        self._bytes = 0  # and their bytes
        self._beat_queued = False
        self._wake = asyncio.Event()

    def _push(self, message: Response, counted: int = 0, size: int = 0) -> None:
        if self.ending is None:
            self._out.append((message, counted, size))
            self._events += counted
            self._bytes += size
            self._wake.set()

    def send_events(self, events: Sequence[hub_pb2.Event]) -> bool:
        """Queue live events; False when the queue overflowed (in events or bytes)."""
        for message in batches(events):
            self._push(message, len(message.events.events), message.ByteSize())
        return self._events <= self._queue_size and self._bytes <= self._queue_bytes

    def send_replay(self, events: Sequence[hub_pb2.Event]) -> None:
        for message in batches(events):
            self._push(message)

    def send(self, message: Response) -> None:
        self._push(message)

    def heartbeat(self, message: Response) -> None:
        if not self._beat_queued:  # one pending heartbeat is enough
            self._beat_queued = True
            self._push(message)

    def end(self, how: Literal["slow", "closing"], last: Response | None = None) -> None:
        if how == "slow":
            self._out.clear()  # what was not written is dropped: the app resumes for it
            self._events = self._bytes = 0
        if last is not None:
            self._push(last)
        self.ending = how
        self._wake.set()

    async def messages(self) -> AsyncIterator[Response]:
        while True:
            while self._out:
                message, counted, size = self._out.popleft()
                self._events -= counted
                self._bytes -= size
                kind = message.WhichOneof("message")
                if kind == "heartbeat":
                    self._beat_queued = False
                elif kind == "events" and message.events.events:
                    self.last_sent_id = message.events.events[-1].id
                yield message
            if self.ending is not None:
                return
            self._wake.clear()
            await self._wake.wait()


class RelaySink:
    """A Sink that serves the pod's app processes over gRPC on localhost."""

    name = "relay"

    def __init__(
        self,
        port: int,
        history: int = 10_000,
        host: str = "127.0.0.1",
        *,
        queue_size: int = 10_000,
        heartbeat: float = 1.0,
        history_bytes: int = 16 << 20,
    ) -> None:
        if history < 1 or queue_size < 1 or heartbeat <= 0:
            raise ValueError("history and queue_size must be >= 1, heartbeat > 0")
        self.host, self.port = host, port
        self.queue_size = queue_size
        self.heartbeat_interval = heartbeat
        self._token = secrets.token_hex(4)
        self._seq = 0
        self._history: deque[_Entry] = deque()
        self._history_cap = history
        self._history_bytes_cap = history_bytes
        self.history_bytes = 0
        self._index: dict[str, int] = {}  # id → seq of its first entry
        self._start_id = self._mint()  # the position before any entry
        self.high_water = self._start_id
        self.evicted = 0
        self.forwarded = 0
        self.slow_drops = 0
        self._streams: set[AppStream] = set()
        self._changed = asyncio.Event()
        self._server: Any = None
        self._beat_task: asyncio.Task[None] | None = None
        self._closing = False

    def _mint(self) -> str:
        return f"relay.{self._token}.{self._seq}"

    # --- Sink ---

    async def start(self) -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        hub_pb2_grpc.add_HubServicer_to_server(  # type: ignore[no-untyped-call]
            _Servicer(self), server
        )
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        try:
            self.port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise SinkError(
                f"the local relay cannot listen on {address}: the port is taken or not allowed"
            ) from exc
        await server.start()
        self._server = server
        self._closing = False  # a closed relay may start again, with its history
        self._beat_task = asyncio.create_task(self._beat(), name="relay-heartbeat")
        log.info("relay listening", extra={"host": self.host, "port": self.port})

    async def apply(self, batch: Sequence[Invalidation]) -> None:
        events = []
        for inv in batch:
            event = to_event(inv)
            self._append(inv.id, event)
            events.append(event)
        for stream in tuple(self._streams):
            mine = [e for e in events if matches(stream.topics, e.type)]
            if mine and not stream.send_events(mine):
                self._drop_slow(stream)
        self.forwarded += len(events)

    async def flush(self, reason: str) -> None:
        flush_id = self._append("", None)
        reset = _reset(
            hub_pb2.RESET_REASON_UNSPECIFIED,
            f"the sidecar flushed the caches it guards: {reason}",
            flush_id,
        )
        for stream in tuple(self._streams):
            stream.send(reset)
        log.info("relay flush", extra={"reason": reason, "streams": len(self._streams)})

    async def check(self) -> bool:
        return self._server is not None and not self._closing

    async def close(self) -> None:
        """End every app stream with UNAVAILABLE (they reconnect and resume), then stop."""
        self._closing = True
        for stream in tuple(self._streams):
            stream.end("closing")
        if self._beat_task is not None:
            self._beat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat_task
        if self._server is not None:
            await self._server.stop(grace=1.0)
            self._server = None

    # --- history ---

    def _append(self, event_id: str, event: hub_pb2.Event | None) -> str:
        """Add an entry (an event, or a flush with a minted id); return its id."""
        self._seq += 1
        event_id = event_id or self._mint()
        size = ENTRY_OVERHEAD
        if event is not None:  # measured: a decoded string in a message costs ~32 bytes more
            size += event.ByteSize() + 32 * (len(event.keys) + len(event.prefixes))
        self._history.append(_Entry(self._seq, event_id, event, size))
        self.history_bytes += size
        self._index.setdefault(event_id, self._seq)
        self.high_water = event_id
        while len(self._history) > 1 and (
            len(self._history) > self._history_cap or self.history_bytes > self._history_bytes_cap
        ):
            old = self._history.popleft()
            self.history_bytes -= old.size
            self.evicted += 1
            if self._index.get(old.id) == old.seq:
                del self._index[old.id]
        return event_id

    def _resume(self, stream: AppStream, resume_from: str) -> None:
        """Queue what an app missed after `resume_from`, or a reset."""
        first = self._history[0].seq if self._history else self._seq + 1
        seq = 0 if resume_from == self._start_id else self._index.get(resume_from)
        if seq is None or seq < first - 1:
            mine = resume_from.startswith(f"relay.{self._token}.")
            if seq is None and resume_from.startswith("relay.") and not mine:
                reason, detail = hub_pb2.RESET_REASON_EPOCH_CHANGED, "is from before a restart"
            elif seq is not None or mine or self.evicted:
                reason, detail = hub_pb2.RESET_REASON_HISTORY_EXPIRED, "left the relay's history"
            else:
                reason, detail = hub_pb2.RESET_REASON_UNKNOWN_ID, "is unknown to the relay"
            stream.send(_reset(reason, f"event id {resume_from!r} {detail}", self.high_water))
            return
        missed = [e for e in self._history if e.seq > seq]
        flushes = [i for i, e in enumerate(missed) if e.event is None]
        if flushes:
            flush = missed[flushes[-1]]
            stream.send(
                _reset(
                    hub_pb2.RESET_REASON_UNSPECIFIED,
                    "the sidecar flushed the caches it guards",
                    flush.id,
                )
            )
            missed = missed[flushes[-1] + 1 :]
        stream.send_replay(
            [
                e.event
                for e in missed
                if e.event is not None and matches(stream.topics, e.event.type)
            ]
        )

    # --- streams ---

    def _drop_slow(self, stream: AppStream) -> None:
        self._streams.discard(stream)
        self.slow_drops += 1
        stream.end(
            "slow",
            _reset(
                hub_pb2.RESET_REASON_SLOW_CONSUMER,
                f"the app fell behind its queue of {self.queue_size} events; resubscribe with "
                "resume_from",
                stream.last_sent_id,
            ),
        )
        log.warning("relay dropped a slow app", extra={"peer": stream.peer})
        self._changed.set()

    def _heartbeat_message(self) -> Response:
        return Response(
            heartbeat=hub_pb2.Heartbeat(
                high_water_id=self.high_water, sent_at_unix_micros=int(time.time() * 1_000_000)
            )
        )

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            message = self._heartbeat_message()
            for stream in tuple(self._streams):
                stream.heartbeat(message)

    def subscriber_count(self) -> int:
        return len(self._streams)

    async def wait_subscribers(self, n: int) -> None:
        """Return once at least n app streams are connected (a waiting point for tests)."""
        while len(self._streams) < n:
            self._changed.clear()
            await self._changed.wait()

    async def serve(
        self, request: hub_pb2.SubscribeRequest, context: Any
    ) -> AsyncIterator[Response]:
        try:
            topics = parse_topics(request.topics)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if self._closing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the relay is shutting down")
        stream = AppStream(topics, self.queue_size, context.peer(), self._history_bytes_cap)
        if request.resume_from:
            self._resume(stream, request.resume_from)
        stream.heartbeat(self._heartbeat_message())  # tells the app it is subscribed
        self._streams.add(stream)
        self._changed.set()
        log.info(
            "app subscribed",
            extra={
                "peer": stream.peer,
                "topics": sorted(topics),
                "resume_from": request.resume_from,
            },
        )
        try:
            async for message in stream.messages():
                yield message
        finally:
            self._streams.discard(stream)
            self._changed.set()
        if stream.ending == "closing":
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "the sidecar relay is shutting down; reconnect and resume",
            )


class _Servicer:
    """cachewire.v1.Hub as the relay serves it: Subscribe only."""

    def __init__(self, relay: RelaySink) -> None:
        self.Subscribe = relay.serve  # an async generator method, as grpc.aio expects

    async def Publish(self, request: hub_pb2.PublishRequest, context: Any) -> None:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "the sidecar relay only serves Subscribe; publish to the hub",
        )

    async def PublishStream(self, requests: Any, context: Any) -> None:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "the sidecar relay only serves Subscribe; publish to the hub",
        )
