"""Plasma's gRPC contract: proto.StreamService/Events(stream Request) returns (stream Payload).

As in Plasma (server/grpc.go): each Request replaces the stream's subscription set, an
empty set leaves the stream open and subscribed to nothing, `forceClose` ends the stream
with OK, and a client that half-closes keeps receiving until it cancels. Unlike Plasma,
topics are validated (INVALID_ARGUMENT), an event matching several topics arrives once,
a slow client is reset and dropped alone, and cachewire's optional fields carry the
event id (Payload.id) and a resume id (Request.lastEventId, honoured on the first Request).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from cachewire.v1 import plasma_pb2

from hub.brokers.base import ResetReason
from hub.core import Subscription
from hub.errors import HubError, Unavailable
from hub.events import RESET_TYPE, Event, validate_topic
from hub.grpc_api import MAX_BATCH, SHUTTING_DOWN, EncodeCache, Outbox, write

if TYPE_CHECKING:
    from hub.server import Hub

log = logging.getLogger("cachewire.hub.grpc")


def payload_message(event: Event) -> bytes:
    return plasma_pb2.Payload(
        eventType=plasma_pb2.EventType(type=event.type),
        data=event.data_json,
        id=event.id,
    ).SerializeToString()


def reset_payload(reason: ResetReason, detail: str, resume_from: str) -> bytes:
    """A Payload of type "cachewire:reset"; no id after a slow-consumer reset, as in SSE."""
    data = json.dumps({"reason": reason, "detail": detail}, separators=(",", ":"))
    return plasma_pb2.Payload(
        eventType=plasma_pb2.EventType(type=RESET_TYPE),
        data=data,
        id="" if reason == "slow_consumer" else resume_from,
    ).SerializeToString()


class PlasmaSink:
    """The fan-out sink of one Events stream (kind "grpc_plasma")."""

    kind = "grpc_plasma"

    def __init__(self, queue_size: int, encode: Callable[[Event], bytes]) -> None:
        self.outbox = Outbox(queue_size)
        self._encode = encode
        self._slow = False

    def send(self, event: Event) -> bool:
        return self.outbox.put(event)

    def send_replay(self, events: list[Event]) -> None:
        self.outbox.put_all(events)

    def reset(self, reason: ResetReason, detail: str, resume_from: str) -> None:
        if reason == "slow_consumer":
            self._slow = True
            self.outbox.clear()
        self.outbox.put_control(reset_payload(reason, detail, resume_from))

    def heartbeat(self, head_id: str) -> None:
        """Plasma's Payload has no heartbeat; gRPC keepalive finds dead peers instead."""

    def close(self) -> None:
        message = (
            f"the client fell behind its queue of {self.outbox.limit} events; reconnect"
            if self._slow
            else SHUTTING_DOWN
        )
        self.outbox.finish(Unavailable(message))

    async def messages(self) -> AsyncIterator[bytes]:
        """Encoded Payload messages, one per event (Plasma's contract has no batch)."""
        box = self.outbox
        while await box.ready():
            item = box.take(MAX_BATCH)
            if isinstance(item, bytes):
                yield item
            else:
                for event in item:
                    yield self._encode(event)
        if box.error is not None:
            raise box.error


class StreamService:
    """proto.StreamService. Methods raise HubError; grpc_server maps it to a status."""

    def __init__(self, hub: Hub, streams: set[Outbox]) -> None:
        self._hub = hub
        self._streams = streams  # open streams, ended by GrpcServer.stop
        self._encode = EncodeCache(payload_message)

    async def Events(self, requests: AsyncIterator[plasma_pb2.Request], context: Any) -> None:
        if self._hub.stopping:
            raise Unavailable(SHUTTING_DOWN)
        sink = PlasmaSink(self._hub.settings.queue_size, self._encode)
        holder: list[Subscription] = []  # the subscription, once the first Request came
        peer, started = context.peer(), time.monotonic()
        log.info("grpc plasma stream opened", extra={"peer": peer})
        self._streams.add(sink.outbox)
        reader = asyncio.create_task(self._read(requests, sink, holder))
        try:
            async for message in sink.messages():
                if not await write(context, message):
                    return
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            if holder:
                self._hub.fanout.unsubscribe(holder[0])
            self._streams.discard(sink.outbox)
            log.info(
                "grpc plasma stream closed",
                extra={"peer": peer, "seconds": round(time.monotonic() - started, 3)},
            )

    async def _read(
        self,
        requests: AsyncIterator[plasma_pb2.Request],
        sink: PlasmaSink,
        holder: list[Subscription],
    ) -> None:
        """Apply each Request; a bad one ends the stream with its error."""
        fanout = self._hub.fanout
        try:
            async for request in requests:
                if request.forceClose:
                    if holder:
                        fanout.unsubscribe(holder[0])
                    sink.outbox.finish()
                    return
                topics = frozenset(validate_topic(e.type, "event type") for e in request.events)
                if not holder:
                    holder.append(await fanout.subscribe(topics, sink, request.lastEventId or None))
                elif not holder[0].closed:
                    fanout.retopic(holder[0], topics)
        except HubError as exc:
            sink.outbox.finish(exc, discard=True)
        except Exception as exc:  # a bug: the stream ends INTERNAL, the log has the trace
            log.exception("plasma request handling failed")
            sink.outbox.finish(HubError(f"internal error: {type(exc).__name__}"), discard=True)
        # The client half-closed: as in Plasma, the stream stays open until it cancels.
