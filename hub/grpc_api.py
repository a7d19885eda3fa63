"""cachewire.v1.Hub over gRPC: Publish, and the resumable, batched Subscribe stream.

Also the machinery both streaming services share (`Outbox`, `EncodeCache`): the fan-out
core calls a sink synchronously, the sink appends a reference to its bounded `Outbox`
and wakes the stream's one writer, and the writer turns everything queued into as few
messages as the service allows. An event is encoded to protobuf once per wire format and
the bytes are shared by every subscriber: a batch is those bytes concatenated, which is
what protobuf's encoding of a repeated field is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from cachewire.hub import telemetry
from cachewire.hub.auth.decide import Principal
from cachewire.hub.auth.transport import grpc_credentials
from cachewire.hub.brokers.base import ResetReason
from cachewire.hub.core import Pressure, Tracked
from cachewire.hub.errors import Denied, HubError, InvalidInput, Unavailable
from cachewire.hub.events import (
    Draft,
    Event,
    check_count,
    data_json_from_text,
    idempotency_key,
    make_draft,
    parse_topics,
)
from cachewire.v1 import hub_pb2

if TYPE_CHECKING:
    from cachewire.hub.server import Hub

log = logging.getLogger("cachewire.hub.grpc")

# Most events in one EventBatch message (a replay of a large history leaves in several);
# the bytes of one are capped by the --subscribe-batch-bytes setting.
MAX_BATCH = 1000
FRAMING = 5  # bytes around one event in a batch: its tag and length
RESET_REASONS: dict[ResetReason, hub_pb2.ResetReason] = {
    "history_expired": hub_pb2.RESET_REASON_HISTORY_EXPIRED,
    "epoch_changed": hub_pb2.RESET_REASON_EPOCH_CHANGED,
    "unknown_id": hub_pb2.RESET_REASON_UNKNOWN_ID,
    "slow_consumer": hub_pb2.RESET_REASON_SLOW_CONSUMER,
}
NEVER = 1 << 62
SHUTTING_DOWN = "the hub is shutting down: reconnect (to another replica) and resume"


def now_micros() -> int:
    return round(time.time() * 1_000_000)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field_1(payload: bytes) -> bytes:
    """Protobuf wire encoding of a length-delimited field number 1."""
    return b"\x0a" + _varint(len(payload)) + payload


class EncodeCache:
    """Event → encoded message, computed once and shared by every subscriber of a service."""

    def __init__(
        self, encode: Callable[[Event], bytes], size: int = 16_384, max_bytes: int = 32 << 20
    ) -> None:
        self._encode = encode
        self._size = size
        self._max_bytes = max_bytes
        self._bytes = 0
        self._cache: dict[str, bytes] = {}

    def __call__(self, event: Event) -> bytes:
        data = self._cache.get(event.id)
        if data is None:
            data = self._encode(event)
            if len(self._cache) >= self._size or self._bytes + len(data) > self._max_bytes:
                self._cache.clear()  # cheap; a miss only costs one more encoding
                self._bytes = 0
            self._cache[event.id] = data
            self._bytes += len(data)
        return data


class Outbox(Tracked):
    """A stream's bounded queue, and the wake-up of its single writer coroutine.

    Events count against `limit`; control messages (pre-encoded bytes: resets, heartbeats)
    do not. `finish` ends the stream once the writer has drained what is queued, with OK
    or with the given error.
    """

    def __init__(self, limit: int) -> None:
        self.items: deque[Event | bytes] = deque()
        self.limit = limit
        self.events = 0
        self.finished = False
        self.error: HubError | None = None
        self._wake = asyncio.Event()
        self._lag_at = NEVER  # put reports the backlog from here on (see watch)

    def put(self, event: Event) -> bool:
        n = self.events
        if n >= self.limit and self._over(n, self.limit):
            return False
        self.items.append(event)
        self.events = n = n + 1
        if n >= self._lag_at:
            self._grew(n)
        self._wake.set()
        return True

    def put_all(self, events: Iterable[Event]) -> None:
        before = len(self.items)
        self.items.extend(events)
        self.events += len(self.items) - before
        self._grew(self.events)
        self._wake.set()

    def watch(self, pressure: Pressure | None) -> None:
        super().watch(pressure)
        self._lag_at = NEVER if pressure is None else pressure.threshold

    def put_control(self, message: bytes) -> None:
        self.items.append(message)
        self._wake.set()

    def take(self, max_events: int) -> bytes | list[Event]:
        """The next control message, or the run of (at most max_events) events at the head."""
        items = self.items
        first = items.popleft()
        if isinstance(first, bytes):
            return first
        run = [first]
        while items and len(run) < max_events and not isinstance(items[0], bytes):
            run.append(items.popleft())  # type: ignore[arg-type]  # not bytes: an Event
        self.events -= len(run)
        if self.lagging:
            self._shrank(self.events)
        return run

    def take_all(self, most: int) -> list[Event | bytes]:
        """Up to `most` items at the head, events and control messages alike, in order."""
        items = self.items
        if len(items) <= most:
            run = list(items)
            items.clear()
        else:
            run = [items.popleft() for _ in range(most)]
        self.events -= sum(1 for m in run if not isinstance(m, bytes))
        if self.lagging:
            self._shrank(self.events)
        return run

    def take_batch(
        self, max_events: int, max_bytes: int, encode: Callable[[Event], bytes]
    ) -> bytes | list[bytes]:
        """The next control message, or the encoded events at the head that fit in
        `max_bytes` (at most `max_events`; always at least one, however large)."""
        items = self.items
        first = items.popleft()
        if isinstance(first, bytes):
            return first
        data = encode(first)
        run, total = [data], len(data) + FRAMING
        while items and len(run) < max_events:
            head = items[0]
            if isinstance(head, bytes):
                break
            data = encode(head)
            total += len(data) + FRAMING
            if total > max_bytes:
                break
            items.popleft()
            run.append(data)
        self.events -= len(run)
        if self.lagging:
            self._shrank(self.events)
        return run

    def pop(self) -> Event | bytes:
        """The next item alone (a stream of one message per event writes them one by one)."""
        item = self.items.popleft()
        if not isinstance(item, bytes):
            self.events -= 1
            if self.lagging:
                self._shrank(self.events)
        return item

    def clear(self) -> None:
        self.items.clear()
        self.events = 0
        if self.lagging:
            self._shrank(0)

    def finish(self, error: HubError | None = None, *, discard: bool = False) -> None:
        if self.finished:
            return
        self.finished, self.error = True, error
        if discard:
            self.clear()
        self._wake.set()

    async def ready(self) -> bool:
        """Wait for something to write; False once finished and drained."""
        while not self.items:
            if self.finished:
                return False
            self._wake.clear()
            await self._wake.wait()
        return True


def event_message(event: Event) -> bytes:
    return hub_pb2.Event(
        id=event.id,
        type=event.type,
        data=event.data_json,
        keys=event.keys,
        prefixes=event.prefixes,
        flush=event.flush,
        published_at_unix_micros=round(event.published_at * 1_000_000),
        traceparent=event.traceparent,
        tracestate=event.tracestate,
    ).SerializeToString()


def batch_message(encoded_events: list[bytes]) -> bytes:
    """SubscribeResponse{events: EventBatch{events: ...}} from already-encoded events."""
    return field_1(b"".join(field_1(e) for e in encoded_events))


class OutboxSink(ABC):
    """What both gRPC sinks share: events and replays queue in one Outbox; a slow-consumer
    reset drops what was not written (the client flushes, then resubscribes) ahead of the
    reset itself; close ends the stream UNAVAILABLE, saying why."""

    slow_hint: ClassVar[str]  # the close message after a slow-consumer reset; {limit}

    def __init__(self, queue_size: int, encode: Callable[[Event], bytes]) -> None:
        self.outbox = Outbox(queue_size)
        self._encode = encode
        self._slow = False

    @abstractmethod
    def reset_message(self, reason: ResetReason, detail: str, resume_from: str) -> bytes:
        """The encoded reset of this stream's protocol."""

    def send(self, event: Event) -> bool:
        return self.outbox.put(event)

    def watch(self, pressure: Pressure | None) -> None:
        self.outbox.watch(pressure)

    def send_replay(self, events: list[Event]) -> None:
        self.outbox.put_all(events)

    def reset(self, reason: ResetReason, detail: str, resume_from: str) -> None:
        if reason == "slow_consumer":
            self._slow = True
            self.outbox.clear()
        self.outbox.put_control(self.reset_message(reason, detail, resume_from))

    def close(self) -> None:
        message = self.slow_hint.format(limit=self.outbox.limit) if self._slow else SHUTTING_DOWN
        self.outbox.finish(Unavailable(message))


