"""An in-memory sink for unit tests of the applier: a dict as the cache, a switch to fail."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from cachewire.sidecar.sinks.base import Invalidation, SinkError


class MemorySink:
    """Applies invalidations to `self.cache`; records every batch and flush in order."""

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.cache: dict[str, object] = {}
        self.batches: list[list[str]] = []  # ids of each applied batch
        self.flushes: list[str] = []  # reasons
        self.log: list[str] = []  # "apply:<ids>" / "flush:<cause>", in order
        self.failing = False
        self.gate: asyncio.Event | None = None  # when set, apply waits for it
        self.entered = asyncio.Event()  # set when an apply begins
        self.calls = 0
        self.started = self.closed = False

    async def start(self) -> None:
        self.started = True

    async def apply(self, batch: Sequence[Invalidation]) -> None:
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            raise SinkError(f"{self.name} is down")
        for inv in batch:
            for key in inv.keys:
                self.cache.pop(key, None)
            for prefix in inv.prefixes:
                for key in [k for k in self.cache if k.startswith(prefix)]:
                    del self.cache[key]
        ids = [inv.id for inv in batch]
        self.batches.append(ids)
        self.log.append("apply:" + ",".join(ids))

    async def flush(self, reason: str) -> None:
        self.calls += 1
        if self.failing:
            raise SinkError(f"{self.name} is down")
        self.cache.clear()
        self.flushes.append(reason)
        self.log.append("flush:" + reason.split(":", 1)[0])

    async def check(self) -> bool:
        return not self.failing

    async def close(self) -> None:
        self.closed = True

    @property
    def applied_ids(self) -> list[str]:
        return [i for batch in self.batches for i in batch]
