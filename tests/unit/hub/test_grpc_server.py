"""The hub's gRPC server: binding, health, reflection, shutdown, dropped connections."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cachewire.hub.brokers.memory import MemoryBroker
from cachewire.hub.server import Hub
from cachewire.hub.settings import HubSettings
from cachewire.v1 import hub_pb2, hub_pb2_grpc
from tests.plasma_stub import stream_pb2, stream_pb2_grpc
from tests.servers import wait_until

TIMEOUT = 20.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class SwitchableBroker(MemoryBroker):
    """A memory broker whose readiness a test turns off (as a Redis outage would)."""

    up = True

    def ready(self) -> bool:
        return self.up


@pytest.fixture
async def stopped_by_test() -> AsyncIterator[list[Hub]]:
    """Hubs that a test stops itself; stopped here only if the test failed first."""
    hubs: list[Hub] = []
    yield hubs
    for hub in hubs:
        if not hub.stopping:
            await hub.stop(grace=0.5)


def channel_to(hub: Hub) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{hub.grpc_port}")


async def test_port_zero_binds_an_ephemeral_port(hub_factory: Callable[..., Any]) -> None:
    hub = await hub_factory()
    assert hub.grpc_port and hub.grpc_port > 0


async def test_a_taken_port_is_an_os_error_naming_the_address(stopped_by_test: list[Hub]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        hub = Hub(HubSettings(http_port=0, grpc_port=port))
        stopped_by_test.append(hub)
        with pytest.raises(OSError, match=f"gRPC cannot listen on 127.0.0.1:{port}"):
            await hub.start()


async def test_health_serves_while_the_broker_is_ready(hub_factory: Callable[..., Any]) -> None:
    broker = SwitchableBroker()
    hub = await hub_factory(broker=broker)
    async with channel_to(hub) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "cachewire.v1.Hub", "proto.StreamService"):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == SERVING, service
        broker.up = False
        answer = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert answer.status == NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await health.Check(health_pb2.HealthCheckRequest(service="no.Such"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_and_describes_the_services(hub_factory: Callable[..., Any]) -> None:
    hub = await hub_factory()
    async with channel_to(hub) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="cachewire.v1.Hub"),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="proto.StreamService"),
        ]
        answers = [a async for a in stub.ServerReflectionInfo(iter(requests))]
    listed = {s.name for s in answers[0].list_services_response.service}
    assert listed == {
        "cachewire.v1.Hub",
        "proto.StreamService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    assert answers[1].file_descriptor_response.file_descriptor_proto
    assert answers[2].file_descriptor_response.file_descriptor_proto


async def test_stop_ends_every_stream_unavailable_and_health_says_not_serving(
    stopped_by_test: list[Hub],
) -> None:
    hub = Hub(HubSettings(http_port=0, grpc_port=0, subscribe_heartbeat=30.0))
    stopped_by_test.append(hub)
    await hub.start()
    async with channel_to(hub) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert (await watch.read()).status == SERVING
        subscribe = hub_pb2_grpc.HubStub(channel).Subscribe(hub_pb2.SubscribeRequest(topics=["a"]))
        assert (await subscribe.read()).HasField("heartbeat")
        requests: asyncio.Queue[stream_pb2.Request] = asyncio.Queue()
        plasma = stream_pb2_grpc.StreamServiceStub(channel).Events(queue_iter(requests))
        requests.put_nowait(stream_pb2.Request(Events=[stream_pb2.EventType(type="a")]))
        idle = stream_pb2_grpc.StreamServiceStub(channel).Events(queue_iter(asyncio.Queue()))
        await hub.fanout.wait_subscribers(1, "grpc_plasma")
        await idle.wait_for_connection()

        stopping = asyncio.create_task(hub.stop(grace=10))
        assert (await asyncio.wait_for(watch.read(), TIMEOUT)).status == NOT_SERVING
        for call in (subscribe, plasma, idle):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await asyncio.wait_for(call.read(), TIMEOUT)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "reconnect" in (err.value.details() or "")
        await asyncio.wait_for(stopping, TIMEOUT)


async def queue_iter(queue: asyncio.Queue[stream_pb2.Request]) -> AsyncIterator[Any]:
    while True:
        yield await queue.get()


async def test_a_connection_dropped_mid_write_leaves_no_error_in_the_log(
    hub_factory: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    hub = await hub_factory(queue_size=100_000, subscribe_heartbeat=30.0)
    async with channel_to(hub) as publisher:
        api = hub_pb2_grpc.HubStub(publisher)
        async with channel_to(hub) as reader:
            stuck = hub_pb2_grpc.HubStub(reader).Subscribe(hub_pb2.SubscribeRequest(topics=["t"]))
            await hub.fanout.wait_subscribers(1, "grpc")
            [sub] = hub.fanout.subscriptions("grpc")
            data = '"' + "x" * 16_000 + '"'
            # Publish until the hub's writer is stuck: the client reads nothing, so its
            # socket and HTTP/2 window fill and events stay queued at the hub.
            for _ in range(2000):
                await api.Publish(
                    hub_pb2.PublishRequest(events=[hub_pb2.EventInput(type="t", data=data)] * 20)
                )
                if sub.sink.outbox.events > 0:  # type: ignore[attr-defined]
                    break
            assert sub.sink.outbox.events > 0  # type: ignore[attr-defined]
            del stuck
        # The reader's channel is closed with the write in flight.
        await wait_until(lambda: hub.fanout.count("grpc") == 0, TIMEOUT, "the stream's finally")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
