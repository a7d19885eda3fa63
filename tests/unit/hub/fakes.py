"""Fakes for unit tests of the fan-out core: a recording Sink and a broker whose replay can
be held open (to publish while a resume replays) or run ahead of dispatch (as a broker
shared by several hubs can)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from cachewire.hub.brokers.base import Dispatch, Replay, ResetReason
from cachewire.hub.brokers.memory import MemoryBroker
from cachewire.hub.events import Event


@dataclass(eq=False)
class FakeSink:
    """Records what the core hands it. `capacity` events fit before `send` says full."""

    kind: str = "fake"
    capacity: int = 1_000_000
    events: list[Event] = field(default_factory=list)
    replayed: list[Event] = field(default_factory=list)
    resets: list[tuple[ResetReason, str, str]] = field(default_factory=list)
    heartbeats: list[str] = field(default_factory=list)
    closed: bool = False

    def send(self, event: Event) -> bool:
        if len(self.events) >= self.capacity:
            return False
        self.events.append(event)
        return True

    def send_replay(self, events: list[Event]) -> None:
        self.replayed.extend(events)

    def reset(self, reason: ResetReason, detail: str, resume_from: str) -> None:
        self.resets.append((reason, detail, resume_from))

    def heartbeat(self, head_id: str) -> None:
        self.heartbeats.append(head_id)

    def close(self) -> None:
        self.closed = True

    def watch(self, pressure: object) -> None:
        """The core's back-pressure is tested with the real sinks (test_pressure.py)."""

    def ids(self) -> list[str]:
        """Everything received, replay first, as a client would see it."""
        return [e.id for e in self.replayed] + [e.id for e in self.events]


class GatedBroker(MemoryBroker):
    """A memory broker whose `replay` waits for `release` after reading history, so that a
    test can publish while a resume is in flight (the Redis broker's replay awaits too)."""

    def __init__(self, history: int = 1000) -> None:
        super().__init__(history, epoch="gated")
        self.replay_started = asyncio.Event()
        self.release = asyncio.Event()

    async def replay(self, after_id: str) -> Replay:
        result = await super().replay(after_id)
        self.replay_started.set()
        await self.release.wait()
        return result


class AheadBroker(MemoryBroker):
    """A broker that stores events at once but dispatches them only on `deliver_pending`:
    a replay then sees events the fan-out has not been handed yet."""

    def __init__(self, history: int = 1000) -> None:
        super().__init__(history, epoch="ahead")
        self._held: list[Event] = []
        self._real_dispatch: Dispatch | None = None

    async def start(self, dispatch: Dispatch) -> None:
        self._real_dispatch = dispatch
        await super().start(self._hold)

    def _hold(self, events: Sequence[Event]) -> None:
        self._held.extend(events)

    def deliver_pending(self) -> None:
        held, self._held = self._held, []
        assert self._real_dispatch is not None
        self._real_dispatch(held)


@dataclass(eq=False)
class FakeTransport:
    """What SseSink uses of an asyncio transport: writes are recorded, not sent."""

    writes: list[bytes] = field(default_factory=list)
    buffered: int = 0  # what get_write_buffer_size reports
    closing: bool = False
    aborted: bool = False
    fail: bool = False

    def write(self, data: bytes) -> None:
        if self.fail:
            raise RuntimeError("broken transport")
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def abort(self) -> None:
        self.aborted = self.closing = True


@dataclass(eq=False)
class FakeRequest:
    transport: FakeTransport = field(default_factory=FakeTransport)
