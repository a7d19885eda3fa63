"""Redis: UNLINK for keys (pipelined), SCAN + UNLINK for prefixes; a flush deletes the
app's cache prefixes (SCAN + UNLINK), or the whole database (FLUSHDB) when chosen.

All prefixes of a batch cost one SCAN pass over the keyspace (matched client-side), not
one pass each; the applier deletes the keys of later events meanwhile (`express_keys`).

UNLINK frees values in the background, so a large batch does not stall Redis. Deleting
real keys also makes Redis send its own client-side-caching invalidations to redis-py
clients that track those keys. redis-py retries a command once on a fresh connection
(after a Redis restart the pooled one is dead); longer outages are the applier's retries.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from cachewire.sidecar.sinks.base import Invalidation, SinkError

CHUNK = 500  # keys per UNLINK
SCAN_COUNT = 1000
_GLOB = str.maketrans({c: "\\" + c for c in "*?[]\\"})


def match_pattern(prefix: str) -> str:
    """A SCAN MATCH pattern for keys starting with `prefix` (glob characters escaped)."""
    return prefix.translate(_GLOB) + "*"


def scan_pattern(prefixes: Sequence[str]) -> str:
    """One SCAN MATCH pattern covering every prefix: their common start, then `*`."""
    return match_pattern(os.path.commonprefix(list(prefixes)))  # noqa: RUF071  # characters are what we want


class RedisSink:
    name = "redis"
    # Key deletes may run while a prefix scan is in progress (the pool has connections).
    express_keys = True

    def __init__(
        self,
        url: str,
        *,
        flush_enabled: bool = True,
        timeout: float = 5.0,
        flush_prefixes: Sequence[str] = (),
    ) -> None:
        """A flush deletes the keys under `flush_prefixes` (the app's cache namespace),
        or, when there are none, the whole database (FLUSHDB)."""
        self.url = url
        self.flush_enabled = flush_enabled
        self.flush_prefixes = tuple(flush_prefixes)
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 1)
        )

    async def start(self) -> None:
        pass  # connects on first use; a Redis that is down now is retried later

    async def apply(self, batch: Sequence[Invalidation]) -> None:
        keys = list(dict.fromkeys(k for inv in batch for k in inv.keys))
        prefixes = list(dict.fromkeys(p for inv in batch for p in inv.prefixes))
        try:
            if keys:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for i in range(0, len(keys), CHUNK):
                        pipe.unlink(*keys[i : i + CHUNK])
                    await pipe.execute()
            if prefixes:
                async for chunk in self._scan(prefixes):
                    await self._redis.unlink(*chunk)
        except (RedisError, OSError) as exc:
            raise SinkError(f"redis: {type(exc).__name__}: {exc}") from exc

    async def _scan(self, prefixes: Sequence[str]) -> AsyncIterator[list[bytes]]:
        """The keys starting with any of `prefixes`, in chunks, from one SCAN pass."""
        wanted = tuple(p.encode() for p in prefixes)
        chunk: list[bytes] = []
        pattern = scan_pattern(prefixes)
        async for key in self._redis.scan_iter(match=pattern, count=SCAN_COUNT):
            if not key.startswith(wanted):
                continue
            chunk.append(key)
            if len(chunk) >= CHUNK:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    async def flush(self, reason: str) -> None:
        if self.flush_prefixes:
            try:
                async for chunk in self._scan(self.flush_prefixes):
                    await self._redis.unlink(*chunk)
            except (RedisError, OSError) as exc:
                raise SinkError(f"redis flush (SCAN): {type(exc).__name__}: {exc}") from exc
            return
        try:
            ok = await self._redis.flushdb(asynchronous=True)
        except (RedisError, OSError) as exc:
            raise SinkError(f"redis FLUSHDB: {type(exc).__name__}: {exc}") from exc
        if not ok:
            raise SinkError("redis FLUSHDB was not confirmed")

    async def check(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        await self._redis.aclose()
