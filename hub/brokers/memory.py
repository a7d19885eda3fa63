"""The embedded broker: a bounded in-memory history; ids are "<epoch>-<sequence>".

The history is bounded by count (`history`) and by bytes (`history_bytes`, counted with
`Event.memory_bytes`): the oldest events leave when either is exceeded, the newest always
stays. A resume from before the oldest kept event gets a `history_expired` reset.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence

from cachewire.hub.brokers.base import Dispatch, OnReset, Replay, split_id
from cachewire.hub.events import Draft, Event, Position
from cachewire.hub.idempotency import Remembered, check_count

# ASCII digits only ("²".isdigit() is true) and short enough for int() (Plasma's ids are
# bare counters such as "42": they have no epoch and so never parse as ours).
_SEQ = re.compile(r"[0-9]{1,18}")


class MemoryBroker:
    def __init__(
        self, history: int = 100_000, epoch: str | None = None, history_bytes: int = 64 << 20
    ) -> None:
        if history < 1 or history_bytes < 1:
            raise ValueError("history and history_bytes must be at least 1")
        self.epoch = epoch or secrets.token_hex(4)
        self._cap = history
        self._cap_bytes = history_bytes
        self._ring: list[Event | None] = [None] * history
        self._head = 0  # sequence of the newest event; 0 before any
        self._first = 1  # sequence of the oldest event kept
        self.bytes = 0  # Event.memory_bytes of the events kept
        self.evicted_for_bytes = 0
        self._dispatch: Dispatch | None = None
        self._keys = Remembered()

    async def start(self, dispatch: Dispatch, on_reset: OnReset | None = None) -> None:
        """`on_reset` is never called: the epoch lasts as long as the process."""
        self._dispatch = dispatch

    async def stop(self) -> None:
        self._dispatch = None

    async def publish(self, drafts: Sequence[Draft]) -> list[Event]:
        events = []
        ring, cap = self._ring, self._cap
        for draft in drafts:
            self._head += 1
            event = Event.from_draft(draft, f"{self.epoch}-{self._head}", (self._head, 0))
            if self._head - self._first >= cap:  # the ring is full: its oldest slot goes
                self._evict()
            ring[self._head % cap] = event
            self.bytes += event.memory_bytes()
            events.append(event)
        while self.bytes > self._cap_bytes and self._first < self._head:
            self._evict()
            self.evicted_for_bytes += 1
        if self._dispatch is not None:
            self._dispatch(events)
        return events

    def _evict(self) -> None:
        slot = self._first % self._cap
        old = self._ring[slot]
        if old is not None:
            self.bytes -= old.memory_bytes()
            self._ring[slot] = None
        self._first += 1

    async def publish_once(
        self, drafts: Sequence[Draft], key: str, window: float
    ) -> tuple[list[str], bool]:
        """Check and append in one step of the loop (`publish` never yields): atomic."""
        seen = self._keys.get(key)
        if seen is not None:
            return check_count(key, seen, len(drafts)), False
        ids = [e.id for e in await self.publish(drafts)]
        self._keys.put(key, ids, window)
        return ids, True

    def _oldest(self) -> int:
        return self._first

    def position(self, event_id: str) -> Position | None:
        parts = split_id(event_id)
        if parts is None or parts[0] != self.epoch or not _SEQ.fullmatch(parts[1]):
            return None
        return (int(parts[1]), 0)

    async def replay(self, after_id: str) -> Replay:
        parts = split_id(after_id)
        if parts is None or not _SEQ.fullmatch(parts[1]):
            return Replay(reset="unknown_id", detail=f"malformed event id {after_id[:80]!r}")
        if parts[0] != self.epoch:
            return Replay(
                reset="epoch_changed", detail=f"epoch {parts[0][:80]!r} is not {self.epoch!r}"
            )
        seq = int(parts[1])
        if seq > self._head:
            return Replay(reset="unknown_id", detail=f"event id {after_id[:80]!r} is in the future")
        if seq < self._oldest() - 1:
            return Replay(
                reset="history_expired", detail=f"event id {after_id[:80]!r} left history"
            )
        events = [self._ring[s % self._cap] for s in range(seq + 1, self._head + 1)]
        return Replay(events=[e for e in events if e is not None])

    def head_id(self) -> str:
        return f"{self.epoch}-{self._head}"

    def history_size(self) -> int:
        return self._head - self._first + 1

    def ready(self) -> bool:
        return True
