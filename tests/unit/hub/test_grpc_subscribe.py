"""cachewire.v1.Hub/Subscribe against an in-process hub, over a real gRPC channel."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from cachewire.hub.brokers.memory import MemoryBroker
from cachewire.hub.server import Hub
from cachewire.v1 import hub_pb2, hub_pb2_grpc
from tests.servers import wait_until

TIMEOUT = 20.0
Stream = Any  # grpc.aio.UnaryStreamCall[SubscribeRequest, SubscribeResponse]


@pytest.fixture
async def hub(hub_factory: Callable[..., Any]) -> Hub:
    return await hub_factory(subscribe_heartbeat=30.0)  # only the first heartbeat, at once


async def channel_to(hub: Hub) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{hub.grpc_port}")


@pytest.fixture
async def api(hub: Hub) -> AsyncIterator[hub_pb2_grpc.HubStub]:
    async with await channel_to(hub) as channel:
        yield hub_pb2_grpc.HubStub(channel)


async def next_message(call: Stream) -> hub_pb2.SubscribeResponse:
    message = await asyncio.wait_for(call.read(), TIMEOUT)
    assert message is not grpc.aio.EOF, "the stream ended"
    return message  # type: ignore[no-any-return]


async def next_of(call: Stream, kind: str) -> hub_pb2.SubscribeResponse:
    """The next message of one kind ("events", "heartbeat", "reset"), skipping heartbeats."""
    while True:
        message = await next_message(call)
        if message.WhichOneof("message") == kind:
            return message
        assert message.HasField("heartbeat"), (
            f"{kind} expected, not {message.WhichOneof('message')}"
        )


async def read_events(call: Stream, n: int) -> tuple[list[hub_pb2.Event], int]:
    """n events (skipping heartbeats), and how many messages carried them."""
    events: list[hub_pb2.Event] = []
    messages = 0
    while len(events) < n:
        message = await next_of(call, "events")
        events.extend(message.events.events)
        messages += 1
    assert len(events) == n, [e.id for e in events]
    return events, messages


async def subscribe(api: hub_pb2_grpc.HubStub, *topics: str, resume_from: str = "") -> Stream:
    return api.Subscribe(hub_pb2.SubscribeRequest(topics=topics, resume_from=resume_from))


async def publish(api: hub_pb2_grpc.HubStub, *types: str, **fields: Any) -> list[str]:
    response = await api.Publish(
        hub_pb2.PublishRequest(events=[hub_pb2.EventInput(type=t, **fields) for t in types]),
        timeout=TIMEOUT,
    )
    return list(response.ids)


async def test_first_message_is_a_heartbeat_with_the_high_water_id(
    hub: Hub, api: hub_pb2_grpc.HubStub
) -> None:
    """Once live, the client learns that it is subscribed and where the stream stands."""
    [head] = await publish(api, "elsewhere")
    call = await subscribe(api, "user")
    first = await next_message(call)
    assert first.heartbeat.high_water_id == head == hub.broker.head_id()
    call.cancel()


async def test_live_event_arrives_with_every_field(api: hub_pb2_grpc.HubStub) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    call = await subscribe(api, "user")
    await next_of(call, "heartbeat")
    before = time.time()
    response = await api.Publish(
        hub_pb2.PublishRequest(
            events=[
                hub_pb2.EventInput(
                    type="user:42",
                    data='{"name": "x"}',
                    keys=["user:42"],
                    prefixes=["feed:42:"],
                    flush=True,
                )
            ]
        ),
        metadata=(("traceparent", traceparent), ("tracestate", "k=v")),
    )
    after = time.time()
    [event], _ = await read_events(call, 1)
    assert event.id == response.ids[0]
    assert (event.type, event.data, list(event.keys), list(event.prefixes), event.flush) == (
        "user:42",
        '{"name":"x"}',
        ["user:42"],
        ["feed:42:"],
        True,
    )
    assert before * 1e6 - 1 <= event.published_at_unix_micros <= after * 1e6 + 1
    assert (event.traceparent, event.tracestate) == (traceparent, "k=v")
    call.cancel()


async def test_resume_after_an_id_has_no_gap_and_no_duplicate_at_the_seam(
    api: hub_pb2_grpc.HubStub,
) -> None:
    first = await publish(api, "a:1", "a:2", "a:3")
    call = await subscribe(api, "a", resume_from=first[0])
    got, _ = await read_events(call, 2)
    assert [e.id for e in got] == first[1:]
    call.cancel()  # disconnected; more is published meanwhile
    missed = await publish(api, "a:4", "other", "a:5")
    call = await subscribe(api, "a", resume_from=got[-1].id)
    replayed, _ = await read_events(call, 2)
    assert [e.id for e in replayed] == [missed[0], missed[2]]
    live = await publish(api, "a:6")
    assert [e.id for e in (await read_events(call, 1))[0]] == live
    call.cancel()


async def test_resume_with_an_id_of_another_epoch_resets(hub_factory: Callable[..., Any]) -> None:
    """The hub restarted with the memory broker: the old id means nothing, so: a reset."""
    old = await hub_factory(broker=MemoryBroker(epoch="old"))
    new = await hub_factory(broker=MemoryBroker(epoch="new"), subscribe_heartbeat=30.0)
    async with await channel_to(old) as c_old, await channel_to(new) as c_new:
        [old_id] = await publish(hub_pb2_grpc.HubStub(c_old), "a")
        api = hub_pb2_grpc.HubStub(c_new)
        await publish(api, "a")
        call = await subscribe(api, "a", resume_from=old_id)
        reset = (await next_message(call)).reset
        assert reset.reason == hub_pb2.RESET_REASON_EPOCH_CHANGED
        assert reset.resume_from == new.broker.head_id() == "new-1"
        assert "old" in reset.detail
        assert (await next_message(call)).heartbeat.high_water_id == "new-1"
        live = await publish(api, "a:x")
        assert [e.id for e in (await read_events(call, 1))[0]] == live
        call.cancel()


async def test_resume_from_an_id_older_than_history_resets(hub_factory: Callable[..., Any]) -> None:
    hub = await hub_factory(history=5, subscribe_heartbeat=30.0)
    async with await channel_to(hub) as channel:
        api = hub_pb2_grpc.HubStub(channel)
        ids = await publish(api, *["a"] * 10)
        call = await subscribe(api, "a", resume_from=ids[0])
        reset = (await next_message(call)).reset
        assert reset.reason == hub_pb2.RESET_REASON_HISTORY_EXPIRED
        assert reset.resume_from == ids[-1]
        live = await publish(api, "a")
        assert [e.id for e in (await read_events(call, 1))[0]] == live
        call.cancel()


async def test_resume_from_a_malformed_id_resets_unknown_id(api: hub_pb2_grpc.HubStub) -> None:
    call = await subscribe(api, "a", resume_from="not-an-id-at-all")
    assert (await next_message(call)).reset.reason == hub_pb2.RESET_REASON_UNKNOWN_ID
    call.cancel()


async def test_heartbeats_carry_the_high_water_id(hub_factory: Callable[..., Any]) -> None:
    """An idle subscriber learns of events it was not sent (another topic here)."""
    hub = await hub_factory(subscribe_heartbeat=0.05)
    async with await channel_to(hub) as channel:
        api = hub_pb2_grpc.HubStub(channel)
        call = await subscribe(api, "quiet")
        await next_of(call, "heartbeat")
        [elsewhere] = await publish(api, "busy")
        while (await next_of(call, "heartbeat")).heartbeat.high_water_id != elsewhere:
            pass
        call.cancel()


async def test_events_published_together_arrive_in_order_in_few_messages(
    api: hub_pb2_grpc.HubStub,
) -> None:
    call = await subscribe(api, "load")
    await next_of(call, "heartbeat")
    ids = await publish(api, *[f"load:{i}" for i in range(1000)])  # --max-events each
    ids += await publish(api, *[f"load:{i}" for i in range(1000, 2000)])
    events, messages = await read_events(call, 2000)
    assert [e.id for e in events] == ids
    assert [e.type for e in events] == [f"load:{i}" for i in range(2000)]
    assert messages < 2000 / 10, messages  # batched (at most 1000 per message)
    call.cancel()


async def test_a_slow_subscriber_is_reset_and_dropped_alone(
    hub_factory: Callable[..., Any],
) -> None:
    hub = await hub_factory(queue_size=100, subscribe_heartbeat=30.0)
    async with await channel_to(hub) as c_slow, await channel_to(hub) as c_good:
        slow = await subscribe(hub_pb2_grpc.HubStub(c_slow), "t")  # never reads (for now)
        api = hub_pb2_grpc.HubStub(c_good)
        good = await subscribe(api, "t")
        await hub.fanout.wait_subscribers(2, "grpc")
        await next_of(good, "heartbeat")
        data = '"' + "x" * 16_000 + '"'
        sent: list[str] = []
        received: list[str] = []
        # Fill the slow one's socket, HTTP/2 window and then its queue; the good one keeps up.
        for _ in range(2000):
            sent += await publish(api, *["t"] * 20, data=data)
            received += [e.id for e in (await read_events(good, 20))[0]]
            if hub.fanout.slow_drops["grpc"]:
                break
        assert hub.fanout.slow_drops["grpc"] == 1
        assert hub.fanout.count("grpc") == 1
        # The slow one finds, after what was already on its way, a reset, then UNAVAILABLE.
        message = await next_message(slow)
        while not message.HasField("reset"):
            message = await next_message(slow)
        reset = message.reset
        assert reset.reason == hub_pb2.RESET_REASON_SLOW_CONSUMER
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await next_message(slow)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "fell behind its queue of 100 events" in (ended.value.details() or "")
        # The good one got everything, in order, and goes on.
        sent += await publish(api, "t")
        received += [e.id for e in (await read_events(good, 1))[0]]
        assert received == sent
        good.cancel()


async def test_subscribe_without_topics_is_invalid(api: hub_pb2_grpc.HubStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await next_message(await subscribe(api))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "at least one topic is required"


@pytest.mark.parametrize(
    ("topic", "problem"),
    [
        ("a::b", "topic 'a::b' has an empty segment"),
        ("", "topic must not be empty"),
        ("x" * 300, "topic is longer than 256 bytes"),
    ],
)
async def test_subscribe_with_a_bad_topic_is_invalid(
    api: hub_pb2_grpc.HubStub, topic: str, problem: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await next_message(await subscribe(api, "ok", topic))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == problem


async def test_a_client_that_cancels_is_unsubscribed_without_error_logs(
    hub: Hub, api: hub_pb2_grpc.HubStub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    call = await subscribe(api, "a")
    await next_of(call, "heartbeat")
    assert hub.fanout.count("grpc") == 1
    call.cancel()
    await wait_until(lambda: hub.fanout.count("grpc") == 0, TIMEOUT, "unsubscribed")
    assert any(r.getMessage() == "grpc subscribe closed" for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
