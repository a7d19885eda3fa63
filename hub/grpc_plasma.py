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
import gc
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar

import grpc
from grpc._cython import cygrpc  # grpc.aio's implementation: see StreamWriter

from cachewire.hub.auth.decide import ANONYMOUS, Principal
from cachewire.hub.auth.service import Watch
from cachewire.hub.auth.transport import grpc_credentials
from cachewire.hub.brokers.base import ResetReason
from cachewire.hub.core import Subscription
from cachewire.hub.errors import HubError, TooLarge, Unavailable
from cachewire.hub.events import RESET_TYPE, Event, validate_topic
from cachewire.hub.grpc_api import SHUTTING_DOWN, EncodeCache, Outbox, OutboxSink
from cachewire.v1 import plasma_pb2

if TYPE_CHECKING:
    from cachewire.hub.server import Hub

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


# grpcio's private coroutine that ServicerContext.write awaits, if it is the one
# StreamWriter was written against (checked once, here; otherwise StreamWriter flushes
# every message through the public API): the same signature, in a grpcio release it was
# verified with. A release outside VERIFIED_GRPCIO uses the public API until someone
# re-verifies it and widens the range (test_grpc_plasma_wire fails in CI meanwhile).
VERIFIED_GRPCIO = ((1, 85), (1, 85))  # (major, minor), inclusive
_SEND_PARAMS = ("grpc_call_wrapper", "message", "send_initial_metadata_op", "write_flag", "loop")
BUFFER_HINT = 1  # GRPC_WRITE_BUFFER_HINT, include/grpc/impl/grpc_types.h
# Most messages held back in a row: bounds what the first of a burst waits for (core also
# flushes once it holds grpc.http2.write_buffer_size bytes). Past ~32, no measurable gain.
MAX_HELD = 64


def grpcio_verified(version: str) -> bool:
    """Whether this grpcio release is one the held path was verified with."""
    try:
        major_minor = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    low, high = VERIFIED_GRPCIO
    return low <= major_minor <= high


def _private_send() -> Callable[..., Awaitable[None]] | None:
    if not grpcio_verified(grpc.__version__):
        return None
    send = getattr(cygrpc, "_send_message", None)
    write_flag = getattr(cygrpc, "WriteFlag", None)
    if send is None or not hasattr(cygrpc, "RPCState"):
        return None
    try:
        params = tuple(inspect.signature(send).parameters)
    except (TypeError, ValueError):
        return None
    if params != _SEND_PARAMS or getattr(write_flag, "buffer_hint", None) != BUFFER_HINT:
        return None
    return send  # type: ignore[no-any-return]


_SEND = _private_send()


def _call_state(context: Any) -> Any:
    """The RPCState behind a grpc.aio ServicerContext (a private attribute), or None."""
    if _SEND is None:
        return None
    found = [o for o in gc.get_referents(context) if isinstance(o, cygrpc.RPCState)]
    return found[0] if len(found) == 1 else None


class StreamWriter:
    """Writes one stream's messages, letting gRPC core coalesce those that come in a row.

    `context.write` makes gRPC core send each message to the socket at once: one
    `sendmsg` per message, which is most of what a Plasma stream costs the hub (and a
    TCP read per message for the client). Core holds a message back for the next one
    when it carries GRPC_WRITE_BUFFER_HINT, a flag grpc.aio's public API cannot set. So
    a message with another queued right behind it (`more`) goes through the private
    coroutine that `context.write` itself awaits, with the flag ("held"); a message with
    nothing behind it goes through `context.write` and flushes everything before it.
    Messages, their bytes and their order are unchanged; only their grouping into TCP
    segments changes. Where grpcio's internals differ, every message is flushed, as before.
    """

    holding: ClassVar[bool] = _SEND is not None  # False for good once a held write failed

    def __init__(self, context: Any, hold: bool = True) -> None:
        self._context = context
        self._call = _call_state(context) if hold and StreamWriter.holding else None
        self._loop = asyncio.get_running_loop()
        self._started = False  # the first message goes with the initial metadata, unheld
        self._run = 0  # messages held since the last flush
        self.written = 0
        self.held = 0  # of which held

    async def write(self, message: bytes, more: bool = False) -> bool:
        """Send one message; False when the client has gone away (its stream just ends).

        A write fails when the connection dropped before gRPC noticed the cancellation;
        it raises gRPC's internal ExecuteBatchError, no error of ours or the client's.
        """
        try:
            hold = more and self._run < MAX_HELD and self._can_hold()
            if not (hold and await self._hold(message)):
                await self._context.write(message)
                self._started, self._run = True, 0
        except Exception as exc:
            log.debug("grpc write failed: the client went away", extra={"error": repr(exc)})
            return False
        self.written += 1
        return True

    def _can_hold(self) -> bool:
        # context.done(): the status is sent; context.write would refuse, so do we.
        return self._started and self._call is not None and not self._context.done()

    async def _hold(self, message: bytes) -> bool:
        """Write with the hint; False if grpcio's internals refused (then write it plainly)."""
        try:
            await _SEND(self._call, message, None, BUFFER_HINT, self._loop)  # type: ignore[misc]
        except (TypeError, AttributeError):  # not a client's doing: grpcio changed
            log.warning("held gRPC write failed; flushing every message", exc_info=True)
            StreamWriter.holding, self._call = False, None
            return False
        self._run += 1
        self.held += 1
        return True


