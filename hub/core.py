"""The fan-out core: topic index, subscriptions, resume seam, slow-consumer policy.

No I/O here. A transport (SSE, gRPC) implements `Sink` and registers it with `subscribe`.
`dispatch` is called by the broker with new events in id order; for each event it looks up
each `:` prefix of the type in the index (cost grows with the depth of the type, not with
the number of topics or subscribers), and hands the one shared `Event` to every matching
sink once, however many of its topics match.

`Pressure` is the hub's back-pressure (docs/hub.md, "Overload"): when most subscribers
are behind, the hub's own fan-out is the bottleneck, so publishers wait (`admit`) instead
of every subscriber being dropped; a subscriber is dropped as slow only when it is behind
the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

from cachewire.hub.brokers.base import Broker, Replay, ResetReason
from cachewire.hub.errors import Overloaded
from cachewire.hub.events import Event, Position, matches, type_prefixes

# A lagging subscriber that has taken nothing from its queue for this long is held up by
# its client (a full socket or HTTP/2 window), not by the hub: it does not make the hub
# "behind" (it is dropped as a slow consumer instead, alone).
STALLED_AFTER = 0.5
# While a publish waits, how often "behind" is re-checked (subscribers go stale silently).
RECHECK = 0.05


class Pressure:
    """Whether the hub itself is behind, and the wait it imposes on publishers.

    A subscriber *lags* once `threshold` of its events wait undelivered, until it is back
    to half that (hysteresis: no flapping at the edge). The hub is *behind* while more than
    half of its subscribers lag and are still being written to (their queue moved within
    STALLED_AFTER): then the fan-out, not the clients, cannot keep up, and publishers wait
    (at most `wait` seconds, then `Overloaded`). Sinks report crossings through `Tracked`,
    so with few laggards the test is O(1); only during an overload does it look at them.
    """

    def __init__(self, threshold: int, wait: float) -> None:
        self.threshold = threshold
        self.low = threshold // 2
        self.wait = wait
        self.lagging: set[Tracked] = set()
        self.subscribers = 0
        self.waited = 0  # publishes that had to wait
        self.refused = 0  # publishes refused after waiting `wait` seconds
        self._eased = asyncio.Event()
        self._behind = False
        self._checked = -1.0  # monotonic time of the last look at the laggards; -1: stale

    @property
    def behind(self) -> bool:
        if len(self.lagging) * 2 <= self.subscribers:
            return False
        now = time.monotonic()
        if self._checked < 0 or now - self._checked >= RECHECK:
            recent = now - STALLED_AFTER
            moving = sum(1 for t in self.lagging if t.drained_at >= recent)
            self._behind, self._checked = moving * 2 > self.subscribers, now
        return self._behind

    def lag(self, sink: Tracked, lagging: bool) -> None:
        if lagging:
            self.lagging.add(sink)
        else:
            self.lagging.discard(sink)
            self._eased.set()
        self._checked = -1.0

    def counted(self, subscribers: int) -> None:
        self.subscribers = subscribers
        self._checked = -1.0
        self._eased.set()

    async def admit(self) -> None:
        """Return at once unless the hub is behind; then wait, or raise Overloaded."""
        if not self.behind:
            return
        self.waited += 1
        deadline = time.monotonic() + self.wait
        while self.behind:
            left = deadline - time.monotonic()
            if left <= 0:
                self.refused += 1
                raise Overloaded(
                    f"the hub is behind delivering to its subscribers ({len(self.lagging)} of "
                    f"{self.subscribers} hold {self.threshold} or more events); retry later"
                )
            self._eased.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, RECHECK)):
                    await self._eased.wait()


class Tracked:
    """A sink's side of `Pressure`: `_grew(n)` when a put reaches the threshold, `_shrank(n)`
    when a write takes from the queue while lagging; so it costs nothing otherwise."""

    pressure: Pressure | None = None
    lagging = False
    drained_at = 0.0  # monotonic time its queue last moved, kept while lagging

    def watch(self, pressure: Pressure | None) -> None:
        """Report to `pressure` from now on (None: stop, and no longer count as lagging)."""
        if self.lagging and self.pressure is not None:
            self.pressure.lag(self, False)
        self.pressure, self.lagging = pressure, False

    def _grew(self, n: int) -> None:
        """After a put: `n` events wait (called once `n` reaches the threshold)."""
        p = self.pressure
        if p is not None and not self.lagging and n >= p.threshold:
            self.lagging, self.drained_at = True, time.monotonic()
            p.lag(self, True)

    def _shrank(self, n: int) -> None:
        """After a write took from the queue (called while lagging): `n` events wait."""
        p = self.pressure
        if p is not None:
            self.drained_at = time.monotonic()
            if n <= p.low:
                self.lagging = False
                p.lag(self, False)

    def _over(self, n: int, limit: int) -> bool:
        """Whether `n` undelivered events make this sink a slow consumer: `limit` (its queue
        size) while it is behind the rest, twice that while the hub is behind (publishers
        are held then, so queues stop growing)."""
        if n < limit:
            return False
        p = self.pressure
        return p is None or not p.behind or n >= 2 * limit


class Sink(Protocol):
    """A subscriber's end of a transport. Called on the event loop; must not block."""

    kind: str

    def send(self, event: Event) -> bool:
        """Queue or write one event; False when the subscriber's bounded queue is full."""
        ...

    def send_replay(self, events: list[Event]) -> None:
        """Accept a resume's replay at once; bounded by the history, not by the queue."""
        ...

    def reset(self, reason: ResetReason, detail: str, resume_from: str) -> None:
        """Tell the client that events may have been lost; live events after resume_from follow."""
        ...

    def heartbeat(self, head_id: str) -> None: ...

    def watch(self, pressure: Pressure | None) -> None:
        """Report the backlog to `pressure` (see `Tracked`); None when unsubscribed."""
        ...

    def close(self) -> None:
        """End the stream (after a slow-consumer reset, or at shutdown)."""
        ...


