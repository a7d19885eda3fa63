"""A sink's worker: drains one slot's queue into its sink, in order.

The applier fills the slot (pending invalidations, a requested flush); the worker empties
it. Each turn is a flush when one is requested, else a batch once it is full
(`batch_size`) or its first invalidation has waited `batch_delay` (at once while
draining), else a wait for work. A failed batch or flush stays where it is and is retried
with capped exponential backoff; a bug in a turn is logged and the worker goes on after a
pause. The operation in flight always completes, even past the shutdown grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from itertools import islice

from opentelemetry import context as otel_context
from opentelemetry import trace

from cachewire.sidecar import telemetry
from cachewire.sidecar._backoff import next_delay
from cachewire.sidecar.metrics import Metrics
from cachewire.sidecar.sinks.base import Invalidation
from cachewire.sidecar.state import Clock, Item, Notifier, Slot, batch_due_in

log = logging.getLogger("cachewire.sidecar.applier")


class Worker:
    def __init__(
        self,
        slot: Slot,
        metrics: Metrics,
        changed: Notifier,
        *,
        batch_size: int,
        batch_delay: float,
        backoff_base: float,
        backoff_cap: float,
        clock: Clock,
        rng: random.Random,
    ) -> None:
        self.slot = slot
        self.metrics = metrics
        self.changed = changed  # notified on every success and failure
        self.batch_size, self.batch_delay = batch_size, batch_delay
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.clock = clock
        self.rng = rng
        self.draining = False  # no more events come: batches need not wait to fill
        self.closing = False  # end after the operation in flight

    def drain(self) -> None:
        self.draining = True
        self.slot.wake.set()

    def close(self) -> None:
        self.closing = True
        self.slot.wake.set()

    async def run(self) -> None:
        slot = self.slot
        while not self.closing:
            try:
                await self.step()
            except Exception:  # a bug must not stop this sink for good: log, pause, go on
                slot.busy = False
                log.exception("sink worker error", extra={"sink": slot.name})
                await slot.wait(self.backoff_cap)

    async def step(self) -> None:
        """One turn: a flush, a wait, or a batch."""
        slot = self.slot
        if slot.flush_cause is not None:
            await self._flush()
        elif not slot.pending:
            await slot.wait()
        else:
            due = batch_due_in(
                len(slot.pending),
                slot.pending[0].arrived,
                self.clock(),
                self.batch_size,
                self.batch_delay,
            )
            if due > 0 and not self.draining:
                await slot.wait(due)
            else:
                await self._apply(list(islice(slot.pending, self.batch_size)))

    async def _apply(self, batch: list[Item]) -> None:
        slot = self.slot
        invs = [item.inv for item in batch]
        slot.busy = True
        token = None
        if batch[0].span is not None and batch[0].span.is_valid:  # a child of its receive span
            parent = trace.set_span_in_context(trace.NonRecordingSpan(batch[0].span))
            token = otel_context.attach(parent)
        try:
            with telemetry.apply_span(slot.name, invs):
                await self._apply_sink(batch, invs)
        except Exception as exc:
            slot.busy = False
            await self._failed("apply", exc)
            return
        finally:
            if token is not None:
                otel_context.detach(token)
        slot.busy = False
        members = {id(item) for item in batch}
        while slot.pending and id(slot.pending[0]) in members:
            slot.pop_oldest()
        for item in reversed(batch):
            if item.pos is not None:
                slot.applied = item.pos
                break
        self.metrics.lag.observe(slot.name, invs)
        self.metrics.applied.labels(slot.name).inc(len(batch))
        self.metrics.batches.labels(slot.name).inc()
        self._succeeded()

    async def _apply_sink(self, batch: list[Item], invs: list[Invalidation]) -> None:
        """Apply one batch. When it has prefixes (a keyspace scan, which may take a while)
        and the sink allows it (`express_keys`), the keys of the events queued behind it are
        deleted meanwhile; they are deleted again, in order, with their own batch (deletes
        are idempotent), so what counts as applied stays exactly in id order."""
        slot = self.slot
        sink = slot.sink
        if not getattr(sink, "express_keys", False) or not any(i.prefixes for i in invs):
            await sink.apply(invs)
            return
        work = asyncio.ensure_future(sink.apply(invs))
        seen = {id(item) for item in batch}
        try:
            while not work.done():
                later = [item for item in slot.pending if id(item) not in seen]
                seen.update(id(item) for item in later)
                keys = [Invalidation(i.inv.id, i.inv.type, i.inv.keys) for i in later if i.inv.keys]
                if keys:
                    with contextlib.suppress(Exception):  # retried with their own batch
                        await sink.apply(keys)
                        self.metrics.express.labels(slot.name).inc(len(keys))
                woken = asyncio.ensure_future(slot.wake.wait())
                await asyncio.wait((work, woken), return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
                slot.wake.clear()
        finally:
            if not work.done():
                work.cancel()
        await work

    async def _flush(self) -> None:
        slot = self.slot
        gen, cause, covers = slot.flush_gen, slot.flush_cause, slot.flush_covers
        assert cause is not None
        slot.busy = True
        try:
            with telemetry.flush_span(slot.name, cause):
                await slot.sink.flush(f"{cause}: {slot.flush_detail}")
        except Exception as exc:
            slot.busy = False
            await self._failed("flush", exc)
            return
        slot.busy = False
        if slot.flush_gen == gen:  # no new flush was requested meanwhile
            slot.flush_cause = None
        if covers is not None:
            slot.applied = covers
        self.metrics.flushes.labels(slot.name, cause).inc()
        log.info(
            "sink flushed", extra={"sink": slot.name, "cause": cause, "detail": slot.flush_detail}
        )
        self._succeeded()

    def _succeeded(self) -> None:
        slot = self.slot
        if slot.failing:
            log.info("sink recovered", extra={"sink": slot.name, "pending": len(slot.pending)})
        slot.failing, slot.attempt, slot.overflowing = False, 0, False
        self.changed.notify()

    async def _failed(self, what: str, exc: Exception) -> None:
        slot = self.slot
        slot.errors += 1
        slot.failing = True
        slot.last_error = f"{type(exc).__name__}: {exc}"
        self.metrics.sink_errors.labels(slot.name).inc()
        delay = next_delay(slot.attempt, self.backoff_base, self.backoff_cap, self.rng.random)
        slot.attempt += 1
        log.warning(
            f"sink {what} failed; retrying",
            extra={
                "sink": slot.name,
                "error": slot.last_error,
                "pending": len(slot.pending),
                "retry_in": round(delay, 3),
                "attempt": slot.attempt,
            },
        )
        self.changed.notify()
        deadline = self.clock() + delay
        while not self.closing and (left := deadline - self.clock()) > 0:
            await slot.wait(left)
