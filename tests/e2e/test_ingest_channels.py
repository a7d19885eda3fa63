"""Plasma's publishers: `PUBLISH` to Redis channels, ingested by `cachewire-hub` processes."""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from tests.e2e.test_redis_helpers import Sse, eventually, get, metric, publish
from tests.servers import Proc


@pytest.fixture
async def redis_client(redis_server: Proc) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(f"redis://127.0.0.1:{redis_server.port}/0")
    yield client
    await client.aclose()


def plasma(event_type: str, data: object) -> str:
    return json.dumps({"meta": {"type": event_type}, "data": data})


async def subscribers(client: aioredis.Redis, channel: str) -> int:
    return int((await client.pubsub_numsub(channel))[0][1])


async def test_a_memory_broker_hub_ingests_plasma_messages_and_counts_malformed_ones(
    redis_server: Proc, redis_client: aioredis.Redis, hub_process: Callable[..., Proc]
) -> None:
    """One hub, embedded broker: messages become events; bad ones are logged and counted."""
    hub = hub_process(
        "--redis-url", f"redis://127.0.0.1:{redis_server.port}/0", "--redis-channels", "ch1, ch2"
    )

    async def subscribed() -> bool:
        return [await subscribers(redis_client, c) for c in ("ch1", "ch2")] == [1, 1]

    await eventually(subscribed, "the hub subscribed to ch1 and ch2")
    async with Sse(hub, "program") as sub:
        await sub.position()
        await redis_client.publish("ch1", plasma("program:1", {"views": 3}))
        frame = await sub.next()
        assert frame.data == {"meta": {"type": "program:1"}, "data": {"views": 3}}
        assert frame.id is not None and frame.id.count("-") == 1  # the memory broker's id
        malformed: list[bytes | str] = [
            b"not json",
            b"\xff\xfe\x00",
            "[]",
            '{"data":1}',
            '{"meta":{}}',
            '{"meta":"x"}',
            '{"meta":{"type":""}}',
            '{"meta":{"type":"a::b"}}',
            '{"meta":{"type":1}}',
            '{"meta":{"type":"a"},"data":NaN}',
            '{"meta":{"type":"a"},"data":1e999}',
            '{"meta":{"type":"a"},"data":{"x":[-1e400]}}',
            '{"meta":{"type":"a","keys":"k"}}',
        ]
        for message in malformed:
            await redis_client.publish("ch2", message)
        await redis_client.publish(
            "ch2",
            json.dumps(
                {"meta": {"type": "program:2", "keys": ["k1"], "flush": True}, "data": None}
            ),
        )
        frame = await sub.next()  # nothing came of the malformed ones
        assert frame.data == {
            "meta": {"type": "program:2", "keys": ["k1"], "flush": True},
            "data": None,
        }
    result = 'result="malformed"'
    assert await metric(hub, "cachewire_hub_ingest_messages_total", result) == len(malformed)
    assert await metric(hub, "cachewire_hub_ingest_messages_total", 'result="ingested"') == 2
    assert await metric(hub, "cachewire_hub_ingest_leader") == 1
    assert hub.popen.poll() is None
    log = hub.log()
    assert log.count("malformed channel message ignored") == len(malformed)
    assert "not json" not in log  # payloads are not logged at info


async def leaders(hubs: list[Proc]) -> list[Proc]:
    return [h for h in hubs if await metric(h, "cachewire_hub_ingest_leader") == 1]


async def test_replicas_ingest_each_message_once_and_hand_the_lease_over(
    redis_server: Proc, redis_client: aioredis.Redis, hub_process: Callable[..., Proc]
) -> None:
    """Three replicas: one holds the lease; SIGKILL it, then SIGTERM the next holder: the
    lease moves on each time and every message still becomes exactly one event."""
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    hubs = [
        hub_process(
            "--broker",
            "redis",
            "--redis-url",
            url,
            "--redis-channels",
            "plasma",
            "--ingest-lease",
            "1",
        )
        for _ in range(3)
    ]

    async def one_leader() -> bool:
        return len(await leaders(hubs)) == 1 and await subscribers(redis_client, "plasma") == 1

    round_no = 0
    while True:
        round_no += 1
        await eventually(one_leader, "exactly one replica subscribed to the channel")
        subs = [Sse(h, "news") for h in hubs]
        for sub in subs:
            await sub.__aenter__()
        try:
            for sub in subs:
                await sub.position()
            for i in range(10):
                await redis_client.publish("plasma", plasma(f"news:{round_no}", i))
            for sub in subs:
                assert [f.data["data"] for f in await sub.events(10)] == list(range(10))
            # Published once every subscriber had all ten: a duplicate ingested by then
            # would come before it.
            sentinel = await publish(hubs[0], [{"type": "news:end"}])
            for sub in subs:
                assert (await sub.next()).id == sentinel[0]
        finally:
            for sub in subs:
                await sub.close()
        if round_no == 3:
            break
        leader = (await leaders(hubs))[0]
        hubs.remove(leader)
        if round_no == 1:
            leader.signal(signal.SIGKILL)  # taken over once the lease expires
            leader.popen.wait()
        else:
            assert leader.stop() == 0  # a clean stop releases the lease at once
            assert "channel ingest lease released" in leader.log()
    for hub in hubs:
        status, _ = await get(hub, "/readyz")
        assert status == 200