class Subscription:
    __slots__ = (
        "_buffer",
        "_fanout",
        "_reset",
        "_skip_through",
        "closed",
        "seam",
        "sink",
        "topics",
    )

    def __init__(self, fanout: Fanout, topics: frozenset[str], sink: Sink) -> None:
        self._fanout = fanout
        self.topics = topics
        self.sink = sink
        self.closed = False
        # While a resume replays history, live events wait here (bounded like the queue).
        self._buffer: list[Event] | None = None
        # Set when a replay ran ahead of dispatch (a shared broker): live events up to here
        # were already replayed and are skipped.
        self._skip_through: Position | None = None
        # The head when registered: after a reset, delivery continues from here.
        self.seam = fanout.last_id
        # A new epoch began while a resume replayed the old one: the replay is void, and
        # this reset is sent in its place.
        self._reset: Replay | None = None

    @property
    def live(self) -> bool:
        """False while a resume still replays history (live events wait in the buffer)."""
        return self._buffer is None

    def deliver(self, event: Event) -> None:
        if self._buffer is not None:
            self._hold(event)
        elif not self.sink.send(event):
            self._fanout.drop_slow(self)

    def _hold(self, event: Event) -> None:
        assert self._buffer is not None
        if self._skip_through is not None:
            if event.pos > self._skip_through:
                self._skip_through = self._buffer = None
                self.deliver(event)
        elif len(self._buffer) >= self._fanout.queue_size:
            self._fanout.drop_slow(self)
        else:
            self._buffer.append(event)


