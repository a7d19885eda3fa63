"""memcached: pipelined quiet meta deletes, confirmed by one reply; flush_all for a flush.

One asyncio connection (one connection keeps deletes in order) carries a batch's deletes
in one write as meta-protocol commands in quiet mode, `md <key> q`, followed by a no-op,
`mn`. memcached does not answer a quiet delete that succeeded (`HD`), and answers `mn` with
`MN` once every command before it has been processed: so `MN` confirms the batch. A key
that was not there (`NF`, which memcached 1.6 still sends) is gone too; any other line
before `MN` is an error reply that fails the batch; the applier keeps it and retries. A
batch costs one write, and one short read instead of a reply per key (memcached 1.6+,
docs/sidecar.md). A socket failure or a
timeout closes the connection (the next call reconnects) and raises: never a silent loss.

memcached cannot list keys, so a prefix cannot be deleted. `prefixes` policy "flush"
(the default) turns a prefix invalidation into flush_all (when flush is on); "ignore"
skips it, logged and counted. Alternatives are described in docs/sidecar.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Sequence

from cachewire.sidecar.metrics import Metrics
from cachewire.sidecar.sinks.base import Invalidation, SinkError

log = logging.getLogger("cachewire.sidecar.memcached")

MAX_KEY_BYTES = 250
CHUNK = 10_000  # keys per pipelined write (quiet: memcached answers one line per write)
_BAD_BYTE = re.compile(rb"[\x00-\x20\x7f]")  # whitespace and control characters


def key_problem(key: str) -> str | None:
    """Why memcached cannot hold this key (so it cannot be stale there), or None."""
    return raw_key_problem(key.encode())


def raw_key_problem(raw: bytes) -> str | None:
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
        self._host, self._port = host.strip("[]"), int(port)
        self._timeout = timeout
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock = asyncio.Lock()  # one request on the connection at a time

    async def _request(self, payload: bytes, end: bytes) -> list[bytes]:
        """Send `payload`; the reply lines up to the one starting with `end` (excluded)."""
        async with self._lock:
            try:
                async with asyncio.timeout(self._timeout):
                    if self._conn is None:
                        self._conn = await asyncio.open_connection(self._host, self._port)
                    reader, writer = self._conn
                    writer.write(payload)
                    await writer.drain()
                    lines = []
                    while not (line := await reader.readline()).startswith(end):
                        if not line:
                            raise ConnectionError("memcached closed the connection")
                        lines.append(line.rstrip())
                    return lines
            except (OSError, TimeoutError, EOFError) as exc:
                self._disconnect()
                what = type(exc).__name__
                raise SinkError(f"memcached {self.address}: {what}: {exc}") from exc

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
            self._conn = None

    async def start(self) -> None:
        pass  # connects on first use; a memcached that is down now is retried later

    async def apply(self, batch: Sequence[Invalidation]) -> None:
        keys: list[bytes] = []  # encoded once: checked, then sent as they are
        prefixed: list[str] = []
        bad = _BAD_BYTE.search
        for inv in batch:
            for key in inv.keys:
                raw = key.encode()
                if len(raw) <= MAX_KEY_BYTES and not bad(raw):
                    keys.append(raw)
                else:
                    self._skip(raw_key_problem(raw) or "unknown", key)
            prefixed.extend(inv.prefixes)
        if prefixed:
            await self._prefixes(prefixed)
        unique = list(dict.fromkeys(keys))
        for i in range(0, len(unique), CHUNK):
            await self._delete(unique[i : i + CHUNK])

    async def _delete(self, keys: list[bytes]) -> None:
        """Quiet meta deletes and a no-op: `MN` alone means every delete succeeded."""
        payload = b"".join([b"md %b q\r\n" % k for k in keys]) + b"mn\r\n"
        errors = [line for line in await self._request(payload, b"MN") if line != b"NF"]
        if errors:
            raise SinkError(
                f"memcached {self.address}: {len(errors)} of {len(keys)} deletes failed: "
                f"{errors[0][:200].decode(errors='replace')}"
            )

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
        # "OK" ends the reply; any line before it (an error) is in `unexpected`.
        unexpected = await self._request(b"flush_all\r\n", b"OK")
        if unexpected:
            raise SinkError(f"memcached {self.address}: flush_all: {unexpected[0][:200]!r}")

    async def check(self) -> bool:
        try:
            await self._request(b"mn\r\n", b"MN")
        except SinkError:
            return False
        return True

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                writer = self._conn[1]
                self._disconnect()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
