"""sidecar.client.Invalidator against a real RelaySink over gRPC, in thread and asyncio mode.

The relay runs on the test's event loop; a thread-mode Invalidator runs its own loop and
channel in its thread. Every wait is on a fact (an id applied, a counter), bounded by WAIT.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import cachetools
import pytest

from cachewire.sidecar.client import Invalidator
from cachewire.sidecar.sinks.base import Invalidation
from cachewire.sidecar.sinks.local import RelaySink
from tests.servers import ROOT, free_port

WAIT = 10.0
Factory = Callable[..., Awaitable[Invalidator]]


@pytest.fixture
async def relay() -> AsyncIterator[RelaySink]:
    sink = RelaySink(0)
    await sink.start()
    yield sink
    await sink.close()


@pytest.fixture(params=["thread", "asyncio"])
async def invalidator(request: pytest.FixtureRequest, relay: RelaySink) -> AsyncIterator[Factory]:
    """Factory: `await invalidator(topics=[...])` → a connected Invalidator on a fresh cache,
    run in a thread or as a task (both modes run every test that uses it)."""
    started: list[Invalidator] = []

    async def make(**kwargs: Any) -> Invalidator:
        kwargs.setdefault("topics", ["user"])
        kwargs.setdefault("cache", cachetools.LRUCache(maxsize=1000))
        inv = Invalidator(f"127.0.0.1:{relay.port}", backoff_base=0.02, backoff_cap=0.1, **kwargs)
        if request.param == "thread":
            inv.start()
        else:
            inv.start_task()
        started.append(inv)
        async with asyncio.timeout(WAIT):
            await inv.wait_connected_async()
        return inv

    yield make
    for inv in started:
        if request.param == "thread":
            await asyncio.to_thread(inv.stop)
        else:
            await inv.aclose()


def inv(event_id: str, type: str = "user:1", **kw: Any) -> Invalidation:
    return Invalidation(id=event_id, type=type, **kw)


def fill(client: Invalidator, **items: Any) -> None:
    with client.lock:
        client.cache.update(items)


async def applied(client: Invalidator, event_id: str) -> None:
    async with asyncio.timeout(WAIT):
        await client.wait_applied_async(event_id)


async def until(client: Invalidator, predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        await client.wait_until_async(predicate)


async def test_a_batch_deletes_its_keys_and_prefixes(
    relay: RelaySink, invalidator: Factory
) -> None:
    client = await invalidator()
    fill(client, **{"user:1": "a", "user:2": "b", "feed:1:x": "c", "feed:2": "d", "keep": "e"})
    await relay.apply(
        [
            inv("h-1", keys=("user:1",)),
            inv("h-2", "user:2", keys=("user:2",), prefixes=("feed:1:",)),
        ]
    )
    await applied(client, "h-2")
    assert dict(client.cache) == {"feed:2": "d", "keep": "e"}
    assert client.position == "h-2"
    assert client.stats.applied == 2


async def test_other_topics_do_not_reach_the_cache(relay: RelaySink, invalidator: Factory) -> None:
    client = await invalidator(topics=["user"])
    fill(client, **{"order:1": "a", "user:1": "b"})
    await relay.apply(
        [inv("h-1", "order:1", keys=("order:1",)), inv("h-2", "user:1", keys=("user:1",))]
    )
    await applied(client, "h-2")
    assert dict(client.cache) == {"order:1": "a"}


async def test_flush_clears_the_cache(relay: RelaySink, invalidator: Factory) -> None:
    client = await invalidator()
    fill(client, a=1, b=2)
    await relay.flush("hub reset")
    await until(client, lambda: client.stats.resets == 1)
    assert len(client.cache) == 0
    assert client.connected  # a reset is not a disconnect: the stream goes on
    await relay.apply([inv("h-1", keys=("x",))])
    await applied(client, "h-1")


async def test_an_event_with_flush_clears_the_cache(relay: RelaySink, invalidator: Factory) -> None:
    client = await invalidator()
    fill(client, a=1)
    await relay.apply([inv("h-1", flush=True)])
    await applied(client, "h-1")
    assert len(client.cache) == 0


async def test_relay_down_clears_and_the_client_resumes_when_it_is_back(
    relay: RelaySink, invalidator: Factory
) -> None:
    """The relay goes away: the cache is cleared and fills are not stored; events applied
    while the app is away are replayed on its return (no reset, no second clear)."""
    client = await invalidator()
    await relay.apply([inv("h-1", keys=("x",))])
    await applied(client, "h-1")
    fill(client, a=1)

    await relay.close()
    await until(client, lambda: client.stats.drops >= 1)
    assert len(client.cache) == 0
    assert not client.guard.storing
    assert client.guard.get_or_load("user:3", lambda: "v") == "v"
    assert "user:3" not in client.cache  # nothing is stored while invalidations may be lost

    await relay.apply([inv("h-2", keys=("user:2",))])  # the app is away
    fill(client, **{"user:2": "stale"})  # a direct writer refills meanwhile
    await relay.start()  # same port, same history
    await applied(client, "h-2")
    assert client.connected and client.guard.storing
    assert "user:2" not in client.cache
    assert client.stats.resets == 0
    assert client.stats.connects >= 2


async def test_a_relay_restart_resets_the_client(invalidator: Factory, relay: RelaySink) -> None:
    """A new relay process does not know the app's position: it resets, the cache clears."""
    client = await invalidator()
    await relay.apply([inv("h-1", keys=("x",))])
    await applied(client, "h-1")
    port = relay.port
    await relay.close()
    await until(client, lambda: not client.connected)
    fill(client, a=1)
    fresh = RelaySink(port)
    await fresh.start()
    try:
        await until(client, lambda: client.stats.resets == 1 and client.connected)
        assert len(client.cache) == 0
        await fresh.apply([inv("h-9", keys=("y",))])
        await applied(client, "h-9")
    finally:
        await fresh.close()


