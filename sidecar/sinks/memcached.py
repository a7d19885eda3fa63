"""memcached: pipelined deletes whose every reply is checked, flush_all for a flush.

pymemcache is a blocking client; it runs on one dedicated thread (its client is not
thread-safe, and one connection keeps deletes in order), so the event loop never waits
on a socket. `delete_many(noreply=False)` sends a batch's deletes in one write and then
reads one reply per key: DELETED and NOT_FOUND are both success (the key is gone); any
error reply or socket failure raises, and the applier keeps the batch and retries it.
pymemcache's default `noreply` would hide exactly those failures, so it is never used.

memcached cannot list keys, so a prefix cannot be deleted. `prefixes` policy "flush"
(the default) turns a prefix invalidation into flush_all (when flush is on); "ignore"
skips it, logged and counted. Alternatives are described in docs/sidecar.md.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheError

from cachewire.sidecar.metrics import Metrics
from cachewire.sidecar.sinks.base import Invalidation, SinkError

log = logging.getLogger("cachewire.sidecar.memcached")

MAX_KEY_BYTES = 250
CHUNK = 1000  # keys per pipelined write: replies (≤ 11 bytes each) fit socket buffers
_BAD_BYTE = re.compile(rb"[\x00-\x20\x7f]")  # whitespace and control characters


def key_problem(key: str) -> str | None:
    """Why memcached cannot hold this key (so it cannot be stale there), or None."""
    raw = key.encode()
    if len(raw) > MAX_KEY_BYTES:
        return "too_long"
    if _BAD_BYTE.search(raw):
        return "whitespace_or_control"
    return None


class MemcachedSink:
    name = "memcached"

    def __init__(
        self,
        address: str,
        *,
        flush_enabled: bool = True,
        prefixes: str = "flush",
        metrics: Metrics | None = None,
        timeout: float = 5.0,
    ) -> None:
        host, _, port = address.rpartition(":")
        self.address = address
        self.flush_enabled = flush_enabled
        self.prefix_policy = prefixes
        self.metrics = metrics
        self._client = Client(
            (host.strip("[]"), int(port)),
            connect_timeout=timeout,
            timeout=timeout,
            no_delay=True,
            default_noreply=False,
            allow_unicode_keys=True,
        )
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memcached")

    async def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)
        except (MemcacheError, OSError) as exc:
            raise SinkError(f"memcached {self.address}: {type(exc).__name__}: {exc}") from exc

    async def start(self) -> None:
        pass  # connects on first use; a memcached that is down now is retried later

    async def apply(self, batch: Sequence[Invalidation]) -> None:
        keys: list[str] = []
        prefixed: list[str] = []
        for inv in batch:
            for key in inv.keys:
                problem = key_problem(key)
                if problem is None:
                    keys.append(key)
                else:
                    self._skip(problem, key)
            prefixed.extend(inv.prefixes)
        if prefixed:
            await self._prefixes(prefixed)
        unique = list(dict.fromkeys(keys))
        for i in range(0, len(unique), CHUNK):
            await self._call(self._delete, unique[i : i + CHUNK])

    def _delete(self, keys: list[str]) -> None:
        self._client.delete_many(keys, noreply=False)  # raises on any error reply

    async def _prefixes(self, prefixes: list[str]) -> None:
        if self.prefix_policy == "flush" and self.flush_enabled:
            await self.flush("prefix")
            if self.metrics is not None:
                self.metrics.flushes.labels(self.name, "prefix").inc()
            log.info(
                "memcached flushed for a prefix invalidation (it cannot list keys)",
                extra={"prefix": prefixes[0][:300], "prefixes": len(prefixes)},
            )
            return
        for prefix in prefixes:
            self._skip("prefix_unsupported", prefix)

    def _skip(self, reason: str, what: str) -> None:
        if self.metrics is not None:
            self.metrics.skipped_keys.labels(self.name, reason).inc()
        log.warning(
            "memcached cannot apply this; skipped", extra={"reason": reason, "key": what[:300]}
        )

    async def flush(self, reason: str) -> None:
        await self._call(self._flush_all)

    def _flush_all(self) -> None:
        if not self._client.flush_all(noreply=False):
            raise SinkError("flush_all was not confirmed")

    async def check(self) -> bool:
        try:
            await self._call(self._client.version)
        except SinkError:
            return False
        return True

    async def close(self) -> None:
        await self._call(self._client.close)
        self._thread.shutdown(wait=True)