class SubscribeSink(OutboxSink):
    """The fan-out sink of one Subscribe stream (kind "grpc").

    A heartbeat is queued behind every event dispatched before it, so it promises: every
    matching event up to high_water_id is ahead of me on this stream. Hence none is sent
    before `go_live` (while a resume's replay is still being fetched).
    """

    kind = "grpc"
    slow_hint = (
        "the subscriber fell behind its queue of {limit} events; resubscribe with resume_from"
    )

    def __init__(
        self, queue_size: int, encode: Callable[[Event], bytes], batch_bytes: int = 1 << 20
    ) -> None:
        super().__init__(queue_size, encode)
        self._batch_bytes = batch_bytes
        self._heartbeat: bytes | None = None  # the heartbeat queued last, if still queued
        self._live = False

    def reset_message(self, reason: ResetReason, detail: str, resume_from: str) -> bytes:
        reset = hub_pb2.Reset(reason=RESET_REASONS[reason], detail=detail, resume_from=resume_from)
        return hub_pb2.SubscribeResponse(reset=reset).SerializeToString()

    def go_live(self, head_id: str) -> None:
        """Called once any replay is queued: the first heartbeat says "subscribed"."""
        self._live = True
        self.heartbeat(head_id)

    def heartbeat(self, head_id: str) -> None:
        if not self._live:
            return
        message = hub_pb2.SubscribeResponse(
            heartbeat=hub_pb2.Heartbeat(high_water_id=head_id, sent_at_unix_micros=now_micros())
        ).SerializeToString()
        box = self.outbox
        if box.items and box.items[-1] is self._heartbeat:
            box.items[-1] = message  # an unread heartbeat is replaced, not piled up
            self._heartbeat = message
            return
        self._heartbeat = message
        box.put_control(message)

    async def messages(self) -> AsyncIterator[bytes]:
        """Encoded SubscribeResponse messages: consecutive events leave as one batch."""
        box = self.outbox
        while await box.ready():
            item = box.take_batch(MAX_BATCH, self._batch_bytes, self._encode)
            yield item if isinstance(item, bytes) else batch_message(item)
        if box.error is not None:
            raise box.error


