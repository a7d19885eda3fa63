"""Plasma's Events stream at the wire: encoded once, byte-exact, held back only in a burst."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from cachewire.hub import grpc_plasma
from cachewire.hub.events import Event
from cachewire.hub.grpc_api import EncodeCache
from cachewire.hub.grpc_plasma import MAX_HELD, StreamWriter, payload_message
from cachewire.hub.server import Hub
from cachewire.v1 import hub_pb2, hub_pb2_grpc, plasma_pb2
from tests.plasma_stub import stream_pb2, stream_pb2_grpc
from tests.servers import wait_until

TIMEOUT = 20.0
EVENTS_METHOD = "/proto.StreamService/Events"


def protobufs_own(event_id: str, type: str, data: str) -> bytes:
    """What protobuf itself encodes for a Payload: the bytes the hub must send."""
    return plasma_pb2.Payload(
        eventType=plasma_pb2.EventType(type=type), data=data, id=event_id
    ).SerializeToString()


@pytest.mark.parametrize(
    ("type", "data"),
    [
        ("a", "null"),
        ("program:1234:views", '{"views":10}'),
        ("x" * 255, '"' + "é✓" * 100 + '"'),  # multi-byte UTF-8; lengths past one varint byte
        ("t", '"' + "y" * 20_000 + '"'),  # a length of three varint bytes
    ],
)
def test_encode_once_bytes_equal_protobufs_own_encoding(type: str, data: str) -> None:
    event = Event("ep-300", (300, 0), type, data)
    cache = EncodeCache(payload_message)
    encoded = cache(event)
    assert encoded == protobufs_own("ep-300", type, data)
    assert cache(event) is encoded  # encoded once: every subscriber gets this very object
    plasma = stream_pb2.Payload.FromString(encoded)  # Plasma's own contract reads it
    assert (plasma.eventType.type, plasma.data) == (type, data)


@pytest.fixture
async def hub(hub_factory: Callable[..., Any]) -> Hub:
    return await hub_factory(queue_size=100_000)


@pytest.fixture
async def channel(hub: Hub) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{hub.grpc_port}") as channel:
        yield channel


async def until_closed(requests: asyncio.Event, first: Any) -> AsyncIterator[Any]:
    """One Request, then keep the request side open (as Plasma clients do)."""
    yield first
    await requests.wait()


def raw_events_call(channel: grpc.aio.Channel, topic: str, done: asyncio.Event) -> Any:
    """An Events call whose Payloads arrive as the undecoded bytes of each message."""
    events = channel.stream_stream(
        EVENTS_METHOD, request_serializer=plasma_pb2.Request.SerializeToString
    )
    request = plasma_pb2.Request(events=[plasma_pb2.EventType(type=topic)])
    return events(until_closed(done, request))


async def publish_burst(channel: grpc.aio.Channel, n: int, type: str = "t:x") -> list[str]:
    """n events in one Publish: the hub queues them all for a subscriber at once."""
    response = await hub_pb2_grpc.HubStub(channel).Publish(
        hub_pb2.PublishRequest(
            events=[hub_pb2.EventInput(type=type, data=f'{{"n":{i}}}') for i in range(n)]
        ),
        timeout=TIMEOUT,
    )
    return list(response.ids)


async def read_n(call: Any, n: int) -> list[Any]:
    async with asyncio.timeout(TIMEOUT):
        return [await call.read() for _ in range(n)]


def closed_records(caplog: pytest.LogCaptureFixture, count: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "grpc plasma stream closed"][:count]


async def stream_closed(hub: Hub) -> None:
    """Wait until the hub has run every Plasma stream's cleanup (its close log line)."""
    await wait_until(lambda: hub.fanout.count("grpc_plasma") == 0, TIMEOUT, "streams closed")


