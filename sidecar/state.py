"""The applier's state, free of I/O: a sink's slot (its queue, flush state and health),
the batch deadline, the staleness clock, and a notifier for waiting points.

Time comes in as arguments (`now`), so the batching deadline and the staleness rules are
unit-tested with an explicit clock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from opentelemetry import trace

from cachewire.sidecar.allow import Allow
from cachewire.sidecar.positions import Pos
from cachewire.sidecar.sinks.base import Invalidation, Sink

FlushCause = Literal["start", "reset", "stale", "overflow", "event", "epoch"]
Clock = Callable[[], float]


def batch_due_in(pending: int, first_arrived: float, now: float, size: int, delay: float) -> float:
    """Seconds until a batch must be applied: 0 when full, else its first item's deadline."""
    if pending >= size:
        return 0.0
    return max(0.0, first_arrived + delay - now)


class Staleness:
    """When silence from the hub means invalidations may have been lost (pure; a clock in)."""

    def __init__(self, bound: float, now: float) -> None:
        self.bound = bound
        self.last_contact = now
        self.last_flush: float | None = None

    def contact(self, now: float) -> None:
        self.last_contact = now

    def silent(self, now: float) -> bool:
        return now - self.last_contact >= self.bound

    def due(self, now: float) -> bool:
        """A flush is due: silent for `bound`, and no flush for `bound` during this silence."""
        if not self.silent(now):
            return False
        last = self.last_flush
        return last is None or last < self.last_contact or now - last >= self.bound

    def flushed(self, now: float) -> None:
        self.last_flush = now

    def next_check(self, now: float) -> float:
        """The time at which `due` may next become true."""
        at = self.last_contact + self.bound
        if self.last_flush is not None and self.last_flush >= self.last_contact:
            at = max(at, self.last_flush + self.bound)
        return max(at, now)


class Notifier:
    """Wakes every waiter whenever something changed; waiters re-check their predicate."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once predicate() holds (bound it with asyncio.timeout)."""
        while not predicate():
            await self._event.wait()


@dataclass(eq=False, slots=True)
class Item:
    inv: Invalidation
    pos: Pos | None
    arrived: float
    span: trace.SpanContext | None = None  # the receive span, when tracing is on
    size: int = 0  # memory_bytes(inv), set when queued


def memory_bytes(inv: Invalidation) -> int:
    """What holding an invalidation costs, about: its text and Python's per-object
    overhead (a str is ~50 bytes before its characters)."""
    keys = len(inv.keys) + len(inv.prefixes)
    text = len(inv.data_json) + len(inv.id) + len(inv.type)
    return text + sum(map(len, inv.keys)) + sum(map(len, inv.prefixes)) + 56 * keys + 400


class Slot:
    """One sink and its queue, flush state and health, as the applier sees it."""

    def __init__(self, sink: Sink, flush_enabled: bool = True, allow: Allow | None = None) -> None:
        self.sink = sink
        self.name = sink.name
        self.flush_enabled = flush_enabled
        self.allow = allow  # the app's cache namespace; None: every key
        self.pending: deque[Item] = deque()
        self.pending_bytes = 0  # sum of the pending items' sizes
        self.flush_cause: FlushCause | None = None
        self.flush_detail = ""
        self.flush_covers: Pos | None = None
        self.flush_gen = 0
        self.applied: Pos | None = None
        self.busy = False
        self.failing = False
        self.attempt = 0
        self.errors = 0
        self.last_error = ""
        self.overflowing = False
        self.wake = asyncio.Event()

    def push(self, item: Item) -> None:
        item.size = memory_bytes(item.inv)
        self.pending.append(item)
        self.pending_bytes += item.size

    def pop_oldest(self) -> Item:
        item = self.pending.popleft()
        self.pending_bytes -= item.size
        return item

    def clear(self) -> None:
        self.pending.clear()
        self.pending_bytes = 0

    @property
    def idle(self) -> bool:
        return not self.pending and self.flush_cause is None and not self.busy

    async def wait(self, at_most: float | None = None) -> None:
        """Until woken (new work, a flush, shutdown) or `at_most` seconds have passed."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(at_most):
                await self.wake.wait()
        self.wake.clear()
