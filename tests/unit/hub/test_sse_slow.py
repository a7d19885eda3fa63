"""Slow consumers over real sockets: a client that stops reading is reset and dropped alone,
the others keep receiving everything, and the hub lets go of the stalled connection."""

from __future__ import annotations

import asyncio
import re

import aiohttp

from cachewire.hub.server import Hub
from tests.servers import wait_until
from tests.sse_wire import SseClient, StreamEnded, parse_frame
from tests.unit.hub.sse_helpers import (
    HubFactory,
    connected_peers,
    publish,
    start,
    subscribe,
)

BIG = "x" * 16_384  # a few hundred of these fill the kernel's socket buffers
MAX_EVENTS = 4_000  # bound on the publishing loop (64 MiB), far above what is needed


async def read_ids(client: SseClient, end_type: str) -> list[str]:
    """Read events until one of `end_type` arrives; the ids before it."""
    got: list[str] = []
    while True:
        event_id, data = (await client.events(1))[0]
        if data["meta"]["type"] == end_type:
            return got
        assert event_id is not None
        got.append(event_id)


async def publish_until_dropped(hub: Hub) -> list[str]:
    """Publish big events until the hub drops one slow subscriber; the ids published."""
    ids: list[str] = []
    while not hub.fanout.slow_drops["sse"]:
        assert len(ids) < MAX_EVENTS, "the stalled client was never dropped"
        ids += await publish(hub, [{"type": "t", "data": BIG}] * 8)
    return ids


async def metric(hub: Hub, name: str) -> float:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{hub.http_port}/metrics") as resp,
    ):
        text = await resp.text()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


async def test_client_that_never_reads_is_dropped_while_a_fast_one_gets_everything(
    hub_factory: HubFactory,
) -> None:
    hub = await start(hub_factory, queue_size=64, grace=0.5)
    stalled = await subscribe(hub, "/?eventType=t,end", rcvbuf=4096)
    fast = await subscribe(hub, "/?eventType=t,end")
    try:
        reader = asyncio.create_task(read_ids(fast, "end"))
        ids = await publish_until_dropped(hub)
        ids += await publish(hub, [{"type": "t", "data": "after"}] * 3)
        await publish(hub, {"type": "end"})
        assert await reader == ids
        assert hub.fanout.count("sse") == 1
        drops = 'cachewire_hub_slow_consumer_drops_total{transport="sse"}'
        assert await metric(hub, drops) == 1.0
        assert await metric(hub, 'cachewire_hub_connections{transport="sse"}') == 1.0
        # Memory stays bounded: without the client reading a byte, the hub lets go of the
        # stalled connection (it aborts it `grace` after the drop) and of what it buffered.
        peer = stalled.sock.getsockname()
        await wait_until(lambda: peer not in connected_peers(hub), what="stalled connection closed")
        await stalled.until_end()
        assert stalled.eof
    finally:
        stalled.close()
        fast.close()


async def test_dropped_client_that_reads_again_gets_a_reset_and_can_resume_losslessly(
    hub_factory: HubFactory,
) -> None:
    """What was written reaches it, then a reset without an id line and the stream's end;
    resuming from the last id it received replays the rest: nothing is silently lost."""
    hub = await start(hub_factory, queue_size=64, grace=30)
    slow = await subscribe(hub, "/?eventType=t", rcvbuf=4096)
    try:
        await slow.frame()  # retry
        await slow.frame()  # head id
        ids = await publish_until_dropped(hub)
        received: list[str] = []
        reset = None
        while True:
            try:
                frame = await slow.frame()
            except StreamEnded:
                break
            event_id, data = parse_frame(frame)
            if data["meta"]["type"] == "cachewire:reset":
                assert event_id is None
                reset = data
            else:
                assert reset is None, "nothing follows the reset"
                assert event_id is not None
                received.append(event_id)
        assert slow.ended_cleanly
        assert reset is not None and reset["meta"]["reason"] == "slow_consumer"
        assert received == ids[: len(received)]  # a prefix, in order
        assert len(received) < len(ids)
    finally:
        slow.close()
    async with await subscribe(
        hub, "/?eventType=t", headers=[("Last-Event-ID", received[-1])]
    ) as again:
        rest = [event_id for event_id, _ in await again.events(len(ids) - len(received))]
    assert received + rest == ids


async def test_many_stalled_clients_do_not_delay_a_fast_one(hub_factory: HubFactory) -> None:
    hub = await start(hub_factory, queue_size=32, grace=0.5)
    stalled = [await subscribe(hub, "/?eventType=t", rcvbuf=4096) for _ in range(5)]
    fast = await subscribe(hub, "/?eventType=t,end")
    try:
        reader = asyncio.create_task(read_ids(fast, "end"))
        ids: list[str] = []
        while hub.fanout.slow_drops["sse"] < len(stalled):
            assert len(ids) < MAX_EVENTS, "stalled clients were never dropped"
            ids += await publish(hub, [{"type": "t", "data": BIG}] * 8)
        await publish(hub, {"type": "end"})
        assert await reader == ids
        assert hub.fanout.count("sse") == 1
    finally:
        for client in [*stalled, fast]:
            client.close()