async def test_silence_longer_than_max_staleness_clears_the_cache(invalidator: Factory) -> None:
    """The fixture's relay heartbeats every second; a bound below that reads as silence."""
    client = await invalidator(max_staleness=0.2)
    fill(client, a=1)
    await until(client, lambda: client.stats.drops >= 1)
    assert len(client.cache) == 0
    await until(client, lambda: client.stats.connects >= 2)  # and it reconnects


async def test_stop_clears_the_cache_and_stops_storing(relay: RelaySink) -> None:
    client = Invalidator(f"127.0.0.1:{relay.port}", ["user"], cachetools.LRUCache(10))
    async with client:
        await client.wait_connected_async()
        fill(client, a=1)
    assert len(client.cache) == 0
    assert not client.guard.storing


async def test_invalidation_during_a_load_is_not_overwritten(
    relay: RelaySink, invalidator: Factory
) -> None:
    """The cached() race end to end: an app thread loads user:42, the invalidation arrives
    over gRPC while the loader runs, and the old value is not stored."""
    client = await invalidator()
    inside, release = threading.Event(), threading.Event()
    results: list[str] = []

    @client.cached(key=lambda uid: f"user:{uid}")
    def load_user(uid: int) -> str:
        inside.set()
        assert release.wait(WAIT)
        return "old"

    worker = threading.Thread(target=lambda: results.append(load_user(42)))
    worker.start()
    assert await asyncio.to_thread(inside.wait, WAIT)
    await relay.apply([inv("h-1", "user:42", keys=("user:42",))])
    await applied(client, "h-1")
    release.set()
    await asyncio.to_thread(worker.join, WAIT)
    assert results == ["old"]
    assert "user:42" not in client.cache
    assert client.guard.discarded == 1


def test_thread_mode_works_from_sync_code() -> None:
    """A sync app: the relay on a loop in one thread, the app's code in another, blocking
    waits (wait_connected, wait_applied) and the context manager."""
    loop = asyncio.new_event_loop()
    sink = RelaySink(0)
    loop.run_until_complete(sink.start())
    runner = threading.Thread(target=loop.run_forever)
    runner.start()
    try:
        cache: cachetools.TTLCache[Any, Any] = cachetools.TTLCache(maxsize=10, ttl=3600)
        with Invalidator(f"127.0.0.1:{sink.port}", ["user"], cache) as client:
            assert client.wait_connected(WAIT)
            client.cache["user:1"] = "a"
            asyncio.run_coroutine_threadsafe(
                sink.apply([inv("h-1", keys=("user:1",))]), loop
            ).result(WAIT)
            assert client.wait_applied("h-1", WAIT)
            assert "user:1" not in cache
    finally:
        asyncio.run_coroutine_threadsafe(sink.close(), loop).result(WAIT)
        loop.call_soon_threadsafe(loop.stop)
        runner.join(WAIT)
        loop.close()


def test_bad_arguments_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="topic"):
        Invalidator("127.0.0.1:1", ["a::b"], {})
    with pytest.raises(ValueError, match="target"):
        Invalidator("", ["a"], {})


@pytest.fixture
def unreachable() -> Iterator[str]:
    yield f"127.0.0.1:{free_port()}"


async def test_an_unreachable_target_keeps_retrying_without_storing(unreachable: str) -> None:
    client = Invalidator(
        unreachable, ["user"], cachetools.LRUCache(10), backoff_base=0.01, backoff_cap=0.02
    )
    async with client:
        await until(client, lambda: client.stats.drops >= 3)
        assert not client.connected
        assert client.guard.get_or_load("k", lambda: 1) == 1
        assert "k" not in client.cache


def test_the_client_and_the_relay_never_import_the_hub() -> None:
    """App processes import cachewire.sidecar.client alone: no hub code comes with it."""
    code = (
        "import sys, sidecar.client, sidecar.sinks.local\n"
        "bad = sorted(m for m in sys.modules if m == 'hub' or m.startswith('hub.'))\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
