"""The sidecar's local relay at the wire: a real grpc.aio server and raw Subscribe streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from cachewire.sidecar.sinks.base import Invalidation, SinkError
from cachewire.sidecar.sinks.local import BATCH_BYTES, RelaySink, batches, to_event
from cachewire.v1 import hub_pb2, hub_pb2_grpc

WAIT = 10.0
Relay = Callable[..., Awaitable[RelaySink]]


@pytest.fixture
async def relay_factory() -> AsyncIterator[Relay]:
    """Factory: `await relay_factory(history=3)` → a started RelaySink on an ephemeral port."""
    relays: list[RelaySink] = []

    async def make(**kwargs: Any) -> RelaySink:
        relay = RelaySink(0, **kwargs)
        await relay.start()
        relays.append(relay)
        return relay

    yield make
    for relay in relays:
        await relay.close()


class App:
    """A raw Subscribe stream, read one message at a time."""

    def __init__(self, channel: grpc.aio.Channel, call: Any) -> None:
        self.channel, self.call = channel, call

    @classmethod
    async def connect(
        cls, relay: RelaySink, topics: list[str], resume_from: str = "", options: Any = None
    ) -> App:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{relay.port}", options=options)
        stub = hub_pb2_grpc.HubStub(channel)
        call = stub.Subscribe(hub_pb2.SubscribeRequest(topics=topics, resume_from=resume_from))
        return cls(channel, call)

    async def next(self) -> hub_pb2.SubscribeResponse:
        async with asyncio.timeout(WAIT):
            message: hub_pb2.SubscribeResponse = await self.call.read()
        assert message is not grpc.aio.EOF
        return message

    async def next_of(self, kind: str) -> hub_pb2.SubscribeResponse:
        """The next message that is not a heartbeat (or the next heartbeat)."""
        while True:
            message = await self.next()
            if message.WhichOneof("message") == kind:
                return message
            assert message.WhichOneof("message") == "heartbeat", message

    async def close(self) -> None:
        await self.channel.close()


def inv(event_id: str, type: str = "user:1", **kw: Any) -> Invalidation:
    return Invalidation(id=event_id, type=type, **kw)


async def subscribed(relay: RelaySink, topics: list[str], resume_from: str = "") -> App:
    app = await App.connect(relay, topics, resume_from)
    first = await app.next()
    assert first.WhichOneof("message") in ("heartbeat", "reset", "events")
    if first.WhichOneof("message") != "heartbeat":
        raise AssertionError(f"expected the subscription heartbeat first, got {first}")
    return app


async def test_a_subscription_starts_with_a_heartbeat_at_the_high_water_id(
    relay_factory: Relay,
) -> None:
    relay = await relay_factory()
    app = await App.connect(relay, ["user"])
    message = await app.next()
    assert message.heartbeat.high_water_id == relay.high_water
    assert message.heartbeat.high_water_id.startswith("relay.")
    assert relay.subscriber_count() == 1
    assert await relay.check()
    await app.close()


async def test_apply_forwards_matching_events_with_every_field(relay_factory: Relay) -> None:
    """Events reach the apps whose topics match (Plasma's rule), in order, fields intact."""
    relay = await relay_factory()
    users, orders = await subscribed(relay, ["user"]), await subscribed(relay, ["order:7"])
    tp = "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01"
    await relay.apply(
        [
            inv(
                "h-1",
                "user:1",
                keys=("user:1", "user:1:profile"),
                prefixes=("feed:1:",),
                data_json='{"a":1}',
                published_at=1.5,
                traceparent=tp,
                tracestate="x=1",
            ),
            inv("h-2", "order:7:lines", flush=True),
            inv("h-3", "users", keys=("nope",)),
            inv("h-4", "user:2", keys=("user:2",)),
        ]
    )
    got = (await users.next_of("events")).events.events
    assert [e.id for e in got] == ["h-1", "h-4"]
    first = got[0]
    assert (first.type, list(first.keys), list(first.prefixes), first.data) == (
        "user:1",
        ["user:1", "user:1:profile"],
        ["feed:1:"],
        '{"a":1}',
    )
    assert (first.published_at_unix_micros, first.traceparent, first.tracestate) == (
        1_500_000,
        tp,
        "x=1",
    )
    order = (await orders.next_of("events")).events.events
    assert [(e.id, e.flush) for e in order] == [("h-2", True)]
    assert relay.high_water == "h-4"
    await users.close()
    await orders.close()


async def test_flush_resets_every_app(relay_factory: Relay) -> None:
    relay = await relay_factory()
    app = await subscribed(relay, ["user"])
    await relay.flush("hub reset: epoch_changed")
    reset = (await app.next_of("reset")).reset
    assert reset.reason == hub_pb2.RESET_REASON_UNSPECIFIED
    assert "epoch_changed" in reset.detail
    assert reset.resume_from == relay.high_water
    await app.close()


async def test_heartbeats_repeat_with_the_high_water_id(relay_factory: Relay) -> None:
    relay = await relay_factory(heartbeat=0.05)
    app = await subscribed(relay, ["user"])
    await relay.apply([inv("h-1", "other")])  # not ours, but it moves the high-water mark
    while (message := await app.next()).heartbeat.high_water_id != "h-1":
        assert message.WhichOneof("message") == "heartbeat"
    await app.close()


async def test_resume_replays_what_the_app_missed(relay_factory: Relay) -> None:
    relay = await relay_factory()
    start = relay.high_water
    await relay.apply([inv("h-1", keys=("a",)), inv("h-2", "other"), inv("h-3", keys=("b",))])
    app = await App.connect(relay, ["user"], resume_from="h-1")
    replay = (await app.next()).events.events
    assert [e.id for e in replay] == ["h-3"]
    assert (await app.next()).heartbeat.high_water_id == "h-3"
    await app.close()
    # From the relay's start position (an app that connected before any event).
    app = await App.connect(relay, ["user"], resume_from=start)
    assert [e.id for e in (await app.next()).events.events] == ["h-1", "h-3"]
    await app.close()
    # From the newest id: nothing to replay, no reset.
    app = await App.connect(relay, ["user"], resume_from="h-3")
    assert (await app.next()).WhichOneof("message") == "heartbeat"
    await app.close()


async def test_resume_across_a_flush_resets_then_replays_after_it(relay_factory: Relay) -> None:
    relay = await relay_factory()
    await relay.apply([inv("h-1"), inv("h-2")])
    await relay.flush("gap")
    flush_id = relay.high_water
    await relay.apply([inv("h-3")])
    app = await App.connect(relay, ["user"], resume_from="h-1")
    reset = (await app.next()).reset
    assert (reset.reason, reset.resume_from) == (hub_pb2.RESET_REASON_UNSPECIFIED, flush_id)
    assert [e.id for e in (await app.next()).events.events] == ["h-3"]
    await app.close()
    # Resuming from the flush's own id replays what followed, without another reset.
    app = await App.connect(relay, ["user"], resume_from=flush_id)
    assert [e.id for e in (await app.next()).events.events] == ["h-3"]
    await app.close()


@pytest.mark.parametrize(
    ("resume_from", "history", "reason"),
    [
        ("nope-1", 10, hub_pb2.RESET_REASON_UNKNOWN_ID),
        ("relay.00000000.5", 10, hub_pb2.RESET_REASON_EPOCH_CHANGED),  # before a relay restart
        ("h-1", 2, hub_pb2.RESET_REASON_HISTORY_EXPIRED),
        ("nope-1", 2, hub_pb2.RESET_REASON_HISTORY_EXPIRED),  # unknown, but history was trimmed
    ],
)
async def test_resume_that_cannot_replay_gets_a_reset(
    relay_factory: Relay, resume_from: str, history: int, reason: int
) -> None:
    relay = await relay_factory(history=history)
    await relay.apply([inv("h-1"), inv("h-2"), inv("h-3")])
    app = await App.connect(relay, ["user"], resume_from=resume_from)
    reset = (await app.next()).reset
    assert reset.reason == reason, reset
    assert reset.resume_from == "h-3"
    assert (await app.next()).WhichOneof("message") == "heartbeat"
    await relay.apply([inv("h-4")])  # live delivery continues after the reset
    assert [e.id for e in (await app.next_of("events")).events.events] == ["h-4"]
    await app.close()


async def test_a_slow_app_is_reset_and_dropped_alone(relay_factory: Relay) -> None:
    """An app that does not read fills its bounded queue: SLOW_CONSUMER, then its stream ends;
    a reading app on the same relay keeps everything."""
    relay = await relay_factory(queue_size=4)
    # A small flow-control window so that the unread stream backs up into the relay's queue.
    small = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]
    slow = await App.connect(relay, ["user"], options=small)
    assert (await slow.next()).WhichOneof("message") == "heartbeat"
    fast = await subscribed(relay, ["user"])
    big = "x" * 64 * 1024
    received: list[str] = []
    for i in range(1, 1000):
        if relay.slow_drops:
            break
        await relay.apply([inv(f"h-{i}", data_json=f'"{big}"')])
        while len(received) < i:  # the fast app reads every event as it comes
            received += [e.id for e in (await fast.next_of("events")).events.events]
    assert relay.slow_drops == 1
    assert relay.subscriber_count() == 1
    got: list[str] = []
    while (message := await slow.next()).WhichOneof("message") != "reset":
        got += [e.id for e in message.events.events]
    assert message.reset.reason == hub_pb2.RESET_REASON_SLOW_CONSUMER
    assert message.reset.resume_from == (got[-1] if got else "")
    async with asyncio.timeout(WAIT):
        assert await slow.call.read() is grpc.aio.EOF
    assert await slow.call.code() == grpc.StatusCode.OK
    await slow.close()
    await fast.close()


