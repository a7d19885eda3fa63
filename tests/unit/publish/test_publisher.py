"""The publisher library against a real in-process hub over HTTP and gRPC: ids, batching,
order, retries that never publish twice, refusals that fail only the bad event."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from cachewire.hub.server import Hub
from cachewire.publish import AsyncPublisher, Publisher, Refused, Unreachable
from tests.servers import free_port
from tests.unit.publish.faults import FaultyGrpcHub, FaultyProxy

HubFactory = Callable[..., Any]


@pytest.fixture
async def hub(hub_factory: HubFactory) -> Hub:
    return await hub_factory(max_keys=3)


def url(hub: Hub, transport: str) -> str:
    port = hub.http_port if transport == "http" else hub.grpc_port
    return f"{transport}://127.0.0.1:{port}"


async def history(hub: Hub, before: str) -> list[Any]:
    return list((await hub.broker.replay(before)).events)


@pytest.mark.parametrize("transport", ["http", "grpc"])
async def test_publish_answers_the_id_of_the_stored_event(hub: Hub, transport: str) -> None:
    before = hub.broker.head_id()
    async with AsyncPublisher(url(hub, transport)) as publisher:
        event_id = await publisher.publish(
            "user:42", keys=["user:42"], prefixes=["p:"], data={"n": 1}
        )
        flush_id = await publisher.publish("catalog", flush=True)
    [event, flush] = await history(hub, before)
    assert (event.id, event.type, event.keys, event.prefixes, event.data_json) == (
        event_id,
        "user:42",
        ("user:42",),
        ("p:",),
        '{"n":1}',
    )
    assert (flush.id, flush.flush, flush.data_json) == (flush_id, True, "null")


@pytest.mark.parametrize("transport", ["http", "grpc"])
async def test_concurrent_calls_are_batched_and_stored_in_call_order(
    hub: Hub, transport: str
) -> None:
    before = hub.broker.head_id()
    async with AsyncPublisher(url(hub, transport)) as publisher:
        ids = await asyncio.gather(*(publisher.publish(f"b:{i}") for i in range(300)))
        assert publisher.requests <= 10  # 300 events, a handful of requests
    events = await history(hub, before)
    assert [e.id for e in events] == ids
    assert [e.type for e in events] == [f"b:{i}" for i in range(300)]


async def test_a_batch_is_capped_by_events_and_bytes(hub: Hub) -> None:
    async with AsyncPublisher(url(hub, "http"), max_batch=10) as publisher:
        await asyncio.gather(*(publisher.publish(f"c:{i}") for i in range(100)))
        assert publisher.requests >= 10
    async with AsyncPublisher(url(hub, "http"), max_batch_bytes=2000) as publisher:
        await asyncio.gather(*(publisher.publish("d", data="x" * 900) for _ in range(10)))
        assert publisher.requests >= 5


@pytest.mark.parametrize("transport", ["http", "grpc"])
async def test_a_refused_event_fails_alone_and_its_batch_is_published(
    hub: Hub, transport: str
) -> None:
    before = hub.broker.head_id()
    async with AsyncPublisher(url(hub, transport)) as publisher:
        results = await asyncio.gather(
            publisher.publish("ok:1"),
            publisher.publish("bad::type"),
            publisher.publish("ok:2", keys=["1", "2", "3", "4"]),  # over --max-keys 3
            publisher.publish("ok:3"),
            return_exceptions=True,
        )
    assert isinstance(results[1], Refused) and "empty segment" in str(results[1])
    assert isinstance(results[2], Refused) and "more than the limit of 3" in str(results[2])
    assert [e.type for e in await history(hub, before)] == ["ok:1", "ok:3"]
    assert [e.id for e in await history(hub, before)] == [results[0], results[3]]


@pytest.mark.parametrize("script", [["503", "503"], ["lost"], ["slow"], ["lost", "503"]])
async def test_http_failures_are_retried_under_one_key_and_stored_once(
    hub: Hub, script: list[str]
) -> None:
    before = hub.broker.head_id()
    async with (
        FaultyProxy(hub.http_port, script) as proxy,
        AsyncPublisher(proxy.url, timeout=0.5, backoff_base=0.01) as publisher,
    ):
        event_id = await publisher.publish("retried", keys=["k"])
    assert [e.id for e in await history(hub, before)] == [event_id]
    assert len(proxy.keys) == len(script) + 1
    assert len(set(proxy.keys)) == 1  # every attempt carried the same key


async def test_grpc_resource_exhausted_is_retried_and_invalid_is_not(hub: Hub) -> None:
    assert hub.grpc_port is not None
    before = hub.broker.head_id()
    async with (
        FaultyGrpcHub(hub.grpc_port, ["exhausted", "exhausted", "ok", "invalid"]) as fake,
        AsyncPublisher(fake.url, backoff_base=0.01) as publisher,
    ):
        event_id = await publisher.publish("pushed:back")
        with pytest.raises(Refused, match="INVALID_ARGUMENT"):
            await publisher.publish("refused")
    assert [e.id for e in await history(hub, before)] == [event_id]
    assert len(set(fake.keys[:3])) == 1


async def test_an_unreachable_hub_fails_after_the_retry_window() -> None:
    async with AsyncPublisher(
        f"http://127.0.0.1:{free_port()}", retry_for=0.3, backoff_base=0.01
    ) as publisher:
        with pytest.raises(Unreachable, match="cannot reach the hub"):
            await publisher.publish("nobody:home")
        assert publisher.requests > 1


async def test_the_blocking_publisher_is_shared_by_threads(hub: Hub) -> None:
    """Eight threads publish through one Publisher (the hub runs on this test's loop)."""
    before = hub.broker.head_id()
    publisher = Publisher(url(hub, "http"))

    def work(n: int) -> list[str]:
        mine = [publisher.submit(f"t:{n}:{i}") for i in range(50)]
        return [f.result(20) for f in mine]

    try:
        results = await asyncio.gather(*(asyncio.to_thread(work, n) for n in range(8)))
        last = await asyncio.to_thread(publisher.publish, "last", timeout=20)
        assert publisher._async.requests < 100  # 401 events
    finally:
        await asyncio.to_thread(publisher.close, 20)
    ids = [i for got in results for i in got] + [last]
    stored = await history(hub, before)
    assert sorted(ids) == sorted(e.id for e in stored) and len(set(ids)) == 401
    for n, got in enumerate(results):  # each thread's events in its submission order
        assert [e.type for e in stored if e.id in set(got)] == [f"t:{n}:{i}" for i in range(50)]


def test_a_bad_url_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="must start with http://"):
        AsyncPublisher("hub:8080")


@pytest.mark.parametrize("transport", ["http", "grpc"])
async def test_several_requests_in_flight_publish_everything_once(hub: Hub, transport: str) -> None:
    before = hub.broker.head_id()
    async with AsyncPublisher(url(hub, transport), max_in_flight=4, max_batch=20) as publisher:
        ids = await asyncio.gather(*(publisher.publish(f"f:{i}") for i in range(300)))
        await publisher.drain()
        assert publisher.requests >= 15
    stored = await history(hub, before)
    assert sorted(e.id for e in stored) == sorted(ids) and len(set(ids)) == 300
    assert sorted(e.type for e in stored) == sorted(f"f:{i}" for i in range(300))
