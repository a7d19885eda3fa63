"""gRPC limits over real channels: topics per subscription, streams per connection,
Subscribe messages capped by bytes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from cachewire.hub.server import Hub
from cachewire.v1 import hub_pb2, hub_pb2_grpc, plasma_pb2, plasma_pb2_grpc
from tests.unit.hub.test_grpc_subscribe import TIMEOUT, next_of


async def test_subscribe_with_too_many_topics_is_invalid_argument(
    hub_factory: Callable[..., Any],
) -> None:
    hub: Hub = await hub_factory(max_topics=3)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{hub.grpc_port}") as channel:
        call = hub_pb2_grpc.HubStub(channel).Subscribe(
            hub_pb2.SubscribeRequest(topics=["a", "b", "c", "d"])
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(call.read(), TIMEOUT)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "more than the limit of 3 (--max-topics)" in (err.value.details() or "")
        plasma = plasma_pb2_grpc.StreamServiceStub(channel).Events()
        types = [plasma_pb2.EventType(type=t) for t in "abcd"]
        await plasma.write(plasma_pb2.Request(events=types))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(plasma.read(), TIMEOUT)
        assert "(--max-topics)" in (err.value.details() or "")
    assert hub.fanout.count() == 0


async def test_streams_past_max_streams_wait_for_a_free_one(
    hub_factory: Callable[..., Any],
) -> None:
    """With --max-streams 2 a third Subscribe on the same connection is not served until
    one of the first two ends."""
    hub: Hub = await hub_factory(max_streams=2, subscribe_heartbeat=30.0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{hub.grpc_port}") as channel:
        api = hub_pb2_grpc.HubStub(channel)
        calls = [api.Subscribe(hub_pb2.SubscribeRequest(topics=["t"])) for _ in range(3)]
        firsts = {asyncio.ensure_future(next_of(c, "heartbeat")): c for c in calls}
        done, waiting = await asyncio.wait(
            firsts, timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        while len(done) < 2:
            more, waiting = await asyncio.wait(
                waiting, timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
            done |= more
        assert len(done) == 2 and hub.fanout.count("grpc") == 2
        firsts[next(iter(done))].cancel()
        await asyncio.wait_for(next(iter(waiting)), TIMEOUT)  # the third is served now
        for call in calls:
            call.cancel()


async def test_a_replay_leaves_in_messages_under_the_batch_byte_cap(
    hub_factory: Callable[..., Any],
) -> None:
    """--subscribe-batch-bytes splits a resume's replay; an event over it leaves alone."""
    hub: Hub = await hub_factory(subscribe_batch_bytes=10_000, subscribe_heartbeat=30.0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{hub.grpc_port}") as channel:
        api = hub_pb2_grpc.HubStub(channel)
        before = hub.broker.head_id()
        small = [hub_pb2.EventInput(type="t", data='"' + "x" * 1000 + '"') for _ in range(30)]
        big = hub_pb2.EventInput(type="t", data='"' + "y" * 20_000 + '"')
        await api.Publish(hub_pb2.PublishRequest(events=[*small, big]))
        call = api.Subscribe(hub_pb2.SubscribeRequest(topics=["t"], resume_from=before))
        sizes = []
        got = 0
        while got < 31:
            message = await next_of(call, "events")
            sizes.append(message.ByteSize())
            got += len(message.events.events)
        assert max(sizes[:-1]) <= 10_000 and sizes[-1] > 20_000
        assert len(sizes) >= 4
        call.cancel()