class PlasmaSink(OutboxSink):
    """The fan-out sink of one Events stream (kind "grpc_plasma")."""

    kind = "grpc_plasma"
    slow_hint = "the client fell behind its queue of {limit} events; reconnect"

    def reset_message(self, reason: ResetReason, detail: str, resume_from: str) -> bytes:
        return reset_payload(reason, detail, resume_from)

    def heartbeat(self, head_id: str) -> None:
        """Plasma's Payload has no heartbeat; gRPC keepalive finds dead peers instead."""

    async def batches(self) -> AsyncIterator[list[bytes]]:
        """Encoded Payload messages (one per event: Plasma's contract has no batch), in
        runs of what was queued when the writer came round, at most MAX_HELD at a time:
        one wake-up and one take per run, not per message."""
        box, encode = self.outbox, self._encode
        while await box.ready():
            yield [m if isinstance(m, bytes) else encode(m) for m in box.take_all(MAX_HELD)]
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
        auth = self._hub.auth
        principal = ANONYMOUS  # Plasma clients send no metadata: public types only
        if auth is not None:
            principal = await auth.authenticate(grpc_credentials(context.invocation_metadata()))
        sink = PlasmaSink(self._hub.settings.queue_size, self._encode)
        watch = None if auth is None else auth.watch(principal, frozenset(), sink.outbox.finish)
        holder: list[Subscription] = []  # the subscription, once the first Request came
        peer, started = context.peer(), time.monotonic()
        log.info("grpc plasma stream opened", extra={"peer": peer})
        writer = StreamWriter(context, self._hub.settings.grpc_held_writes == "auto")
        box = sink.outbox
        self._streams.add(box)
        reader = asyncio.create_task(self._read(requests, sink, holder, principal, watch))
        try:
            async for batch in sink.batches():
                last = len(batch) - 1
                for i, message in enumerate(batch):
                    if not await writer.write(message, more=i < last or bool(box.items)):
                        return
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            if holder:
                self._hub.fanout.unsubscribe(holder[0])
            if auth is not None and watch is not None:
                auth.unwatch(watch)
            self._streams.discard(sink.outbox)
            log.info(
                "grpc plasma stream closed",
                extra={
                    "peer": peer,
                    "seconds": round(time.monotonic() - started, 3),
                    "messages": writer.written,
                    "held": writer.held,
                },
            )

    async def _read(
        self,
        requests: AsyncIterator[plasma_pb2.Request],
        sink: PlasmaSink,
        holder: list[Subscription],
        principal: Principal,
        watch: Watch | None,
    ) -> None:
        """Apply each Request; a bad one (or one not granted) ends the stream with its error."""
        fanout, auth = self._hub.fanout, self._hub.auth
        try:
            async for request in requests:
                if request.forceClose:
                    if holder:
                        fanout.unsubscribe(holder[0])
                    sink.outbox.finish()
                    return
                limit = self._hub.settings.max_topics
                if len(request.events) > limit:
                    raise TooLarge(
                        f"{len(request.events)} event types in one subscription, more than "
                        f"the limit of {limit} (--max-topics)"
                    )
                topics = frozenset(validate_topic(e.type, "event type") for e in request.events)
                if auth is not None and watch is not None:
                    auth.authorize(principal, "subscribe", topics)
                    watch.types = topics
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
