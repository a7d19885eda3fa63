"""A hub replica paused (SIGSTOP) while another publishes: no silent loss when it wakes.

Two `cachewire-hub` processes on one redis-server. Past `--history` events the entries the
paused replica had not read are trimmed: its live SSE and gRPC subscribers get a
`history_expired` reset, then the events still in the stream and later ones. With a history
that holds everything, the paused replica catches up with no reset and nothing lost.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis.asyncio as aioredis

from cachewire.hub.brokers.redis_reader import parse_event_id, parse_stream_id
from cachewire.hub.events import Position
from cachewire.hub.settings import HubSettings
from cachewire.v1 import hub_pb2
from tests.e2e.test_redis_helpers import Frame, GrpcSubscribe, Sse, metric, publish
from tests.servers import Proc

STREAM = HubSettings().redis_stream
HubFactory = Callable[..., Proc]


def ev(event_type: str, data: object = None) -> dict[str, object]:
    return {"type": event_type, "data": data}


def position(event_id: str) -> Position:
    parsed = parse_event_id(event_id)
    assert parsed is not None, event_id
    return parsed[1]


def replicas(redis_server: Proc, hub_process: HubFactory, history: int) -> tuple[Proc, Proc]:
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    args = ("--broker", "redis", "--redis-url", url, "--history", str(history))
    return hub_process(*args), hub_process(*args)


@contextmanager
def paused(proc: Proc) -> Iterator[None]:
    """The process is stopped inside the block and continued after it, whatever happens."""
    proc.signal(signal.SIGSTOP)
    try:
        yield
    finally:
        proc.signal(signal.SIGCONT)


async def publish_while_paused(publisher: Proc) -> list[str]:
    """One event, then 300 in three requests: if the paused reader's XREAD was blocked, its
    reply holds only the first one; the others it must read after waking."""
    ids = await publish(publisher, [ev("g:0", 0)])
    for batch in range(3):
        ids += await publish(publisher, [ev(f"g:{batch}:{i}", i) for i in range(100)])
    return ids


async def live_subscribers(hub: Proc) -> tuple[Sse, GrpcSubscribe]:
    sse, grpc_sub = Sse(hub, "g"), GrpcSubscribe(hub, ["g"])
    await sse.__aenter__()
    await grpc_sub.__aenter__()
    await sse.position()
    assert (await grpc_sub.next()).WhichOneof("message") == "heartbeat"  # live
    return sse, grpc_sub


async def close(sse: Sse, grpc_sub: GrpcSubscribe) -> None:
    await sse.close()
    await grpc_sub.__aexit__()


async def sse_until_reset(sse: Sse) -> tuple[list[Frame], Frame]:
    before: list[Frame] = []
    while (frame := await sse.next()).type != "cachewire:reset":
        before.append(frame)
    return before, frame


async def grpc_until_reset(sub: GrpcSubscribe) -> tuple[list[str], Any]:
    before: list[str] = []
    while True:
        message = await sub.next()
        kind = message.WhichOneof("message")
        if kind == "reset":
            return before, message.reset
        if kind == "events":
            before += [e.id for e in message.events.events]


async def test_a_replica_paused_past_the_history_resets_its_subscribers_then_goes_on(
    redis_server: Proc, hub_process: HubFactory
) -> None:
    """--history 20, 301 events while B is stopped: B's SSE and gRPC subscribers get a
    history_expired reset, then exactly the events left in the stream, then later ones.
    (A's own reader may lose some of these bursts too: 100 events outrun a 20-event history.)"""
    a, b = replicas(redis_server, hub_process, history=20)
    sse, grpc_sub = await live_subscribers(b)
    client = aioredis.from_url(f"redis://127.0.0.1:{redis_server.port}/0", decode_responses=True)
    try:
        first = await publish(a, [ev("g:first")])
        assert [f.id for f in await sse.events(1)] == first  # B's reader is at `first`
        assert [e.id for e in await grpc_sub.events(1)] == first
        with paused(b):
            ids = await publish_while_paused(a)
            info = await client.xinfo_stream(STREAM)
            oldest = parse_stream_id(info["first-entry"][0])
            assert oldest is not None
            trimmed = [i for i in ids if position(i) < oldest]
            # The precondition, a fact: more was trimmed than a blocked XREAD can hold.
            assert len(trimmed) >= 2 and trimmed == ids[: len(trimmed)]
            kept = ids[len(trimmed) :]

        before, reset = await sse_until_reset(sse)
        assert [f.id for f in before] in ([], ids[:1])  # at most what its XREAD held
        assert reset.data["meta"]["reason"] == "history_expired"
        assert "trimmed" in reset.data["data"]["detail"]
        assert [f.id for f in await sse.events(len(kept))] == kept

        grpc_before, grpc_reset = await grpc_until_reset(grpc_sub)
        assert grpc_before == [f.id for f in before]
        assert grpc_reset.reason == hub_pb2.RESET_REASON_HISTORY_EXPIRED
        assert grpc_reset.resume_from == reset.id
        assert [e.id for e in await grpc_sub.events(len(kept))] == kept

        later = await publish(a, [ev("g:later")])
        assert [f.id for f in await sse.events(1)] == later
        assert [e.id for e in await grpc_sub.events(1)] == later
    finally:
        await client.aclose()
        await close(sse, grpc_sub)
    assert await metric(b, "cachewire_hub_redis_reader_gaps_total") == 1
    skipped = len(trimmed) - len(before)
    assert await metric(b, "cachewire_hub_redis_reader_skipped_events_total") == skipped
    assert b.log().count("redis reader fell behind") == 1


async def test_a_replica_paused_within_the_history_catches_up_with_no_reset(
    redis_server: Proc, hub_process: HubFactory
) -> None:
    """The same pause with a history that holds everything: every event, in order, once."""
    a, b = replicas(redis_server, hub_process, history=100_000)
    sse, grpc_sub = await live_subscribers(b)
    try:
        first = await publish(a, [ev("g:first")])
        assert [f.id for f in await sse.events(1)] == first
        assert [e.id for e in await grpc_sub.events(1)] == first
        with paused(b):
            ids = await publish_while_paused(a)
        later = await publish(a, [ev("g:later")])
        frames = await sse.events(len(ids) + 1)
        assert [f.id for f in frames] == ids + later  # no reset frame among them
        assert [e.id for e in await grpc_sub.events(len(ids) + 1)] == ids + later  # nor here
    finally:
        await close(sse, grpc_sub)
    assert await metric(b, "cachewire_hub_redis_reader_gaps_total") == 0
    assert await metric(b, "cachewire_hub_redis_reader_skipped_events_total") == 0
    assert "redis reader fell behind" not in b.log()
