"""The broker interface: where events get their ids and live in history.

Ids are "<epoch>-<position>". The epoch names one history: the memory broker draws a new
one at each start; the Redis broker keeps one per stream and draws a new one when the
stream was lost. A broker publishes to history first, then dispatches the new events, in
id order, to the callback given to `start` (the fan-out). Every replica of the hub sees
every event of the stream through that callback. When a running broker starts a new epoch
(its history was lost), it calls `on_reset` instead, between two dispatches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from cachewire.hub.events import Draft, Event, Position

ResetReason = Literal["history_expired", "epoch_changed", "unknown_id", "slow_consumer"]
Dispatch = Callable[[Sequence[Event]], None]
# (reason, detail): called once head_id() is the new epoch's "before its first event" id.
OnReset = Callable[[ResetReason, str], None]


@dataclass(frozen=True, slots=True)
class Replay:
    """What a resume gets: the events after the id up to the head, or a reset."""

    events: Sequence[Event] = ()
    reset: ResetReason | None = None
    detail: str = ""


class Broker(Protocol):
    async def start(self, dispatch: Dispatch, on_reset: OnReset | None = None) -> None:
        """Connect, and from now on call `dispatch` with every new event, in order, and
        `on_reset` when the history is replaced by a new epoch's. May return before the
        backend answers: `ready()` says when publish and replay work."""

    async def stop(self) -> None: ...

    async def publish(self, drafts: Sequence[Draft]) -> list[Event]:
        """Append to history; return once stored (raises Unavailable when it cannot)."""
        ...

    async def publish_once(
        self, drafts: Sequence[Draft], key: str, window: float
    ) -> tuple[list[str], bool]:
        """`publish`, unless a request with this idempotency key was stored within `window`
        seconds: then nothing is stored and its ids are the answer. Returns (ids, stored).
        Raises KeyReused when the key's request had another number of events."""
        ...

    async def replay(self, after_id: str) -> Replay:
        """Every event after `after_id` still in history, up to the newest, or a reset."""
        ...

    def position(self, event_id: str) -> Position | None:
        """The position of an id of the current epoch, or None."""
        ...

    def head_id(self) -> str:
        """The id of the newest event dispatched ("<epoch>-0" before any; "" while the
        broker has never reached its backend, so no position is known)."""
        ...

    def history_size(self) -> int: ...

    def ready(self) -> bool:
        """Whether publish and replay work now."""
        ...


def split_id(event_id: str) -> tuple[str, str] | None:
    epoch, sep, rest = event_id.partition("-")
    if not sep or not epoch or not rest:
        return None
    return epoch, rest
