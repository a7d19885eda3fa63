"""The fan-out core: topic index, subscriptions, resume seam, slow-consumer policy.

No I/O here. A transport (SSE, gRPC) implements `Sink` and registers it with `subscribe`.
`dispatch` is called by the broker with new events in id order; for each event it looks up
each `:` prefix of the type in the index (cost grows with the depth of the type, not with
the number of topics or subscribers), and hands the one shared `Event` to every matching
sink once, however many of its topics match.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

from cachewire.hub.brokers.base import Broker, Replay, ResetReason
from cachewire.hub.events import Event, Position, matches, type_prefixes


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
    def __init__(self, broker: Broker, queue_size: int = 10_000) -> None:
        self.broker = broker
        self.queue_size = queue_size
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
        self._changed.set()

    def unsubscribe(self, sub: Subscription) -> None:
        if sub.closed:
            return
        sub.closed = True
        self._remove_from_index(sub)
        self._subs.discard(sub)
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
        """Overflow: reset and disconnect this subscriber alone; everyone else goes on."""
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
