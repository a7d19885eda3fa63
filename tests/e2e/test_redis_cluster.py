"""The hub on a real Redis Cluster (3 primaries, started here): `--redis-url
redis+cluster://…`; every broker key carries the `{cachewire}` hash tag, so each script and
transaction stays in one slot."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from tests.e2e.test_redis_helpers import GrpcSubscribe, eventually, publish
from tests.servers import Proc, start_hub, start_redis_cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[Proc]]:
    nodes = start_redis_cluster(tmp_path)
    yield nodes
    for node in nodes:
        node.stop()


async def subscribed(node: Proc) -> bool:
    """Whether a hub listens to the channel through this node (a cluster-wide PUBLISH
    reaches it from any node; NUMSUB counts only the node's own subscribers)."""
    client = aioredis.Redis(port=node.port)
    try:
        return bool((await client.pubsub_numsub("plasma"))[0][1])
    finally:
        await client.aclose()


def url(nodes: list[Proc]) -> str:
    return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in nodes[:2])


async def test_two_hubs_share_a_stream_on_redis_cluster(
    cluster: list[Proc], hub_process: Callable[..., Proc]
) -> None:
    """Published on one hub, delivered by the other; a resume on either replays; every key
    the broker created lives on the one node that owns the {cachewire} slot."""
    args = ("--broker", "redis", "--redis-url", url(cluster), "--subscribe-heartbeat", "0.2")
    args += ("--redis-channels", "plasma")
    a, b = hub_process(*args), hub_process(*args)
    async with GrpcSubscribe(b, ["user"]) as sub:
        await sub.next()  # live: its first heartbeat
        ids = await publish(a, [{"type": "user:1", "keys": ["k1"]}, {"type": "user:2"}])
        events = await sub.events(2)
        assert [e.id for e in events] == ids
        assert list(events[0].keys) == ["k1"]

        # A Plasma publisher's PUBLISH on any node reaches the replica holding the ingest lease.
        async def ingesting() -> bool:
            return any([await subscribed(node) for node in cluster])

        await eventually(ingesting, "a replica ingesting the channel")
        other = aioredis.Redis(port=cluster[2].port)
        await other.publish("plasma", json.dumps({"meta": {"type": "user:3"}, "data": 3}))
        await other.aclose()
        [ingested] = await sub.events(1)
        assert ingested.type == "user:3"
    async with GrpcSubscribe(a, ["user"], resume_from=ids[0]) as resumed:
        replayed = await resumed.events(2)
        assert [e.id for e in replayed] == [ids[1], ingested.id]
    holders = []
    for node in cluster:
        client = redis.Redis(port=node.port)
        keys = sorted(k.decode() for k in client.keys("*cachewire*"))
        client.close()
        if keys:
            holders.append(keys)
    assert len(holders) == 1, holders
    assert {"{cachewire}:events", "{cachewire}:events:epoch"} <= set(holders[0])


def test_a_stream_name_without_a_hash_tag_is_refused_on_cluster(cluster: list[Proc]) -> None:
    with pytest.raises(RuntimeError, match="hash tag"):
        start_hub("--broker", "redis", "--redis-url", url(cluster), "--redis-stream", "events")
