"""The applier: the hub's events, in id order, become batches applied to every sink.

Per sink there is a bounded queue of pending invalidations (its `Slot`, sidecar.state)
and one worker (sidecar.worker) that applies it in batches, retrying a failed batch with
capped exponential backoff while more invalidations arrive. A flush subsumes everything
pending before it, so past `max_pending` a sink's queue is replaced by one flush, done
when the sink is back (or, with flush turned off, the oldest are dropped: logged and
counted).

Staleness: the sidecar may have missed invalidations when it starts, when the hub sends a
reset, or when it has heard nothing (no event, no heartbeat) for `max_staleness`. Then it
flushes every sink whose flush is on and, while the silence lasts, flushes again every
`max_staleness`, because what the app refills meanwhile may go stale too. It is caught up
again once every sink has applied up to the high-water id of the hub's latest heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from opentelemetry import trace

from cachewire.common import telemetry as ct
from cachewire.sidecar.errors import InvalidInput
from cachewire.sidecar.metrics import Metrics
from cachewire.sidecar.positions import Epochs, Pos, min_id, parse_id
from cachewire.sidecar.rules import Rules
from cachewire.sidecar.sinks.base import Invalidation
from cachewire.sidecar.state import (
    Clock,
    FlushCause,
    Item,
    Notifier,
    Slot,
    Staleness,
    batch_due_in,
)
from cachewire.sidecar.worker import Worker

__all__ = ["Applier", "Item", "Notifier", "Slot", "Staleness", "Worker", "batch_due_in"]

log = logging.getLogger("cachewire.sidecar.applier")


class Applier:
    def __init__(
        self,
        slots: Sequence[Slot],
        rules: Rules | None = None,
        metrics: Metrics | None = None,
        *,
        batch_size: int = 500,
        batch_delay: float = 0.002,
        max_pending: int = 100_000,
        max_pending_bytes: int = 8 << 20,
        max_staleness: float = 5.0,
        backoff_base: float = 0.1,
        backoff_cap: float = 5.0,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.slots = list(slots)
        self.rules = rules or Rules()
        self.metrics = metrics or Metrics()
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.clock = clock
        self.epochs = Epochs()
        self.staleness = Staleness(max_staleness, clock())
        self.changed = Notifier()
        shared_rng = rng or random.Random()
        self.workers = [
            Worker(
                slot,
                self.metrics,
                self.changed,
                batch_size=batch_size,
                batch_delay=batch_delay,
                backoff_base=backoff_base,
                backoff_cap=backoff_cap,
                clock=clock,
                rng=shared_rng,
            )
            for slot in self.slots
        ]
        self.connected = False
        self.accepted: Pos | None = None  # the stream position the hub will resume after
        self.last_event_id = ""
        self.high_water: Pos | None = None  # of the latest heartbeat of this subscription
        self.last_flush_at: float | None = None  # Unix time of the last gap flush
        self._gap: tuple[FlushCause, str] | None = (
            "start",
            "the sidecar started: what it missed before is unknown",
        )
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []  # the sink workers
        self._watcher: asyncio.Task[None] | None = None
        self.metrics.watch(
            lambda: (self.connected, self.caught_up(), {s.name: len(s.pending) for s in self.slots})
        )

    # --- lifecycle ---

    def start(self) -> None:
        for worker in self.workers:
            name = f"sink-{worker.slot.name}"
            self._tasks.append(asyncio.create_task(worker.run(), name=name))
        self._watcher = asyncio.create_task(self._watch(), name="staleness")

    async def stop(self, grace: float) -> None:
        """Apply what is pending within `grace`; the operation in flight always completes."""
        for worker in self.workers:
            worker.drain()  # no more events come: batches need not wait to fill
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self.changed.wait_for(lambda: all(s.idle for s in self.slots))
        self._closing = True
        self.changed.notify()
        for worker in self.workers:
            worker.close()
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)  # each ends after its op
        for slot in self.slots:
            if slot.pending or slot.flush_cause:
                log.error(
                    "invalidations not applied at shutdown",
                    extra={
                        "sink": slot.name,
                        "pending": len(slot.pending),
                        "flush_pending": slot.flush_cause is not None,
                    },
                )

    # --- from the stream (called on the event loop, never block) ---

    def on_connected(self) -> None:
        """The subscription is live (its first message arrived)."""
        self.connected = True
        self.high_water = None
        self._contact()
        if self._gap is not None:
            self.flush_all(*self._gap)
            self._gap = None
        self.changed.notify()

    def on_disconnected(self) -> None:
        self.connected = False
        self.high_water = None
        self.changed.notify()

    def on_events(self, invs: Sequence[Invalidation]) -> None:
        self._contact()
        now = self.clock()
        self.metrics.events.inc(len(invs))
        for inv in invs:
            pos = parse_id(inv.id)
            if pos is None:
                log.warning(
                    "event id is not <epoch>-<n>; applied without ordering", extra={"id": inv.id}
                )
            else:
                acc = self.accepted
                if acc is not None and acc.epoch == pos.epoch and pos.seq <= acc.seq:
                    self.metrics.duplicates.inc()
                    continue
                if acc is None or acc.epoch != pos.epoch:
                    if acc is not None:
                        self.flush_all(
                            "epoch", f"epoch {pos.epoch} follows {acc.epoch} unannounced"
                        )
                    self.epochs.see(pos.epoch)
                self.accepted = pos
                self.last_event_id = inv.id
            self._enqueue(self.rules.expand(inv), pos, now)
        self.changed.notify()

    def on_heartbeat(self, high_water_id: str) -> None:
        """The stream is in order: every event up to the high-water id has been sent."""
        self._contact()
        hw = parse_id(high_water_id)
        if hw is not None:
            acc = self.accepted
            if acc is not None and acc.epoch != hw.epoch:
                self.flush_all("epoch", f"heartbeat of epoch {hw.epoch}, not {acc.epoch}")
                acc = None
            self.epochs.see(hw.epoch)
            if acc is None or hw.seq > acc.seq:
                self.accepted = hw
            self.high_water = hw
        self.changed.notify()

    def on_reset(self, reason: str, detail: str, resume_from: str) -> None:
        self._contact()
        self.metrics.resets.labels(reason).inc()
        if reason == "slow_consumer":
            # The stream ends; resuming from what we accepted replays what we missed.
            log.warning(
                "hub dropped this subscriber as slow; resuming",
                extra={"detail": detail, "resume_from": self.resume_id()},
            )
            return
        log.warning(
            "hub reset: invalidations may have been lost",
            extra={"reason": reason, "detail": detail, "resume_from": resume_from},
        )
        self.flush_all("reset", f"{reason}: {detail}")
        pos = parse_id(resume_from)
        if pos is not None:
            self.epochs.see(pos.epoch)
        self.accepted = pos
        self.changed.notify()

    def resume_id(self) -> str:
        return self.accepted.id if self.accepted is not None else ""

    def restore(self, event_id: str) -> bool:
        """Resume after `event_id`, applied everywhere before a restart (--state-file):
        no flush at start; the hub replays what followed, or resets (and we flush)."""
        pos = parse_id(event_id)
        if pos is None:
            return False
        self.epochs.see(pos.epoch)
        self.accepted = pos
        for slot in self.slots:
            slot.applied = pos
        self._gap = None
        return True

    # --- queries ---

    def slot_applied(self, slot: Slot) -> Pos | None:
        """The position up to which this sink has applied everything accepted."""
        return self.accepted if slot.idle else slot.applied

    def applied_everywhere(self, pos: Pos) -> bool:
        return all(self.epochs.covers(self.slot_applied(s), pos) for s in self.slots)

    def applied_id(self) -> str:
        """The position every sink has applied through ("" when unknown)."""
        return min_id(self.epochs, [self.slot_applied(s) for s in self.slots])

    def caught_up(self) -> bool:
        hw = self.high_water
        return self.connected and hw is not None and self.applied_everywhere(hw)

    def state(self) -> str:
        if self.staleness.silent(self.clock()):
            return "stale"
        if not self.connected:
            return "connecting"
        return "live" if self.caught_up() else "catching_up"

    async def wait_applied(self, event_id: str) -> None:
        """Return once `event_id` is applied to every sink (InvalidInput if it is no id)."""
        pos = parse_id(event_id)
        if pos is None:
            raise InvalidInput(f"id {event_id!r} is not an event id (<epoch>-<position>)")
        await self.changed.wait_for(lambda: self.applied_everywhere(pos))

    async def wait_caught_up(self) -> None:
        await self.changed.wait_for(self.caught_up)

    def status(self) -> dict[str, Any]:
        applied = [self.slot_applied(s) for s in self.slots]
        return {
            "state": self.state(),
            "connected": self.connected,
            "caught_up": self.caught_up(),
            "last_event_id": self.last_event_id,
            "resume_from": self.resume_id(),
            "applied_id": min_id(self.epochs, applied),
            "high_water_id": self.high_water.id if self.high_water else "",
            "seconds_since_contact": round(self.clock() - self.staleness.last_contact, 3),
            "last_contact_at": time.time() - (self.clock() - self.staleness.last_contact),
            "last_flush_at": self.last_flush_at,
            "sinks": {
                s.name: {
                    "state": ("flushing" if s.flush_cause else "failing" if s.failing else "ok"),
                    "pending": len(s.pending),
                    "applied_id": p.id if p else "",
                    "flush": s.flush_enabled,
                    "errors": s.errors,
                    "last_error": s.last_error,
                }
                for s, p in zip(self.slots, applied, strict=True)
            },
        }

    # --- flushes and queues ---

    def flush_all(self, cause: FlushCause, detail: str) -> None:
        self.last_flush_at = time.time()
        for slot in self.slots:
            self.request_flush(slot, cause, detail)

    def request_flush(self, slot: Slot, cause: FlushCause, detail: str) -> None:
        if not slot.flush_enabled:
            self.metrics.flushes_skipped.labels(slot.name, cause).inc()
            log.warning(
                "flush needed but turned off for this sink",
                extra={"sink": slot.name, "cause": cause, "detail": detail},
            )
            return
        slot.clear()  # everything before the flush is subsumed by it
        slot.flush_cause, slot.flush_detail = cause, detail
        slot.flush_covers = self.accepted
        slot.flush_gen += 1
        slot.wake.set()

    def _enqueue(self, inv: Invalidation, pos: Pos | None, now: float) -> None:
        span = None
        if ct.tracer() is not None:
            span = trace.get_current_span().get_span_context()
        for slot in self.slots:
            item_inv = inv
            if inv.flush:
                self.request_flush(slot, "event", f"event {inv.id} asks for a flush")
                if slot.flush_enabled:
                    continue  # the flush covers the event's keys too
                item_inv = replace(inv, flush=False)
            if slot.allow is not None:
                item_inv = self._confine(slot, item_inv)
            if self._over(slot):
                if slot.flush_enabled:
                    self.request_flush(
                        slot,
                        "overflow",
                        f"more than {self.max_pending} invalidations or "
                        f"{self.max_pending_bytes} bytes pending",
                    )
                    continue
                while slot.pending and self._over(slot):
                    slot.pop_oldest()
                    self.metrics.dropped.labels(slot.name).inc()
                if not slot.overflowing:
                    slot.overflowing = True
                    log.error(
                        "sink over --max-pending or --max-pending-bytes with flush off: "
                        "dropping the oldest",
                        extra={
                            "sink": slot.name,
                            "max_pending": self.max_pending,
                            "max_pending_bytes": self.max_pending_bytes,
                        },
                    )
            slot.push(Item(item_inv, pos, now, span))
            slot.wake.set()

    def _over(self, slot: Slot) -> bool:
        return len(slot.pending) >= self.max_pending or slot.pending_bytes >= self.max_pending_bytes

    def _confine(self, slot: Slot, inv: Invalidation) -> Invalidation:
        assert slot.allow is not None
        refused: Counter[str] = Counter()
        confined = slot.allow.confine(inv, refused)
        for reason, n in refused.items():
            self.metrics.refused.labels(slot.name, reason).inc(n)
        if refused:
            log.warning(
                "keys or prefixes outside --allow-prefixes not applied",
                extra={
                    "sink": slot.name,
                    "id": inv.id,
                    "type": inv.type,
                    "refused": dict(refused),
                    "allow_prefixes": list(slot.allow.prefixes),
                },
            )
        return confined

    def _contact(self) -> None:
        self.staleness.contact(self.clock())

    # --- staleness ---

    def tick(self) -> None:
        """Flush when the hub has been silent for max_staleness, and again while it stays so."""
        now = self.clock()
        if self.staleness.due(now):
            silent = now - self.staleness.last_contact
            log.warning(
                "no event or heartbeat from the hub: flushing",
                extra={"silent_seconds": round(silent, 3), "bound": self.staleness.bound},
            )
            self.flush_all("stale", f"no event or heartbeat for {silent:.1f}s")
            self.staleness.flushed(now)
            self.changed.notify()

    async def _watch(self) -> None:
        while not self._closing:
            try:
                self.tick()
            except Exception:
                log.exception("staleness check failed")
            now = self.clock()
            await asyncio.sleep(max(0.005, self.staleness.next_check(now) - now))
