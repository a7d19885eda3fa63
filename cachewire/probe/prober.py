"""The probe loop: canary in, invalidation published, time until the canary is gone.

A round: write the canary `cachewire-probe:<instance>:<n>` into every probed cache (with a
TTL, so nothing is left behind), publish its invalidation (type `cachewire:probe:<instance>`,
the canary as its key) through the hub's gRPC `Publish` — retried until accepted, as a
careful app would — and look the canary up every `poll` seconds. Gone within the bound: an
observation of the latency histogram. Still there when the bound has passed: a violation,
logged and counted. Time is measured from the first publish attempt, on the monotonic clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import grpc

from cachewire.probe.caches import CanaryCache
from cachewire.probe.core import Outcome, ProbeMetrics, canary_key, probe_topic
from cachewire.v1 import hub_pb2, hub_pb2_grpc

log = logging.getLogger("cachewire.probe")

Publish = Callable[[str, str], Awaitable[str]]  # (type, key) → event id


class GrpcPublisher:
    """Publishes canary invalidations to the hub's `cachewire.v1.Hub/Publish`."""

    def __init__(self, target: str, timeout: float = 2.0) -> None:
        self.target, self.timeout = target, timeout
        self._channel: grpc.aio.Channel | None = None

    async def __call__(self, event_type: str, key: str) -> str:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.target)
        stub = hub_pb2_grpc.HubStub(self._channel)  # type: ignore[no-untyped-call]
        request = hub_pb2.PublishRequest(events=[hub_pb2.EventInput(type=event_type, keys=[key])])
        reply = await stub.Publish(request, timeout=self.timeout)
        return str(reply.ids[0])

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


class Prober:
    def __init__(
        self,
        caches: Sequence[CanaryCache],
        publish: Publish,
        metrics: ProbeMetrics,
        *,
        instance: str,
        interval: float,
        bound: float,
        poll: float = 0.01,
        ready: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.caches = list(caches)
        self.publish = publish
        self.metrics = metrics
        self.instance = instance
        self.topic = probe_topic(instance)
        self.interval, self.bound, self.poll = interval, bound, poll
        self.ready = ready
        self.clock = clock
        self.rounds = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="prober")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for cache in self.caches:
            with contextlib.suppress(Exception):
                await cache.close()

    async def _run(self) -> None:
        if self.ready is not None:
            await self.ready()  # the first canary only once the pipeline is up
        while True:
            began = self.clock()
            try:
                await self.probe_once()
            except Exception:  # a bug must not end probing: log and go on
                log.exception("probe round failed")
            await asyncio.sleep(max(0.0, began + self.interval - self.clock()))

    async def probe_once(self) -> list[Outcome]:
        """One canary through every cache; the outcomes are recorded in the metrics."""
        self.rounds += 1
        key = canary_key(self.instance, self.rounds)
        written: list[CanaryCache] = []
        for cache in self.caches:
            try:
                await cache.put(key, ttl=self.bound * 4 + 60)
            except Exception as exc:
                self._error("write", cache.name, exc)
            else:
                written.append(cache)
        if not written:
            return []
        started = self.clock()
        deadline = started + self.bound
        publishing = asyncio.create_task(self._publish(key, deadline))
        outcomes: list[Outcome] = []
        pending = list(written)
        try:
            while pending:
                for cache in list(pending):
                    try:
                        present = await cache.present(key)
                    except Exception as exc:
                        self._error("lookup", cache.name, exc)
                        continue
                    if not present:
                        outcomes.append(Outcome(cache.name, "gone", self.clock() - started))
                        pending.remove(cache)
                if not pending or self.clock() >= deadline:
                    break
                await asyncio.sleep(self.poll)
        finally:
            publishing.cancel()
            await asyncio.wait([publishing])
        published = "" if publishing.cancelled() else publishing.result()
        for cache in pending:
            seconds = self.clock() - started
            outcomes.append(Outcome(cache.name, "violation", seconds))
            log.error(
                "probe: canary outlived the staleness bound",
                extra={
                    "cache": cache.name,
                    "key": key,
                    "bound": self.bound,
                    "seconds": round(seconds, 3),
                    "published": published or None,
                },
            )
        for outcome in outcomes:
            self.metrics.record(outcome)
        return outcomes

    async def _publish(self, key: str, deadline: float) -> str:
        delay = 0.05
        while True:
            try:
                return await self.publish(self.topic, key)
            except Exception as exc:
                self._error("publish", "hub", exc)
            if self.clock() + delay >= deadline:
                return ""
            await asyncio.sleep(delay)
            delay = min(1.0, delay * 2)

    def _error(self, step: str, where: str, exc: Exception) -> None:
        self.metrics.errors.labels(step).inc()
        log.warning(
            "probe step failed", extra={"step": step, "where": where, "error": f"{exc!r}"[:300]}
        )
