"""Overload over real sockets: when most subscribers are behind, publishers wait (then get
503 Retry-After / RESOURCE_EXHAUSTED) and nobody is dropped; a subscriber slower than the
rest is still dropped alone."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import aiohttp
import grpc
import pytest

from cachewire.hub import core
from cachewire.hub.server import Hub
from cachewire.v1 import hub_pb2, hub_pb2_grpc, plasma_pb2_grpc
from tests.servers import wait_until
from tests.unit.hub.sse_helpers import publish, subscribe
from tests.unit.hub.test_grpc_plasma import PlasmaClient
from tests.unit.hub.test_sse_slow import BIG, metric

TIMEOUT = 30.0


async def post(hub: Hub, body: Any) -> tuple[int, dict[str, str], Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{hub.http_port}/v1/publish", json=body) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.json()


async def read_plasma(client: PlasmaClient, n: int) -> list[str]:
    """Read n Payloads as fast as they come; their ids (a reset would show as an empty id)."""
    ids = []
    for _ in range(n):
        payload = await client.read()
        assert payload.eventType.type != "cachewire:reset", payload.data
        ids.append(payload.id)
    return ids


async def test_a_burst_slows_publishers_and_drops_no_subscriber(
    hub_factory: Callable[..., Any],
) -> None:
    """Batches far larger than a queue's worth in total, published as fast as the hub
    answers, to Plasma streams that read as fast as they can: every stream gets every
    event, none is dropped, and the hub made publishers wait (it was behind)."""
    hub = await hub_factory(queue_size=200, lag_threshold=50, publish_wait=TIMEOUT)
    streams = 4
    batches, per_batch = 30, 100  # 3,000 events: 15 queues' worth per stream
    async with grpc.aio.insecure_channel(f"127.0.0.1:{hub.grpc_port}") as channel:
        clients = [PlasmaClient(channel, plasma_pb2_grpc) for _ in range(streams)]
        for client in clients:
            client.subscribe("burst")
        await wait_until(
            lambda: hub.fanout.count("grpc_plasma") == streams, TIMEOUT, "streams subscribed"
        )
        readers = [asyncio.create_task(read_plasma(c, batches * per_batch)) for c in clients]

        async def publisher(k: int) -> list[str]:
            ids: list[str] = []
            for _ in range(batches // 3):
                ids += await publish(hub, [{"type": "burst", "data": k}] * per_batch)
            return ids

        published = await asyncio.gather(*(publisher(k) for k in range(3)))
        received = await asyncio.wait_for(asyncio.gather(*readers), TIMEOUT)
    everything = sorted(itertools.chain(*published), key=lambda i: int(i.split("-")[1]))
    for ids in received:
        assert ids == everything  # all of them, in order
    assert hub.fanout.slow_drops["grpc_plasma"] == 0
    assert hub.fanout.pressure.waited > 0, "the hub never held a publisher back"
    assert hub.fanout.pressure.refused == 0


async def fill(hub: Hub) -> list[str]:
    """Publish big events until the clients' sockets are full and the hub is behind (asked
    over HTTP: by then the hub has written what the sockets take)."""
    ids: list[str] = []
    while await metric(hub, "cachewire_hub_behind") != 1.0:
        assert len(ids) < 4_000, "the hub never got behind"
        ids += await publish(hub, [{"type": "t", "data": BIG}] * 8)
    return ids


@pytest.fixture
def stalled_stay_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clients that stop reading count as "still written to" for the whole test, so that
    they keep the hub behind as long as the test needs (normally half a second)."""
    monkeypatch.setattr(core, "STALLED_AFTER", 3600.0)


@pytest.mark.usefixtures("stalled_stay_behind")
async def test_past_the_wait_publishes_are_refused_with_retry_after_and_nothing_stored(
    hub_factory: Callable[..., Any],
) -> None:
    hub = await hub_factory(queue_size=10_000, lag_threshold=4, publish_wait=0.2)
    slow = [await subscribe(hub, "/?eventType=t", rcvbuf=4096) for _ in range(2)]
    try:
        await fill(hub)
        head = hub.broker.head_id()

        status, headers, body = await post(hub, {"type": "t", "data": "refused"})
        assert status == 503
        assert headers["Retry-After"] == "1"
        assert body["status"] == 503 and "behind" in body["error"]

        async with grpc.aio.insecure_channel(f"127.0.0.1:{hub.grpc_port}") as channel:
            call = hub_pb2_grpc.HubStub(channel).Publish(
                hub_pb2.PublishRequest(events=[hub_pb2.EventInput(type="t")]), timeout=TIMEOUT
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            trailers = dict(await call.trailing_metadata() or ())
            assert trailers.get("grpc-retry-pushback-ms") == "1000"

        assert hub.broker.head_id() == head  # nothing stored
        assert await metric(hub, "cachewire_hub_publish_overloaded_total") == 2.0
        assert await metric(hub, "cachewire_hub_behind") == 1.0
        assert hub.fanout.slow_drops["sse"] == 0
    finally:
        for client in slow:
            client.close()


@pytest.mark.usefixtures("stalled_stay_behind")
async def test_a_waiting_publish_goes_through_once_subscribers_catch_up(
    hub_factory: Callable[..., Any],
) -> None:
    hub = await hub_factory(queue_size=10_000, lag_threshold=4, publish_wait=TIMEOUT)
    slow = [await subscribe(hub, "/?eventType=t,end", rcvbuf=4096) for _ in range(2)]
    try:
        first = await fill(hub)
        waiting = asyncio.create_task(publish(hub, {"type": "end"}))
        await wait_until(lambda: hub.fanout.pressure.waited == 1, TIMEOUT, "a publish waiting")
        assert not waiting.done()
        # The clients read: the hub catches up, and the held publish is stored and delivered.
        got = await asyncio.gather(*(c.events(len(first) + 1) for c in slow))
        (end_id,) = await waiting
        for events in got:
            assert [i for i, _ in events] == [*first, end_id]
        assert hub.fanout.pressure.refused == 0
    finally:
        for client in slow:
            client.close()


async def test_one_stalled_client_among_readers_is_dropped_alone_publishers_never_wait(
    hub_factory: Callable[..., Any],
) -> None:
    """A stalled client is slower than the rest: it is the one dropped; the hub is not
    behind, so publishers are never held and the readers get everything."""
    hub = await hub_factory(queue_size=64, lag_threshold=8, publish_wait=0.0, grace=0.5)
    stalled = await subscribe(hub, "/?eventType=t,end", rcvbuf=4096)
    readers = [await subscribe(hub, "/?eventType=t,end") for _ in range(2)]
    try:
        tasks = [asyncio.create_task(read_until_end(c)) for c in readers]
        ids: list[str] = []
        while not hub.fanout.slow_drops["sse"]:
            assert len(ids) < 4_000, "the stalled client was never dropped"
            ids += await publish(hub, [{"type": "t", "data": BIG}] * 8)
        await publish(hub, {"type": "end"})
        for got in await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT):
            assert got == ids
        assert hub.fanout.slow_drops["sse"] == 1
        assert hub.fanout.pressure.refused == 0
    finally:
        for client in [stalled, *readers]:
            client.close()


async def read_until_end(client: Any) -> list[str]:
    got: list[str] = []
    while True:
        event_id, data = (await client.events(1))[0]
        if data["meta"]["type"] == "end":
            return got
        got.append(event_id)
