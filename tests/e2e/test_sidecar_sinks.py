"""The sidecar's sinks against real memcached, redis-server and an aiohttp webhook endpoint."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager

import pytest
import redis
from aiohttp import web
from pymemcache.client.base import Client

from cachewire.sidecar.metrics import Metrics
from cachewire.sidecar.sinks.base import Invalidation, SinkError
from cachewire.sidecar.sinks.memcached import MemcachedSink, key_problem
from cachewire.sidecar.sinks.redis import RedisSink, match_pattern
from cachewire.sidecar.sinks.webhook import WebhookSink, batch_body
from tests.servers import Proc, start_memcached

BIG = 2000  # more keys than one pipelined write (Redis)
MC_BIG = 12_000  # more keys than one pipelined write (memcached CHUNK = 10,000)


def inv(
    n: int, keys: tuple[str, ...] = (), prefixes: tuple[str, ...] = (), **kw: object
) -> Invalidation:
    return Invalidation(id=f"e-{n}", type="user", keys=keys, prefixes=prefixes, **kw)  # type: ignore[arg-type]


@contextmanager
def memcache(port: int) -> Iterator[Client]:
    client = Client(("127.0.0.1", port), default_noreply=False, allow_unicode_keys=True)
    try:
        yield client
    finally:
        client.close()


# --- memcached ---


def test_memcached_key_rules() -> None:
    assert key_problem("user:42") is None
    assert key_problem("ключ") is None  # UTF-8 is fine for memcached
    assert key_problem("a" * 251) == "too_long"
    assert key_problem("a b") == "whitespace_or_control"
    assert key_problem("a\x01") == "whitespace_or_control"


async def test_memcached_deletes_in_pipelined_batches(memcached_server: Proc) -> None:
    """Existing and absent keys (NOT_FOUND is success) in one batch, past one write's chunk."""
    keys = [f"k{i}" for i in range(MC_BIG)]
    metrics = Metrics()
    sink = MemcachedSink(f"127.0.0.1:{memcached_server.port}", metrics=metrics)
    await sink.start()
    with memcache(memcached_server.port) as mc:
        mc.set_many({k: b"v" for k in keys[::2]})
        mc.set("keep", b"v")
        await sink.apply([inv(1, tuple(keys[:6000])), inv(2, (*keys[6000:], "bad key"))])
        assert mc.get_many(keys) == {}
        assert mc.get("keep") == b"v"
        assert metrics.skipped_keys.labels("memcached", "whitespace_or_control")._value.get() == 1
        assert await sink.check()
        await sink.close()


async def test_memcached_prefix_policy(memcached_server: Proc) -> None:
    """memcached cannot list keys: a prefix flushes (default) or is skipped and counted."""
    address = f"127.0.0.1:{memcached_server.port}"
    metrics = Metrics()
    ignore = MemcachedSink(address, prefixes="ignore", metrics=metrics)
    flush = MemcachedSink(address, prefixes="flush", metrics=metrics)
    with memcache(memcached_server.port) as mc:
        mc.set("user:1:a", b"v")
        await ignore.apply([inv(1, prefixes=("user:1:",))])
        assert mc.get("user:1:a") == b"v"
        assert metrics.skipped_keys.labels("memcached", "prefix_unsupported")._value.get() == 1
        await flush.apply([inv(2, prefixes=("user:1:",))])
        assert mc.get("user:1:a") is None
        assert metrics.flushes.labels("memcached", "prefix")._value.get() == 1
        mc.set("x", b"v")
        await flush.flush("test")
        assert mc.get("x") is None
        await ignore.close()
        await flush.close()


async def test_memcached_down_raises_and_recovers(memcached_server: Proc) -> None:
    """A dead memcached is a SinkError (never a silent loss); a restarted one works again."""
    port = memcached_server.port
    sink = MemcachedSink(f"127.0.0.1:{port}", timeout=2.0)
    try:
        await sink.apply([inv(1, ("a",))])
        memcached_server.kill()
        with pytest.raises(SinkError, match="memcached"):
            await sink.apply([inv(2, ("a",))])
        assert not await sink.check()
        restarted = start_memcached(port)
        try:
            with memcache(port) as mc:
                mc.set("a", b"v")
                await sink.apply([inv(3, ("a",))])
                assert mc.get("a") is None
        finally:
            restarted.stop()
    finally:
        await sink.close()