async def test_close_ends_streams_with_unavailable(relay_factory: Relay) -> None:
    relay = await relay_factory()
    app = await subscribed(relay, ["user"])
    await relay.close()
    assert not await relay.check()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async with asyncio.timeout(WAIT):
            while True:
                await app.next()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "relay" in (info.value.details() or "")
    await app.close()


async def test_bad_topics_are_invalid_argument(relay_factory: Relay) -> None:
    relay = await relay_factory()
    for topics in ([], ["a::b"]):
        app = await App.connect(relay, topics)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await app.next()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "topic" in (info.value.details() or "")
        await app.close()
    assert relay.subscriber_count() == 0


async def test_publish_points_at_the_hub(relay_factory: Relay) -> None:
    relay = await relay_factory()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{relay.port}") as channel:
        stub = hub_pb2_grpc.HubStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Publish(hub_pb2.PublishRequest(), timeout=WAIT)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "hub" in (info.value.details() or "")


async def test_a_port_in_use_is_a_sink_error(relay_factory: Relay) -> None:
    relay = await relay_factory()
    with pytest.raises(SinkError, match=str(relay.port)):
        await RelaySink(relay.port).start()


def test_large_batches_are_split_into_messages() -> None:
    events = [to_event(inv(f"h-{i}", data_json='"' + "x" * 100_000 + '"')) for i in range(25)]
    messages = batches(events)
    assert len(messages) > 1
    assert all(m.ByteSize() <= BATCH_BYTES + 200_000 for m in messages)
    assert [e.id for m in messages for e in m.events.events] == [e.id for e in events]
