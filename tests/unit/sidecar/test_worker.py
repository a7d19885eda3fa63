"""A sink's worker alone on a slot: one turn at a time, an explicit clock, an in-memory sink."""

from __future__ import annotations

import random

from cachewire.sidecar.metrics import Metrics
from cachewire.sidecar.positions import parse_id
from cachewire.sidecar.sinks.base import Invalidation
from cachewire.sidecar.state import Item, Notifier, Slot
from cachewire.sidecar.worker import Worker
from tests.unit.sidecar.fakes import MemorySink

NOW = 1000.0


def worker_on(sink: MemorySink, *ids: str, batch_size: int = 2, delay: float = 0.0) -> Worker:
    slot = Slot(sink)
    for event_id in ids:
        inv = Invalidation(event_id, "user", keys=(event_id,))
        slot.pending.append(Item(inv, parse_id(event_id), NOW))
    return Worker(
        slot,
        Metrics(),
        Notifier(),
        batch_size=batch_size,
        batch_delay=delay,
        backoff_base=0.01,
        backoff_cap=0.05,
        clock=lambda: NOW,
        rng=random.Random(1),
    )


async def test_a_turn_applies_at_most_one_batch_and_records_its_position() -> None:
    sink = MemorySink()
    worker = worker_on(sink, "e-1", "e-2", "e-3")
    await worker.step()
    assert sink.batches == [["e-1", "e-2"]]
    assert [i.inv.id for i in worker.slot.pending] == ["e-3"]
    assert worker.slot.applied == parse_id("e-2") and not worker.slot.busy


async def test_a_requested_flush_goes_first_and_covers_what_was_accepted() -> None:
    sink = MemorySink()
    worker = worker_on(sink, "e-5")
    slot = worker.slot
    slot.flush_cause, slot.flush_detail, slot.flush_covers = "reset", "gap", parse_id("e-4")
    await worker.step()
    assert sink.log == ["flush:reset"]
    assert slot.flush_cause is None and slot.applied == parse_id("e-4")
    assert len(slot.pending) == 1


async def test_while_draining_a_batch_does_not_wait_to_fill() -> None:
    sink = MemorySink()
    worker = worker_on(sink, "e-1", batch_size=10, delay=60.0)
    worker.drain()
    await worker.step()
    assert sink.batches == [["e-1"]]


async def test_a_failed_batch_stays_queued_and_the_slot_reports_it() -> None:
    sink = MemorySink()
    sink.failing = True
    worker = worker_on(sink, "e-1")
    worker.close()  # no retry wait: the turn ends after recording the failure
    await worker.step()
    slot = worker.slot
    assert (slot.failing, slot.errors, slot.attempt) == (True, 1, 1)
    assert slot.last_error == "SinkError: memory is down"
    assert [i.inv.id for i in slot.pending] == ["e-1"]
