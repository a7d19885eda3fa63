"""Idempotent publish: a retried key gets the first ids back, over HTTP and gRPC, on the
memory broker (the Redis broker: tests/e2e/test_redis_idempotency.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import grpc
import pytest

from cachewire.hub.brokers.memory import MemoryBroker
from cachewire.hub.errors import KeyReused
from cachewire.hub.events import Draft
from cachewire.hub.idempotency import Remembered
from cachewire.hub.server import Hub
from cachewire.v1 import hub_pb2, hub_pb2_grpc

TIMEOUT = 20.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_remembered_forgets_a_key_after_its_window() -> None:
    clock = Clock()
    keys = Remembered(clock=clock)
    keys.put("k", ["e-1"], window=10)
    clock.now += 9.9
    assert keys.get("k") == ("e-1",)
    clock.now += 0.2
    assert keys.get("k") is None


def test_remembered_is_bounded_and_forgets_the_oldest_first() -> None:
    keys = Remembered(max_keys=3, clock=Clock())
    for i in range(5):
        keys.put(f"k{i}", [f"e-{i}"], window=60)
    assert len(keys) == 3
    assert keys.get("k1") is None
    assert keys.get("k4") == ("e-4",)


async def test_memory_broker_stores_a_key_once_and_answers_the_same_ids() -> None:
    broker = MemoryBroker()
    first, stored = await broker.publish_once([Draft("a"), Draft("b")], "key-1", 60)
    again, stored_again = await broker.publish_once([Draft("a"), Draft("b")], "key-1", 60)
    assert (again, stored, stored_again) == (first, True, False)
    assert broker.history_size() == 2


async def test_a_key_reused_for_another_number_of_events_is_refused() -> None:
    broker = MemoryBroker()
    await broker.publish_once([Draft("a")], "key-1", 60)
    with pytest.raises(KeyReused, match="used for a request of 1 event"):
        await broker.publish_once([Draft("a"), Draft("b")], "key-1", 60)
    assert broker.history_size() == 1


@pytest.fixture
async def hub(hub_factory: Callable[..., Any]) -> Hub:
    return await hub_factory(idempotency_window=60.0)


async def post(hub: Hub, body: Any, key: str | None = None) -> tuple[int, Any]:
    headers = {} if key is None else {"Idempotency-Key": key}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{hub.http_port}/v1/publish", json=body, headers=headers
        ) as resp,
    ):
        return resp.status, json.loads(await resp.text())


async def test_http_retry_with_the_same_key_answers_the_first_ids_and_stores_nothing(
    hub: Hub,
) -> None:
    status, first = await post(hub, [{"type": "a"}, {"type": "b"}], key="order-42")
    head = hub.broker.head_id()
    status2, again = await post(hub, [{"type": "a"}, {"type": "b"}], key="order-42")
    assert (status, status2) == (200, 200)
    assert again == first
    assert hub.broker.head_id() == head


async def test_http_requests_without_a_key_or_with_other_keys_store_each_time(hub: Hub) -> None:
    ids = [(await post(hub, {"type": "a"}, key=k))[1]["ids"][0] for k in (None, None, "x", "y")]
    assert len(set(ids)) == 4


async def test_http_concurrent_retries_of_one_key_store_once(hub: Hub) -> None:
    results = await asyncio.gather(*(post(hub, {"type": "a"}, key="same") for _ in range(10)))
    assert {json.dumps(body) for _, body in results} == {json.dumps(results[0][1])}
    assert hub.broker.history_size() == 1


@pytest.mark.parametrize(
    ("key", "status", "message"),
    [
        ("x" * 256, 400, "1 to 255 visible ASCII characters"),
        ("has space", 400, "1 to 255 visible ASCII characters"),
    ],
)
async def test_http_bad_keys_are_refused_and_store_nothing(
    hub: Hub, key: str, status: int, message: str
) -> None:
    got_status, body = await post(hub, {"type": "a"}, key=key)
    assert got_status == status
    assert message in body["error"]
    assert hub.broker.history_size() == 0


async def test_http_key_reused_for_another_request_is_422(hub: Hub) -> None:
    await post(hub, {"type": "a"}, key="k")
    status, body = await post(hub, [{"type": "a"}, {"type": "b"}], key="k")
    assert status == 422
    assert body == {
        "status": 422,
        "error": "the idempotency key 'k' was used for a request of 1 event(s); this one has 2",
    }


async def test_window_zero_ignores_keys(hub_factory: Callable[..., Any]) -> None:
    hub = await hub_factory(idempotency_window=0.0)
    await post(hub, {"type": "a"}, key="k")
    await post(hub, {"type": "a"}, key="k")
    assert hub.broker.history_size() == 2


@pytest.fixture
async def api(hub: Hub) -> AsyncIterator[hub_pb2_grpc.HubStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{hub.grpc_port}") as channel:
        yield hub_pb2_grpc.HubStub(channel)


async def test_grpc_retry_with_the_same_key_answers_the_first_ids(
    hub: Hub, api: hub_pb2_grpc.HubStub
) -> None:
    request = hub_pb2.PublishRequest(
        events=[hub_pb2.EventInput(type="a")], idempotency_key="retry-me"
    )
    first = await api.Publish(request, timeout=TIMEOUT)
    again = await api.Publish(request, timeout=TIMEOUT)
    assert list(again.ids) == list(first.ids)
    assert hub.broker.history_size() == 1
    # the same key over HTTP is the same key
    _, body = await post(hub, {"type": "a"}, key="retry-me")
    assert body == {"ids": list(first.ids)}


async def test_grpc_bad_key_is_invalid_argument(hub: Hub, api: hub_pb2_grpc.HubStub) -> None:
    request = hub_pb2.PublishRequest(events=[hub_pb2.EventInput(type="a")], idempotency_key="é")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.Publish(request, timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "visible ASCII" in (info.value.details() or "")
