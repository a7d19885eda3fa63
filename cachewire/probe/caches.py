"""Writing a canary into a cache and asking whether it is still there.

The prober uses its own connections, not the sidecar's sinks: it looks at the cache the
way an application reading it would.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import redis.asyncio as aioredis
from pymemcache.client.base import Client


class CanaryCache(Protocol):
    name: str

    async def put(self, key: str, ttl: float) -> None: ...
    async def present(self, key: str) -> bool: ...
    async def close(self) -> None: ...


class MemcachedCanary:
    """pymemcache is blocking: its calls run on a thread of their own, never the loop."""

    name = "memcached"

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self._client = Client(
            (host, int(port)), default_noreply=False, timeout=2, connect_timeout=2
        )
        self._lock = asyncio.Lock()  # one pymemcache client: one call at a time

    async def put(self, key: str, ttl: float) -> None:
        async with self._lock:
            await asyncio.to_thread(self._client.set, key, b"1", max(1, int(ttl)), False)

    async def present(self, key: str) -> bool:
        async with self._lock:
            return await asyncio.to_thread(self._client.get, key) is not None

    async def close(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._client.close)


class RedisCanary:
    name = "redis"

    def __init__(self, url: str) -> None:
        self._client = aioredis.from_url(url, socket_connect_timeout=2, socket_timeout=2)

    async def put(self, key: str, ttl: float) -> None:
        await self._client.set(key, b"1", px=max(1, int(ttl * 1000)))

    async def present(self, key: str) -> bool:
        return bool(await self._client.exists(key))

    async def close(self) -> None:
        await self._client.aclose()
