"""Idempotent publish with the Redis broker: replicas agree on a key (stored by the append's
own Lua script), so a retry that lands on another replica stores nothing again."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import grpc
import pytest
import redis

from cachewire.hub.settings import HubSettings
from cachewire.v1 import hub_pb2, hub_pb2_grpc
from tests.servers import Proc, start_hub, start_redis

TIMEOUT = 20.0
STREAM = HubSettings().redis_stream  # the default stream key


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Proc, list[Proc]]]:
    """redis-server and two hub replicas sharing its stream."""
    server = start_redis()
    hubs: list[Proc] = []
    try:
        url = f"redis://127.0.0.1:{server.port}/0"
        for _ in range(2):
            hubs.append(start_hub("--broker", "redis", "--redis-url", url))
        yield server, hubs
    finally:
        for proc in [*reversed(hubs), server]:
            proc.stop()


def stream_length(server: Proc) -> int:
    with redis.Redis(port=server.port) as client:
        return int(client.xlen(STREAM))


async def post(hub: Proc, body: Any, key: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{hub.ports['http']}/v1/publish",
            json=body,
            headers={"Idempotency-Key": key},
            timeout=aiohttp.ClientTimeout(total=TIMEOUT),
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        answer: dict[str, Any] = json.loads(await resp.text())
        return answer


async def test_a_retry_on_another_replica_answers_the_first_ids(
    cluster: tuple[Proc, list[Proc]],
) -> None:
    server, (a, b) = cluster
    first = await post(a, [{"type": "r:1"}, {"type": "r:2"}], "move-1")
    length = stream_length(server)
    again = await post(b, [{"type": "r:1"}, {"type": "r:2"}], "move-1")
    assert again == first
    assert stream_length(server) == length
    with redis.Redis(port=server.port, decode_responses=True) as client:
        assert client.get(f"{STREAM}:idem:move-1") == " ".join(first["ids"])
        assert 0 < client.pttl(f"{STREAM}:idem:move-1") <= 300_000


async def test_concurrent_retries_on_both_replicas_store_once(
    cluster: tuple[Proc, list[Proc]],
) -> None:
    server, hubs = cluster
    length = stream_length(server)
    answers = await asyncio.gather(
        *(post(hubs[i % 2], {"type": "r:c"}, "race-1") for i in range(12))
    )
    assert all(answer == answers[0] for answer in answers)
    assert stream_length(server) == length + 1


async def test_grpc_and_http_share_the_key_across_replicas(
    cluster: tuple[Proc, list[Proc]],
) -> None:
    _, (a, b) = cluster
    first = await post(a, {"type": "r:g"}, "grpc-1")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{b.ports['grpc']}") as channel:
        answer = await hub_pb2_grpc.HubStub(channel).Publish(
            hub_pb2.PublishRequest(
                events=[hub_pb2.EventInput(type="r:g")], idempotency_key="grpc-1"
            ),
            timeout=TIMEOUT,
        )
    assert list(answer.ids) == first["ids"]