class Fanout:
    def __init__(
        self,
        broker: Broker,
        queue_size: int = 10_000,
        pressure: Pressure | None = None,
    ) -> None:
        self.broker = broker
        self.queue_size = queue_size
        self.pressure = pressure or Pressure(max(1, queue_size // 10), 5.0)
        self._index: dict[str, set[Subscription]] = {}
        self._subs: set[Subscription] = set()
        self.last_id = broker.head_id()
        self.last_pos: Position = broker.position(self.last_id) or (0, 0)
        self.published = 0
        self.deliveries = 0
        self.slow_drops: Counter[str] = Counter()
        self._changed = asyncio.Event()

    # --- dispatch (hot path) ---

    def dispatch(self, events: Sequence[Event]) -> None:
        index = self._index
        for event in events:
            self.last_id, self.last_pos = event.id, event.pos
            self.published += 1
            found: set[Subscription] | None = None
            shared = True
            for prefix in type_prefixes(event.type):
                subs = index.get(prefix)
                if subs:
                    if found is None:
                        found = subs
                    elif shared:
                        found = found | subs  # a copy: an overlapping subscriber counts once
                        shared = False
                    else:
                        found |= subs
            if found:
                self.deliveries += len(found)
                # Iterate a copy: a slow subscriber dropped mid-loop edits the index.
                for sub in tuple(found):
                    sub.deliver(event)

    # --- subscriptions ---

    async def subscribe(
        self, topics: frozenset[str], sink: Sink, resume_from: str | None = None
    ) -> Subscription:
        """Register a sink; with `resume_from`, first replay history after it, seamlessly."""
        sub = Subscription(self, topics, sink)
        if resume_from:
            sub._buffer = []
        self._add(sub)
        if not resume_from:
            return sub
        try:
            replay = await self.broker.replay(resume_from)
        except BaseException:  # the client left, or the broker failed: leave no trace
            self.unsubscribe(sub)
            raise
        if sub.closed:
            return sub
        buffered, sub._buffer = sub._buffer or [], None
        if sub._reset is not None:
            replay = sub._reset
        if replay.reset is not None:
            sink.reset(replay.reset, replay.detail, sub.seam)
            last: Position | None = None
        else:
            last = self.broker.position(resume_from)
            if replay.events:
                last = replay.events[-1].pos
                sink.send_replay([e for e in replay.events if matches(topics, e.type)])
        for event in buffered:
            if last is None or event.pos > last:
                sub.deliver(event)
                if sub.closed:
                    break
        if last is not None and last > self.last_pos and not sub.closed:
            sub._skip_through, sub._buffer = last, []
        return sub

    def _add(self, sub: Subscription) -> None:
        for topic in sub.topics:
            self._index.setdefault(topic, set()).add(sub)
        self._subs.add(sub)
        sub.sink.watch(self.pressure)
        self.pressure.counted(len(self._subs))
        self._changed.set()

    def unsubscribe(self, sub: Subscription) -> None:
        if sub.closed:
            return
        sub.closed = True
        self._remove_from_index(sub)
        self._subs.discard(sub)
        sub.sink.watch(None)
        self.pressure.counted(len(self._subs))
        self._changed.set()

    def retopic(self, sub: Subscription, topics: frozenset[str]) -> None:
        """Replace a live subscription's topics (Plasma's gRPC Request semantics)."""
        self._remove_from_index(sub)
        sub.topics = topics
        for topic in topics:
            self._index.setdefault(topic, set()).add(sub)

    def _remove_from_index(self, sub: Subscription) -> None:
        for topic in sub.topics:
            subs = self._index.get(topic)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._index[topic]  # no empty tables left behind (Plasma leaks them)

    def reset_all(self, reason: ResetReason, detail: str) -> None:
        """The broker began a new epoch: every subscription is reset to its start (the
        broker's head now) and goes on with live events; heartbeats carry the new head.

        A resume still replaying is void if it began in the old epoch; one that began
        before the broker knew any position (seam "") replays against the new head."""
        self.last_id = self.broker.head_id()
        self.last_pos = self.broker.position(self.last_id) or (0, 0)
        for sub in self.subscriptions():
            if sub._buffer is not None and sub._skip_through is None:  # replaying
                if sub.seam:
                    sub._buffer, sub._reset = [], Replay(reset=reason, detail=detail)
            else:
                sub._buffer = sub._skip_through = None
                sub.sink.reset(reason, detail, self.last_id)
            sub.seam = self.last_id

    def drop_slow(self, sub: Subscription) -> None:
        """Overflow: reset and disconnect this subscriber alone; everyone else goes on.

        A sink overflows at its queue size while it is behind the rest, at twice that while
        the hub is behind (`Tracked._over`): a burst slows publishers, not subscribers."""
        if sub.closed:
            return
        self.unsubscribe(sub)
        self.slow_drops[sub.sink.kind] += 1
        sub.sink.reset("slow_consumer", "the subscriber fell behind its queue", self.last_id)
        sub.sink.close()

    # --- queries and waiting points ---

    def subscriptions(self, kind: str | None = None) -> Iterator[Subscription]:
        return (s for s in tuple(self._subs) if kind is None or s.sink.kind == kind)

    def count(self, kind: str | None = None) -> int:
        if kind is None:
            return len(self._subs)
        return sum(1 for s in self._subs if s.sink.kind == kind)

    def topic_count(self) -> int:
        return len(self._index)

    async def wait_subscribers(self, n: int, kind: str | None = None) -> None:
        """Return once at least n subscriptions (of a kind) are registered."""
        while self.count(kind) < n:
            self._changed.clear()
            await self._changed.wait()

    def heartbeat(self, kinds: Iterable[str]) -> None:
        wanted = set(kinds)
        for sub in self.subscriptions():
            if sub.sink.kind in wanted:
                sub.sink.heartbeat(self.last_id)

    def close_all(self) -> None:
        for sub in self.subscriptions():
            self.unsubscribe(sub)
            sub.sink.close()
