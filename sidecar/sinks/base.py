"""What a sink is: one cache the sidecar guards (memcached, Redis, the local relay, a webhook).

The applier hands each sink batches of invalidations in id order. A sink raises `SinkError`
(or any OSError) when the cache did not confirm the deletes; the applier then keeps the
batch pending for that sink, retries with backoff, and flushes the sink when too much is
pending. A sink never swallows a failure: an unconfirmed delete is a lost invalidation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Invalidation:
    """One event as the sidecar applies it; `keys` already include rule-derived keys."""

    id: str
    type: str
    keys: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    flush: bool = False
    data_json: str = "null"
    published_at: float = 0.0  # hub receive time, Unix seconds
    traceparent: str = ""
    tracestate: str = ""


class SinkError(Exception):
    """The cache did not confirm an operation; the message says which and why."""


class Sink(Protocol):
    name: str  # "memcached", "redis", "relay", "webhook": a metric label and a log field

    async def start(self) -> None: ...

    async def apply(self, batch: Sequence[Invalidation]) -> None:
        """Delete what the batch invalidates, in one round trip where the backend allows."""
        ...

    async def flush(self, reason: str) -> None:
        """Invalidate everything this sink guards (after a gap, or an event with flush)."""
        ...

    async def check(self) -> bool:
        """Whether the backend is reachable now (for /readyz)."""
        ...

    async def close(self) -> None: ...