async def write(context: Any, message: bytes) -> bool:
    """Send one message; False when the client has gone away (its stream just ends).

    A write fails when the connection dropped before gRPC noticed the cancellation; it
    raises its internal ExecuteBatchError, which is no error of ours or the client's.
    """
    try:
        await context.write(message)
    except Exception as exc:
        log.debug("grpc write failed: the client went away", extra={"error": repr(exc)})
        return False
    return True


def drafts_from_request(
    request: hub_pb2.PublishRequest,
    metadata: dict[str, str],
    max_keys: int,
    max_bytes: int | None = None,
    max_prefixes: int | None = None,
    max_events: int | None = None,
) -> list[Draft]:
    """Validate like HTTP publish; InvalidInput names the index of the first bad event."""
    if not request.events:
        raise InvalidInput("at least one event is required")
    check_count(len(request.events), max_events)
    drafts = []
    for i, item in enumerate(request.events):
        if item.traceparent:
            traceparent, tracestate = item.traceparent, item.tracestate
        else:
            traceparent = metadata.get("traceparent", "")
            tracestate = metadata.get("tracestate", "")
        try:
            drafts.append(
                make_draft(
                    type=item.type,
                    data_json=data_json_from_text(item.data),
                    keys=list(item.keys),
                    prefixes=list(item.prefixes),
                    flush=item.flush,
                    traceparent=traceparent,
                    tracestate=tracestate,
                    max_keys=max_keys,
                    max_bytes=max_bytes,
                    max_prefixes=max_prefixes,
                )
            )
        except InvalidInput as exc:
            raise type(exc)(f"event {i}: {exc}") from None
    return drafts


