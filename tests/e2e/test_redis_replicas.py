"""Two and three `cachewire-hub` processes on one redis-server: delivery, resume, resets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cachewire.v1 import hub_pb2
from tests.e2e.test_redis_helpers import GrpcSubscribe, Sse, get, publish
from tests.servers import Proc, start_hub, start_redis

HISTORY = 50  # small, so that the trimming test trims; the other tests stay far from it


@pytest.fixture(scope="module")
def hubs() -> Iterator[list[Proc]]:
    """Three hub processes sharing one stream, for the whole module (they are slow to start);
    each test uses its own topics."""
    started = [start_redis()]
    try:
        url = f"redis://127.0.0.1:{started[0].port}/0"
        for _ in range(3):
            started.append(
                start_hub("--broker", "redis", "--redis-url", url, "--history", str(HISTORY))
            )
        yield started[1:]
    finally:
        for proc in reversed(started):
            proc.stop()


def ev(event_type: str, data: object = None) -> dict[str, object]:
    return {"type": event_type, "data": data}


async def test_every_replica_delivers_every_event_in_the_same_order(hubs: list[Proc]) -> None:
    """Events published through any replica reach the subscribers of all three."""
    subs = [Sse(h, "user") for h in hubs]
    for sub in subs:
        await sub.__aenter__()
    try:
        for sub in subs:
            await sub.position()
        ids = await publish(hubs[0], [ev("user:1", 1), ev("user:2", 2)])
        ids += await publish(hubs[1], [ev("user:3", 3), ev("other", 0)])
        ids += await publish(hubs[2], [ev("user", 4)])
        expected = [ids[0], ids[1], ids[2], ids[4]]
        for sub in subs:
            frames = await sub.events(4)
            assert [f.id for f in frames] == expected
            assert [f.data for f in frames] == [
                {"meta": {"type": t}, "data": d}
                for t, d in [("user:1", 1), ("user:2", 2), ("user:3", 3), ("user", 4)]
            ]
    finally:
        for sub in subs:
            await sub.close()
    for hub in hubs:
        status, body = await get(hub, "/readyz")
        assert status == 200 and body["head"] == ids[-1]


async def test_sse_resume_on_another_replica_gets_exactly_the_missed_events(
    hubs: list[Proc],
) -> None:
    """Publish via A, read from B, disconnect, reconnect to C with the last id."""
    a, b, c = hubs
    async with Sse(b, "doc") as sub:
        await sub.position()
        first = await publish(a, [ev("doc:1"), ev("doc:2")])
        frames = await sub.events(2)
        assert [f.id for f in frames] == first
    missed = await publish(a, [ev("doc:3"), ev("doc:4"), ev("skip:me"), ev("doc:5")])
    async with Sse(c, "doc", last_id=first[-1]) as sub:
        replayed = await sub.events(3)
        assert [f.id for f in replayed] == [missed[0], missed[1], missed[3]]
        assert [f.type for f in replayed] == ["doc:3", "doc:4", "doc:5"]
        later = await publish(b, [ev("doc:6")])
        assert (await sub.next()).id == later[0]  # live after the replay, nothing twice


async def test_grpc_resume_on_another_replica_gets_exactly_the_missed_events(
    hubs: list[Proc],
) -> None:
    """The same over cachewire.v1.Hub Subscribe with resume_from."""
    a, b, c = hubs
    async with GrpcSubscribe(b, ["doc"]) as sub:
        assert (await sub.next()).WhichOneof("message") == "heartbeat"  # live
        first = await publish(a, [ev("doc:1", {"n": 1}), ev("doc:2")])
        assert [e.id for e in await sub.events(2)] == first
    missed = await publish(a, [ev("doc:3"), ev("nope"), ev("doc:4", [1])])
    async with GrpcSubscribe(c, ["doc"], resume_from=first[-1]) as sub:
        replayed = await sub.events(2)
        assert [e.id for e in replayed] == [missed[0], missed[2]]
        assert [(e.type, e.data) for e in replayed] == [("doc:3", "null"), ("doc:4", "[1]")]
        later = await publish(b, [ev("doc:5")])
        assert [e.id for e in await sub.events(1)] == later


async def test_trimmed_history_gives_a_history_expired_reset(hubs: list[Proc]) -> None:
    """--history 50: after 300 more events the oldest ids are gone, on SSE and gRPC alike."""
    a, b, _ = hubs
    ids = await publish(a, [ev(f"t:{i}", i) for i in range(300)])
    async with Sse(b, "t", last_id=ids[0]) as sub:
        reset = await sub.next()
        assert reset.type == "cachewire:reset"
        assert reset.data["data"]["reason"] == "history_expired"
    async with GrpcSubscribe(b, ["t"], resume_from=ids[0]) as grpc_sub:
        message = await grpc_sub.first_not_heartbeat()
        assert message.reset.reason == hub_pb2.RESET_REASON_HISTORY_EXPIRED
    async with Sse(b, "t", last_id=ids[-3]) as sub:
        assert [f.id for f in await sub.events(2)] == ids[-2:]
