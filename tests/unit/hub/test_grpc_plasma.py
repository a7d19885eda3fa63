"""proto.StreamService/Events, driven by a client generated from Plasma's original contract."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from cachewire.hub.brokers.memory import MemoryBroker
from cachewire.hub.server import Hub
from cachewire.v1 import hub_pb2, hub_pb2_grpc, plasma_pb2, plasma_pb2_grpc
from tests.plasma_stub import stream_pb2, stream_pb2_grpc
from tests.servers import wait_until

TIMEOUT = 20.0


class PlasmaClient:
    """A Plasma client: one bidi Events stream, fed Requests as the application sends them."""

    def __init__(self, channel: grpc.aio.Channel, stub: Any = stream_pb2_grpc) -> None:
        self._requests: asyncio.Queue[Any] = asyncio.Queue()
        self.call = stub.StreamServiceStub(channel).Events(self._iterate())

    async def _iterate(self) -> AsyncIterator[Any]:
        while (request := await self._requests.get()) is not None:
            yield request

    def subscribe(self, *types: str) -> None:
        self._requests.put_nowait(
            stream_pb2.Request(Events=[stream_pb2.EventType(type=t) for t in types])
        )

    def send(self, request: Any) -> None:
        self._requests.put_nowait(request)

    def half_close(self) -> None:
        self._requests.put_nowait(None)

    async def read(self) -> Any:
        payload = await asyncio.wait_for(self.call.read(), TIMEOUT)
        assert payload is not grpc.aio.EOF, "the stream ended"
        return payload


@pytest.fixture
async def hub(hub_factory: Callable[..., Any]) -> Hub:
    return await hub_factory()


@pytest.fixture
async def channel(hub: Hub) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{hub.grpc_port}") as channel:
        yield channel


async def publish(channel: grpc.aio.Channel, *types: str, data: str = "") -> list[str]:
    response = await hub_pb2_grpc.HubStub(channel).Publish(
        hub_pb2.PublishRequest(events=[hub_pb2.EventInput(type=t, data=data) for t in types]),
        timeout=TIMEOUT,
    )
    return list(response.ids)


async def topics_become(hub: Hub, *topics: str) -> None:
    """Wait until the hub has applied a Request (the stream's topics are these)."""

    def applied() -> bool:
        subs = list(hub.fanout.subscriptions("grpc_plasma"))
        return len(subs) == 1 and subs[0].topics == frozenset(topics)

    await wait_until(applied, TIMEOUT, f"the hub's topics to become {topics}")


async def test_subscribe_and_receive_plasmas_payload(hub: Hub, channel: grpc.aio.Channel) -> None:
    client = PlasmaClient(channel)
    client.subscribe("program:1234")
    await hub.fanout.wait_subscribers(1, "grpc_plasma")
    await publish(channel, "program:1234:views", data='{"views": 10}')
    payload = await client.read()
    assert payload.eventType.type == "program:1234:views"
    assert json.loads(payload.data) == {"views": 10}
    client.call.cancel()


async def test_each_request_replaces_the_subscription_set(
    hub: Hub, channel: grpc.aio.Channel
) -> None:
    client = PlasmaClient(channel)
    client.subscribe("a")
    await hub.fanout.wait_subscribers(1, "grpc_plasma")
    client.subscribe("b")
    await topics_become(hub, "b")
    await publish(channel, "a:1", "b:1")
    assert (await client.read()).eventType.type == "b:1"
    client.call.cancel()


async def test_an_empty_set_unsubscribes_and_keeps_the_stream_open(
    hub: Hub, channel: grpc.aio.Channel
) -> None:
    client = PlasmaClient(channel)
    client.subscribe("a")
    await hub.fanout.wait_subscribers(1, "grpc_plasma")
    client.subscribe()
    await topics_become(hub)
    await publish(channel, "a:ignored")
    client.subscribe("c")  # the stream still works: the next payload is c, not a
    await topics_become(hub, "c")
    await publish(channel, "c:1")
    assert (await client.read()).eventType.type == "c:1"
    client.call.cancel()


async def test_force_close_ends_the_stream_with_ok(hub: Hub, channel: grpc.aio.Channel) -> None:
    client = PlasmaClient(channel)
    client.subscribe("a")
    await hub.fanout.wait_subscribers(1, "grpc_plasma")
    client.send(stream_pb2.Request(forceClose=True))
    assert await asyncio.wait_for(client.call.read(), TIMEOUT) is grpc.aio.EOF
    assert await client.call.code() == grpc.StatusCode.OK
    assert hub.fanout.count("grpc_plasma") == 0


async def test_overlapping_topics_deliver_an_event_once(
    hub: Hub, channel: grpc.aio.Channel
) -> None:
    client = PlasmaClient(channel)
    client.subscribe("program", "program:1234")
    await hub.fanout.wait_subscribers(1, "grpc_plasma")
    await publish(channel, "program:1234:views", "program:end")
    assert [(await client.read()).eventType.type for _ in range(2)] == [
        "program:1234:views",
        "program:end",
    ]
    client.call.cancel()


async def test_a_client_that_half_closes_keeps_receiving(
    hub: Hub, channel: grpc.aio.Channel
) -> None:
    """As Plasma does: the end of the Requests is not the end of the Payloads."""
    client = PlasmaClient(channel)
    client.subscribe("a")
    client.half_close()
    await hub.fanout.wait_subscribers(1, "grpc_plasma")
    await publish(channel, "a:1")
    assert (await client.read()).eventType.type == "a:1"
    client.call.cancel()


@pytest.mark.parametrize("topic", ["a::b", "", ":a", "x" * 300])
async def test_an_invalid_topic_ends_the_stream_invalid_argument(
    channel: grpc.aio.Channel, topic: str
) -> None:
    client = PlasmaClient(channel)
    client.subscribe("ok", topic)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.read()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("event type")


async def test_a_cachewire_client_sees_ids_and_resumes_with_last_event_id(
    hub: Hub, channel: grpc.aio.Channel
) -> None:
    """cachewire's optional fields: Payload.id, and Request.lastEventId to resume."""
    ids = await publish(channel, "a:1", "a:2", "b:1", "a:3")
    client = PlasmaClient(channel, stub=plasma_pb2_grpc)
    client.send(plasma_pb2.Request(events=[plasma_pb2.EventType(type="a")], lastEventId=ids[0]))
    replayed = [await client.read() for _ in range(2)]
    assert [(p.id, p.eventType.type) for p in replayed] == [(ids[1], "a:2"), (ids[3], "a:3")]
    [live] = await publish(channel, "a:4")
    assert (await client.read()).id == live
    client.call.cancel()


async def test_a_resume_that_cannot_be_served_sends_a_reset_payload(
    hub_factory: Callable[..., Any],
) -> None:
    hub = await hub_factory(broker=MemoryBroker(epoch="now"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{hub.grpc_port}") as channel:
        client = PlasmaClient(channel, stub=plasma_pb2_grpc)
        client.send(
            plasma_pb2.Request(events=[plasma_pb2.EventType(type="a")], lastEventId="before-7")
        )
        reset = await client.read()
        assert reset.eventType.type == "cachewire:reset"
        assert json.loads(reset.data)["reason"] == "epoch_changed"
        assert reset.id == hub.broker.head_id()
        client.call.cancel()


async def test_a_client_that_cancels_is_unsubscribed_without_error_logs(
    hub: Hub, channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    client = PlasmaClient(channel)
    client.subscribe("a")
    await hub.fanout.wait_subscribers(1, "grpc_plasma")
    client.call.cancel()
    await wait_until(lambda: hub.fanout.count("grpc_plasma") == 0, TIMEOUT, "stream closed")
    assert any(r.getMessage() == "grpc plasma stream closed" for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
