"""Idempotent publishing: a retried request gets the ids of its first attempt.

A publisher sends an idempotency key with a request (HTTP `Idempotency-Key`, the
`idempotency_key` field of gRPC `Publish`). Within the window (`--idempotency-window`), a
request whose key was already stored is answered with the ids stored then, and stores
nothing. The key is remembered atomically with the append: by the memory broker in one
step of the event loop (`Remembered`, here), by the Redis broker in the same Lua script as
its XADDs, so every replica answers alike.

A key reused for a request of another number of events is refused (`KeyReused`): its ids
could not be the answer.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from cachewire.hub.errors import KeyReused

# Most keys the memory broker remembers; past it the oldest are forgotten early. A key is at
# most 255 bytes, so this bounds the memory to a few tens of MB even for huge batches' ids.
MAX_KEYS = 100_000


def check_count(key: str, ids: Sequence[str], events: int) -> list[str]:
    """The stored ids as the answer, or KeyReused when the request differs in size."""
    if len(ids) != events:
        raise KeyReused(
            f"the idempotency key {key!r} was used for a request of {len(ids)} event(s); "
            f"this one has {events}"
        )
    return list(ids)


class Remembered:
    """key → ids for `window` seconds (a bounded, insertion-ordered map; expiry order)."""

    def __init__(
        self, max_keys: int = MAX_KEYS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._entries: OrderedDict[str, tuple[float, tuple[str, ...]]] = OrderedDict()
        self._max = max_keys
        self._clock = clock

    def get(self, key: str) -> tuple[str, ...] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: str, ids: Sequence[str], window: float) -> None:
        now = self._clock()
        entries = self._entries
        entries[key] = (now + window, tuple(ids))
        entries.move_to_end(key)
        while entries:  # forget what expired, and the oldest past the bound
            oldest, (expires, _) = next(iter(entries.items()))
            if expires > now and len(entries) <= self._max:
                break
            del entries[oldest]

    def __len__(self) -> int:
        return len(self._entries)
