"""Prefix invalidations in the Redis sink against a real redis-server: one SCAN pass per
batch however many prefixes, and key deletes of later events not queued behind it."""

from __future__ import annotations

import asyncio

import redis

from cachewire.sidecar.applier import Applier
from cachewire.sidecar.sinks.base import Invalidation
from cachewire.sidecar.sinks.redis import SCAN_COUNT, RedisSink
from cachewire.sidecar.state import Slot
from tests.servers import Proc, wait_until

WAIT = 10.0
KEYS = 20_000


def scan_calls(r: redis.Redis) -> int:
    return int(r.info("commandstats").get("cmdstat_scan", {}).get("calls", 0))


async def test_two_hundred_prefixes_cost_one_scan_pass(redis_server: Proc) -> None:
    """200 prefixes against 20k keys: one pass (≈ keys / SCAN COUNT calls), not 200."""
    r = redis.Redis(port=redis_server.port)
    r.mset({f"item:{i}": "v" for i in range(KEYS)})
    r.mset({f"feed:{i}:x": "v" for i in range(300)})
    sink = RedisSink(f"redis://127.0.0.1:{redis_server.port}/0")
    try:
        before = scan_calls(r)
        prefixes = tuple(f"feed:{i}:" for i in range(200))
        await sink.apply([Invalidation("e-1", "feed", prefixes=prefixes)])
        calls = scan_calls(r) - before
        assert calls <= 2 * (KEYS // SCAN_COUNT) + 2, calls
        assert r.exists("feed:0:x", "feed:199:x") == 0
        assert r.exists("feed:200:x", "feed:299:x", "item:0") == 3
    finally:
        await sink.close()
        r.close()


class GatedRedisSink(RedisSink):
    """A real Redis sink whose prefix scan waits for the test to open a gate."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.gate = asyncio.Event()
        self.scanning = asyncio.Event()

    async def _scan(self, prefixes):  # type: ignore[no-untyped-def,override]
        self.scanning.set()
        await self.gate.wait()
        async for chunk in super()._scan(prefixes):
            yield chunk


async def test_keys_of_later_events_are_deleted_while_a_prefix_scan_runs(
    redis_server: Proc,
) -> None:
    """Event 1 has a prefix (a scan in progress); event 2's key is deleted meanwhile, and
    event 2 counts as applied only after event 1."""
    r = redis.Redis(port=redis_server.port)
    r.mset({"feed:1:a": "v", "user:2": "v"})
    sink = GatedRedisSink(f"redis://127.0.0.1:{redis_server.port}/0")
    applier = Applier([Slot(sink)], batch_delay=0.0, batch_size=1)
    applier._gap = None
    applier.start()
    try:
        applier.on_events([Invalidation("e-1", "feed", prefixes=("feed:1:",))])
        async with asyncio.timeout(WAIT):
            await sink.scanning.wait()
        applier.on_events([Invalidation("e-2", "user", keys=("user:2",))])
        await wait_until(lambda: not r.exists("user:2"), WAIT, "user:2 deleted")
        assert r.exists("feed:1:a") == 1  # the scan has not run yet
        assert applier.status()["applied_id"] != "e-2"
        sink.gate.set()
        async with asyncio.timeout(WAIT):
            await applier.wait_applied("e-2")
        assert r.exists("feed:1:a") == 0
    finally:
        await applier.stop(0)
        await sink.close()
        r.close()
