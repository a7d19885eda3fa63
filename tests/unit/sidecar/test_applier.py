"""The applier with in-memory sinks: order, duplicates, batching, retries, bounds, staleness.

Time-dependent decisions (batch deadline, staleness) are pure functions tested with an
explicit clock; the asyncio tests wait on facts (an id applied, a flush recorded).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from cachewire.sidecar.applier import Applier
from cachewire.sidecar.errors import InvalidInput
from cachewire.sidecar.positions import Epochs, min_id, parse_id
from cachewire.sidecar.rules import Rules, parse_rules
from cachewire.sidecar.sinks.base import Invalidation
from cachewire.sidecar.state import Slot, Staleness, batch_due_in
from cachewire.sidecar.stream import next_delay
from tests.unit.sidecar.fakes import MemorySink

WAIT = 10.0


def inv(n: int, *keys: str, epoch: str = "e", **kw: Any) -> Invalidation:
    return Invalidation(id=f"{epoch}-{n}", type=kw.pop("type", "user"), keys=keys, **kw)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Make = Callable[..., Applier]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    """Factory: make(sink, ..., flush=[...], **applier options) → a started Applier."""
    started: list[Applier] = []

    def factory(
        *sinks: MemorySink, flush: tuple[bool, ...] = (), start: bool = True, **kw: Any
    ) -> Applier:
        kw.setdefault("backoff_base", 0.01)
        kw.setdefault("backoff_cap", 0.05)
        kw.setdefault("batch_delay", 0.0)
        slots = [Slot(s, flush[i] if i < len(flush) else True) for i, s in enumerate(sinks)]
        applier = Applier(slots, **kw)
        applier._gap = None  # most tests do not care about the start flush
        if start:
            applier.start()
            started.append(applier)
        return applier

    yield factory
    for applier in started:
        await applier.stop(0)


async def applied(applier: Applier, event_id: str) -> None:
    async with asyncio.timeout(WAIT):
        await applier.wait_applied(event_id)


# --- pure pieces ---


def test_next_delay_doubles_with_jitter_up_to_the_cap() -> None:
    """Equal jitter: attempt n waits in [c/2, c], c = min(cap, base·2^n)."""
    assert next_delay(0, 0.1, 5.0, lambda: 0.0) == pytest.approx(0.05)
    assert next_delay(0, 0.1, 5.0, lambda: 1.0) == pytest.approx(0.1)
    assert next_delay(3, 0.1, 5.0, lambda: 1.0) == pytest.approx(0.8)
    assert next_delay(50, 0.1, 5.0, lambda: 0.5) == pytest.approx(3.75)
    assert next_delay(10_000, 0.1, 5.0, lambda: 1.0) == 5.0


def test_batch_is_due_when_full_or_at_its_first_items_deadline() -> None:
    assert batch_due_in(500, first_arrived=10.0, now=10.0, size=500, delay=0.002) == 0.0
    assert batch_due_in(1, first_arrived=10.0, now=10.0, size=500, delay=0.002) == pytest.approx(
        0.002
    )
    assert batch_due_in(1, first_arrived=10.0, now=10.0015, size=500, delay=0.002) == (
        pytest.approx(0.0005)
    )
    assert batch_due_in(1, first_arrived=10.0, now=10.5, size=500, delay=0.002) == 0.0
    assert batch_due_in(3, first_arrived=10.0, now=10.0, size=500, delay=0.0) == 0.0


def test_staleness_flushes_after_the_bound_not_before_and_repeats() -> None:
    s = Staleness(5.0, now=0.0)
    assert not s.due(4.999)
    assert s.due(5.0)
    s.flushed(5.0)
    assert not s.due(9.9)  # flushed already during this silence
    assert s.due(10.0)  # still silent: flush again every bound
    s.flushed(10.0)
    s.contact(11.0)
    assert not s.due(15.9)
    assert s.due(16.0)
    assert s.next_check(12.0) == 16.0


def test_positions_order_within_and_across_epochs() -> None:
    epochs = Epochs()
    a1, a2, b1 = parse_id("a-1"), parse_id("a-2"), parse_id("b-1")
    assert a1 and a2 and b1
    assert parse_id("a-1700000000000-3") is not None
    assert parse_id("nonsense") is None and parse_id("a-x") is None and parse_id("-1") is None
    assert not epochs.covers(a2, a1)  # epoch never seen
    epochs.see("a")
    epochs.see("b")
    assert epochs.covers(a2, a1) and not epochs.covers(a1, a2)
    assert epochs.covers(b1, a2) and not epochs.covers(a2, b1)
    assert min_id(epochs, [a2, a1, b1]) == "a-1"
    assert min_id(epochs, [a2, None]) == ""


def test_staleness_tick_with_an_injected_clock(make: Make) -> None:
    """No contact for max_staleness → flush requested on every sink whose flush is on."""
    clock = FakeClock()
    on, off = MemorySink("on"), MemorySink("off")
    applier = make(on, off, flush=(True, False), start=False, clock=clock, max_staleness=5.0)
    applier.on_connected()
    clock.now += 4.9
    applier.tick()
    assert applier.slots[0].flush_cause is None
    clock.now += 0.1
    applier.tick()
    assert applier.slots[0].flush_cause == "stale"
    assert applier.slots[1].flush_cause is None  # flush off: skipped, counted
    assert applier.metrics.flushes_skipped.labels("off", "stale")._value.get() == 1
    assert applier.state() == "stale"


# --- with workers ---


async def test_events_reach_every_sink_in_order_with_rule_keys(make: Make) -> None:
    a, b = MemorySink("a"), MemorySink("b")
    a.cache.update({"user:1": 1, "user:1:profile": 2, "x": 3})
    rules = Rules(parse_rules([{"type": "user:{id}", "keys": ["user:{id}", "user:{id}:profile"]}]))
    applier = make(a, b, rules=rules)
    applier.on_connected()
    applier.on_events([inv(1, "x", type="user:1"), inv(2, type="other")])
    await applied(applier, "e-2")
    assert a.applied_ids == b.applied_ids == ["e-1", "e-2"]
    assert a.cache == {}


async def test_duplicates_are_applied_once(make: Make) -> None:
    """A resume may deliver again what was received: ids at or below the position are skipped."""
    sink = MemorySink()
    applier = make(sink)
    applier.on_events([inv(1), inv(2)])
    applier.on_events([inv(2), inv(1), inv(3)])
    await applied(applier, "e-3")
    assert sink.applied_ids == ["e-1", "e-2", "e-3"]
    assert applier.metrics.duplicates._value.get() == 2
    assert applier.resume_id() == "e-3"


async def test_batches_fill_up_to_batch_size(make: Make) -> None:
    """Events that arrive together leave in batches of at most batch_size."""
    sink = MemorySink()
    applier = make(sink, batch_size=3, batch_delay=0.05)
    applier.on_events([inv(n) for n in range(1, 8)])
    await applied(applier, "e-7")
    assert [len(b) for b in sink.batches] == [3, 3, 1]


async def test_a_failing_sink_keeps_its_batch_and_retries(make: Make) -> None:
    """Nothing is lost while a sink is down; the other sink is not held up."""
    down, up = MemorySink("down"), MemorySink("up")
    down.failing = True
    applier = make(down, up)
    applier.on_events([inv(1), inv(2)])
    async with asyncio.timeout(WAIT):
        await applier.changed.wait_for(lambda: down.calls >= 2 and up.applied_ids == ["e-1", "e-2"])
    assert applier.status()["sinks"]["down"]["state"] == "failing"
    assert not applier.applied_everywhere(parse_id("e-1"))  # type: ignore[arg-type]
    applier.on_events([inv(3)])
    down.failing = False
    await applied(applier, "e-3")
    assert down.applied_ids == ["e-1", "e-2", "e-3"]
    assert applier.metrics.sink_errors.labels("down")._value.get() >= 2
    assert applier.status()["sinks"]["down"]["state"] == "ok"


async def test_past_max_pending_a_failing_sink_is_flushed_when_back(make: Make) -> None:
    sink = MemorySink()
    sink.failing = True
    applier = make(sink, max_pending=3)
    applier.on_events([inv(n) for n in range(1, 6)])
    assert applier.slots[0].flush_cause == "overflow"
    assert [i.inv.id for i in applier.slots[0].pending] == ["e-5"]
    sink.failing = False
    await applied(applier, "e-5")
    assert sink.log[0] == "flush:overflow"
    assert "e-1" not in sink.applied_ids  # covered by the flush


async def test_past_max_pending_with_flush_off_the_oldest_are_dropped_and_counted(
    make: Make,
) -> None:
    sink = MemorySink()
    sink.failing = True
    applier = make(sink, flush=(False,), max_pending=2)
    applier.on_events([inv(n) for n in range(1, 5)])
    assert [i.inv.id for i in applier.slots[0].pending][-2:] == ["e-3", "e-4"]
    assert applier.metrics.dropped.labels("memory")._value.get() >= 1
    sink.failing = False
    await applied(applier, "e-4")
    assert sink.applied_ids[-1] == "e-4"


async def test_reset_flushes_and_moves_to_the_new_epoch(make: Make) -> None:
    """A reset (e.g. new epoch) flushes sinks whose flush is on; events after it follow."""
    on, off = MemorySink("on"), MemorySink("off")
    applier = make(on, off, flush=(True, False))
    applier.on_connected()
    applier.on_events([inv(1)])
    await applied(applier, "e-1")
    applier.on_reset("epoch_changed", "epoch e is not f", "f-0")
    applier.on_events([inv(1, epoch="f")])
    await applied(applier, "f-1")
    assert on.log[-2:] == ["flush:reset", "apply:f-1"]
    assert off.log == ["apply:e-1", "apply:f-1"]
    assert applier.metrics.resets.labels("epoch_changed")._value.get() == 1
    assert applier.epochs.covers(parse_id("f-1"), parse_id("e-1"))  # type: ignore[arg-type]


async def test_slow_consumer_reset_resumes_without_flushing(make: Make) -> None:
    sink = MemorySink()
    applier = make(sink)
    applier.on_events([inv(1)])
    applier.on_reset("slow_consumer", "fell behind", "e-99")
    await applied(applier, "e-1")
    assert sink.flushes == [] and applier.resume_id() == "e-1"


async def test_an_epoch_change_without_reset_flushes(make: Make) -> None:
    sink = MemorySink()
    applier = make(sink)
    applier.on_events([inv(1)])
    applier.on_events([inv(1, epoch="g")])
    await applied(applier, "g-1")
    assert "flush:epoch" in sink.log


async def test_flush_event_subsumes_what_is_pending(make: Make) -> None:
    sink = MemorySink()
    sink.gate = asyncio.Event()
    applier = make(sink)
    applier.on_events([inv(1)])
    async with asyncio.timeout(WAIT):
        await sink.entered.wait()  # e-1 in flight
    applier.on_events([inv(2), inv(3, flush=True), inv(4)])
    sink.gate.set()
    await applied(applier, "e-4")
    assert sink.log == ["apply:e-1", "flush:event", "apply:e-4"]


async def test_start_flushes_once_subscribed_then_catches_up(make: Make) -> None:
    """The first subscription flushes (what was missed before start is unknown)."""
    sink = MemorySink()
    applier = make(sink)
    applier._gap = ("start", "started")
    assert applier.state() == "connecting" and not applier.caught_up()
    applier.on_connected()
    applier.on_heartbeat("e-10")
    async with asyncio.timeout(WAIT):
        await applier.wait_caught_up()
    assert sink.log == ["flush:start"]
    assert applier.state() == "live"
    assert applier.resume_id() == "e-10"


async def test_heartbeat_covers_ids_the_topics_do_not_match(make: Make) -> None:
    """Events of other topics advance the high-water id; the barrier answers for them too."""
    sink = MemorySink()
    applier = make(sink)
    applier.on_connected()
    applier.on_events([inv(4)])
    applier.on_heartbeat("e-7")
    await applied(applier, "e-6")
    assert sink.applied_ids == ["e-4"]


async def test_wait_applied_rejects_bad_ids_and_waits_for_unknown_ones(make: Make) -> None:
    applier = make(MemorySink())
    with pytest.raises(InvalidInput, match="is not an event id"):
        await applier.wait_applied("not-an-id")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await applier.wait_applied("z-1")


async def test_stop_applies_pending_within_grace(make: Make) -> None:
    sink = MemorySink()
    applier = make(sink, start=False, batch_delay=1.0)
    applier.start()
    applier.on_events([inv(1), inv(2)])
    await applier.stop(grace=WAIT)
    assert sink.applied_ids == ["e-1", "e-2"]


async def test_stop_finishes_the_batch_in_flight_past_grace(make: Make) -> None:
    sink = MemorySink()
    sink.gate = asyncio.Event()
    applier = make(sink, start=False)
    applier.start()
    applier.on_events([inv(1)])
    async with asyncio.timeout(WAIT):
        await sink.entered.wait()
    stopping = asyncio.create_task(applier.stop(grace=0))
    async with asyncio.timeout(WAIT):
        # stop() is past its grace; the apply is still held by the gate
        await applier.changed.wait_for(lambda: applier._closing)
    assert not stopping.done()
    sink.gate.set()
    await stopping
    assert sink.applied_ids == ["e-1"]