class HubService:
    """cachewire.v1.Hub. Methods raise HubError; grpc_server maps it to a status."""

    def __init__(self, hub: Hub, streams: set[Outbox]) -> None:
        self._hub = hub
        self._streams = streams  # open streams, ended by GrpcServer.stop
        self._encode = EncodeCache(event_message)

    async def Publish(
        self, request: hub_pb2.PublishRequest, context: Any
    ) -> hub_pb2.PublishResponse:
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        principal = await self._authenticate(metadata)
        return await self._publish(request, metadata, principal)

    async def PublishStream(
        self, requests: AsyncIterator[hub_pb2.PublishRequest], context: Any
    ) -> None:
        """Each request stored and answered in turn, so the answers come in request order.
        The first error ends the stream, naming the request by its index."""
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        principal = await self._authenticate(metadata)  # once per stream
        index = 0
        async for request in requests:
            try:
                response = await self._publish(request, metadata, principal)
            except Denied:
                raise  # the client learns nothing more than the status
            except HubError as exc:
                raise type(exc)(f"request {index}: {exc}") from None
            if not await write(context, response.SerializeToString()):
                return
            index += 1

    async def _authenticate(self, metadata: dict[str, str]) -> Principal | None:
        """The caller's principal with --auth protected; None with auth off."""
        if self._hub.auth is None:
            return None
        return await self._hub.auth.authenticate(grpc_credentials(metadata.items()))

    async def _publish(
        self,
        request: hub_pb2.PublishRequest,
        metadata: dict[str, str],
        principal: Principal | None,
    ) -> hub_pb2.PublishResponse:
        """What Publish and PublishStream share: validation (as HTTP's), the decision
        (every event granted; its credential not expired), the idempotency key, one
        append per request."""
        settings = self._hub.settings
        drafts = drafts_from_request(
            request,
            metadata,
            settings.max_keys,
            settings.max_body,
            settings.max_prefixes,
            settings.max_events,
        )
        if principal is not None and self._hub.auth is not None:
            self._hub.auth.authorize_publish(principal, drafts)
        key = idempotency_key(request.idempotency_key)
        await self._hub.fanout.pressure.admit()  # the hub is behind: wait, or RESOURCE_EXHAUSTED
        ids = await telemetry.publish_ids(
            self._hub.broker, drafts, "grpc", metadata, key, settings.idempotency_window
        )
        return hub_pb2.PublishResponse(ids=ids)

    async def Subscribe(self, request: hub_pb2.SubscribeRequest, context: Any) -> None:
        topics = parse_topics(list(request.topics), limit=self._hub.settings.max_topics)
        if self._hub.stopping:
            raise Unavailable(SHUTTING_DOWN)
        auth = self._hub.auth
        if auth is not None:
            credentials = grpc_credentials(context.invocation_metadata())
            principal = await auth.check_subscribe(credentials, topics)
        fanout = self._hub.fanout
        settings = self._hub.settings
        sink = SubscribeSink(settings.queue_size, self._encode, settings.subscribe_batch_bytes)
        # An expired credential or a revoked grant ends the stream UNAUTHENTICATED or
        # PERMISSION_DENIED, after what is queued; the client resumes with resume_from.
        watch = None if auth is None else auth.watch(principal, topics, sink.outbox.finish)
        peer, started = context.peer(), time.monotonic()
        log.info(
            "grpc subscribe opened",
            extra={"peer": peer, "topics": sorted(topics), "resume_from": request.resume_from},
        )
        self._streams.add(sink.outbox)
        sub = None
        try:
            sub = await fanout.subscribe(topics, sink, request.resume_from or None)
            if not sub.closed:
                sink.go_live(fanout.last_id)
            async for message in sink.messages():
                if not await write(context, message):
                    return
        finally:
            if sub is not None:
                fanout.unsubscribe(sub)
            if auth is not None and watch is not None:
                auth.unwatch(watch)
            self._streams.discard(sink.outbox)
            log.info(
                "grpc subscribe closed",
                extra={"peer": peer, "seconds": round(time.monotonic() - started, 3)},
            )