async def test_a_burst_reaches_every_subscriber_byte_exact_in_order_and_held(
    hub: Hub, channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    """Held writes change TCP segments only: every message is protobuf's own encoding."""
    caplog.set_level(logging.INFO, logger="cachewire.hub.grpc")
    done = asyncio.Event()
    calls = [raw_events_call(channel, "t", done) for _ in range(2)]
    await hub.fanout.wait_subscribers(2, "grpc_plasma")
    n = 3 * MAX_HELD + 7  # several flushes, and a run cut short by the end of the burst
    ids = await publish_burst(channel, n)
    expected = [protobufs_own(ids[i], "t:x", f'{{"n":{i}}}') for i in range(n)]
    for call in calls:
        assert await read_n(call, n) == expected
    # Nothing is held back once the burst is over: a lone event arrives on its own.
    [lone] = await publish_burst(channel, 1, "t:lone")
    for call in calls:
        assert await read_n(call, 1) == [protobufs_own(lone, "t:lone", '{"n":0}')]
        call.cancel()
    done.set()
    await stream_closed(hub)
    for record in closed_records(caplog, 2):
        assert record.__dict__["messages"] == n + 1
        assert record.__dict__["held"] > 0, "grpcio's internals changed: see StreamWriter"


async def test_plasmas_own_client_reads_a_burst_unchanged(
    hub: Hub, channel: grpc.aio.Channel
) -> None:
    requests: asyncio.Queue[Any] = asyncio.Queue()

    async def iterate() -> AsyncIterator[Any]:
        while (request := await requests.get()) is not None:
            yield request

    call = stream_pb2_grpc.StreamServiceStub(channel).Events(iterate())
    requests.put_nowait(stream_pb2.Request(Events=[stream_pb2.EventType(type="t")]))
    await hub.fanout.wait_subscribers(1, "grpc_plasma")
    n = 2 * MAX_HELD + 1
    await publish_burst(channel, n)
    payloads = await read_n(call, n)
    assert [(p.eventType.type, p.data) for p in payloads] == [
        ("t:x", f'{{"n":{i}}}') for i in range(n)
    ]
    call.cancel()


async def test_without_grpcio_internals_every_message_is_flushed(
    hub: Hub,
    channel: grpc.aio.Channel,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fallback a grpcio upgrade would select: public API only, same bytes."""
    monkeypatch.setattr(StreamWriter, "holding", False)
    caplog.set_level(logging.INFO, logger="cachewire.hub.grpc")
    done = asyncio.Event()
    call = raw_events_call(channel, "t", done)
    await hub.fanout.wait_subscribers(1, "grpc_plasma")
    ids = await publish_burst(channel, 50)
    assert await read_n(call, 50) == [
        protobufs_own(ids[i], "t:x", f'{{"n":{i}}}') for i in range(50)
    ]
    call.cancel()
    done.set()
    await stream_closed(hub)
    [record] = closed_records(caplog, 1)
    assert (record.__dict__["messages"], record.__dict__["held"]) == (50, 0)


async def test_held_writes_off_uses_the_public_api_only(
    hub_factory: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """`--grpc-held-writes off`: the public fallback, chosen by the operator."""
    hub = await hub_factory(queue_size=100_000, grpc_held_writes="off")
    caplog.set_level(logging.INFO, logger="cachewire.hub.grpc")
    done = asyncio.Event()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{hub.grpc_port}") as channel:
        call = raw_events_call(channel, "t", done)
        await hub.fanout.wait_subscribers(1, "grpc_plasma")
        ids = await publish_burst(channel, 3 * MAX_HELD)
        assert await read_n(call, 3 * MAX_HELD) == [
            protobufs_own(ids[i], "t:x", f'{{"n":{i}}}') for i in range(3 * MAX_HELD)
        ]
        call.cancel()
        done.set()
        await stream_closed(hub)
    [record] = closed_records(caplog, 1)
    assert (record.__dict__["messages"], record.__dict__["held"]) == (3 * MAX_HELD, 0)


@pytest.mark.parametrize(
    ("version", "verified"),
    [("1.85.3", True), ("1.85.0rc1", True), ("1.84.0", False), ("1.86.0", False), ("x", False)],
)
def test_the_private_call_is_used_only_with_a_verified_grpcio(
    version: str, verified: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fence CI enforces: outside VERIFIED_GRPCIO the hub uses the public API (and the
    burst test above, which needs held writes, fails until the range is re-verified)."""
    assert grpc_plasma.grpcio_verified(version) is verified
    monkeypatch.setattr(grpc, "__version__", version)
    assert (grpc_plasma._private_send() is not None) is verified


async def test_a_held_write_refused_by_grpcio_falls_back_and_loses_nothing(
    hub: Hub,
    channel: grpc.aio.Channel,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def changed_signature(*args: Any) -> None:
        raise TypeError("_send_message() takes 6 positional arguments but 5 were given")

    monkeypatch.setattr(grpc_plasma, "_SEND", changed_signature)
    monkeypatch.setattr(StreamWriter, "holding", True)  # restored after the test
    done = asyncio.Event()
    call = raw_events_call(channel, "t", done)
    await hub.fanout.wait_subscribers(1, "grpc_plasma")
    ids = await publish_burst(channel, 20)
    assert await read_n(call, 20) == [
        protobufs_own(ids[i], "t:x", f'{{"n":{i}}}') for i in range(20)
    ]
    assert StreamWriter.holding is False
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "held gRPC write failed; flushing every message"
    ]
    call.cancel()
    done.set()


async def test_a_connection_dropped_mid_burst_leaves_no_error_in_the_log(
    hub: Hub, channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{hub.grpc_port}") as reader:
        done = asyncio.Event()
        stuck = raw_events_call(reader, "t", done)
        await hub.fanout.wait_subscribers(1, "grpc_plasma")
        [sub] = hub.fanout.subscriptions("grpc_plasma")
        big = '"' + "x" * 16_000 + '"'
        # The client reads nothing: its socket and HTTP/2 window fill, the hub's writer
        # waits in the middle of a burst, and events stay queued behind it.
        for _ in range(2000):
            await hub_pb2_grpc.HubStub(channel).Publish(
                hub_pb2.PublishRequest(events=[hub_pb2.EventInput(type="t", data=big)] * 20),
                timeout=TIMEOUT,
            )
            if sub.sink.outbox.events > 0:  # type: ignore[attr-defined]
                break
        assert sub.sink.outbox.events > 0  # type: ignore[attr-defined]
        del stuck
        done.set()
    # The reader's channel is closed with writes in flight.
    await stream_closed(hub)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