async def test_memcached_error_reply_fails_the_batch() -> None:
    """Any reply to a quiet delete but NF fails the batch (the applier retries it). A real
    memcached cannot be made to refuse `md`, so this one is a recording stand-in."""
    received: list[bytes] = []
    served = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            received.append(line)
            if line.startswith(b"md a "):
                writer.write(b"NF\r\n")
            elif line.startswith(b"md b "):
                writer.write(b"SERVER_ERROR out of memory\r\n")
            elif line == b"mn\r\n":
                writer.write(b"MN\r\n")
        writer.close()
        await writer.wait_closed()
        served.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sink = MemcachedSink(f"127.0.0.1:{port}", timeout=5.0)
    try:
        await sink.apply([inv(1, ("a", "c"))])  # NF is success: the key is gone
        with pytest.raises(SinkError, match="1 of 3 deletes failed: SERVER_ERROR out of memory"):
            await sink.apply([inv(2, ("a", "b", "c"))])
        assert received[:3] == [b"md a q\r\n", b"md c q\r\n", b"mn\r\n"]
    finally:
        await sink.close()
        await asyncio.wait_for(served.wait(), 10)
        server.close()
        await server.wait_closed()


# --- Redis ---


def test_redis_prefix_pattern_escapes_glob_characters() -> None:
    assert match_pattern("user:1:") == "user:1:*"
    assert match_pattern("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\*"


async def test_redis_unlinks_keys_and_scans_prefixes(redis_server: Proc) -> None:
    r = redis.Redis(port=redis_server.port)
    r.mset({f"k{i}": "v" for i in range(BIG)})
    r.mset({"feed:1:a": "v", "feed:1:b": "v", "feed:10:a": "v", "a*b:1": "v", "axb:1": "v"})
    sink = RedisSink(f"redis://127.0.0.1:{redis_server.port}/0")
    await sink.start()
    try:
        await sink.apply([inv(1, tuple(f"k{i}" for i in range(BIG)), ("feed:1:", "a*b:"))])
        assert sorted(r.keys()) == [b"axb:1", b"feed:10:a"]
        assert await sink.check()
        await sink.flush("test")
        assert r.dbsize() == 0
    finally:
        await sink.close()
        r.close()


async def test_redis_down_raises(redis_server: Proc) -> None:
    sink = RedisSink(f"redis://127.0.0.1:{redis_server.port}/0", timeout=2.0)
    try:
        await sink.apply([inv(1, ("a",))])
        redis_server.kill()
        with pytest.raises(SinkError, match="redis"):
            await sink.apply([inv(2, ("a",))])
        with pytest.raises(SinkError, match="FLUSHDB"):
            await sink.flush("test")
        assert not await sink.check()
    finally:
        await sink.close()


# --- webhook ---

Endpoint = Callable[[list[int]], Awaitable[tuple[str, list[dict[str, object]]]]]


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    """Factory: await endpoint([500, 200]) → (url, received bodies); answers those statuses."""
    runners: list[web.AppRunner] = []

    async def make(statuses: list[int]) -> tuple[str, list[dict[str, object]]]:
        received: list[dict[str, object]] = []

        async def handle(request: web.Request) -> web.Response:
            received.append(await request.json())
            status = statuses.pop(0) if statuses else 200
            return web.json_response({"ok": status < 300}, status=status)

        app = web.Application()
        app.router.add_post("/invalidate", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}/invalidate", received

    yield make
    for runner in runners:
        await runner.cleanup()


def test_webhook_body() -> None:
    body = batch_body([inv(1, ("a",), data_json='{"x":1}', published_at=1.5)])
    assert json.loads(json.dumps(body)) == {
        "flush": False,
        "reason": "",
        "invalidations": [
            {
                "id": "e-1",
                "type": "user",
                "keys": ["a"],
                "prefixes": [],
                "flush": False,
                "data": {"x": 1},
                "published_at": 1.5,
            }
        ],
    }


async def test_webhook_non_2xx_raises_and_2xx_confirms(endpoint: Endpoint) -> None:
    url, received = await endpoint([503])
    sink = WebhookSink(url)
    await sink.start()
    try:
        with pytest.raises(SinkError, match="answered 503"):
            await sink.apply([inv(1, ("a",))])
        await sink.apply([inv(1, ("a",))])
        await sink.flush("reset: epoch_changed")
        assert [b["invalidations"] and b["invalidations"][0]["id"] for b in received[:2]] == [  # type: ignore[index]
            "e-1",
            "e-1",
        ]
        assert received[2] == {"flush": True, "reason": "reset: epoch_changed", "invalidations": []}
        assert await sink.check()
    finally:
        await sink.close()


async def test_webhook_unreachable_raises() -> None:
    from tests.servers import free_port

    sink = WebhookSink(f"http://127.0.0.1:{free_port()}/x", timeout=2.0)
    await sink.start()
    try:
        with pytest.raises(SinkError, match="webhook"):
            await sink.apply([inv(1, ("a",))])
        assert not await sink.check()
    finally:
        await sink.close()
