"""Prometheus metrics of one sidecar, on its own registry (several can share a process)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cachewire.sidecar.telemetry import ApplyLag


class _Gauges(Collector):
    """Gauges read from the applier when /metrics is scraped."""

    def __init__(self, read: Callable[[], tuple[bool, bool, dict[str, int]]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        connected, ready, pending = self._read()
        yield GaugeMetricFamily(
            "cachewire_sidecar_connected", "1 while subscribed to the hub", value=int(connected)
        )
        yield GaugeMetricFamily(
            "cachewire_sidecar_caught_up",
            "1 while every sink has applied up to the hub's high-water id",
            value=int(ready),
        )
        family = GaugeMetricFamily(
            "cachewire_sidecar_pending",
            "Invalidations waiting to be applied, per sink",
            labels=["sink"],
        )
        for sink, n in pending.items():
            family.add_metric([sink], n)
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events = Counter(
            "cachewire_sidecar_events", "Events received from the hub", registry=r
        )
        self.duplicates = Counter(
            "cachewire_sidecar_duplicates",
            "Events received again (after a resume) and skipped",
            registry=r,
        )
        self.applied = Counter(
            "cachewire_sidecar_applied", "Invalidations applied, per sink", ["sink"], registry=r
        )
        self.batches = Counter(
            "cachewire_sidecar_batches", "Batches applied, per sink", ["sink"], registry=r
        )
        # cachewire_sidecar_apply_lag_seconds{sink}: hub receive → confirmed, trace exemplars
        self.lag = ApplyLag(r)
        self.reconnects = Counter(
            "cachewire_sidecar_reconnects", "Subscriptions to the hub after the first", registry=r
        )
        self.resets = Counter(
            "cachewire_sidecar_resets", "Resets received from the hub", ["reason"], registry=r
        )
        self.flushes = Counter(
            "cachewire_sidecar_flushes",
            "Flushes done, per sink and cause",
            ["sink", "reason"],
            registry=r,
        )
        self.flushes_skipped = Counter(
            "cachewire_sidecar_flushes_skipped",
            "Flushes not done because the sink's flush is turned off",
            ["sink", "reason"],
            registry=r,
        )
        self.sink_errors = Counter(
            "cachewire_sidecar_sink_errors",
            "Failed sink operations (each is retried)",
            ["sink"],
            registry=r,
        )
        self.dropped = Counter(
            "cachewire_sidecar_dropped",
            "Invalidations dropped past --max-pending by a sink whose flush is off",
            ["sink"],
            registry=r,
        )
        self.skipped_keys = Counter(
            "cachewire_sidecar_skipped_keys",
            "Keys or prefixes a sink cannot hold (so cannot be stale), per reason",
            ["sink", "reason"],
            registry=r,
        )

        self.express = Counter(
            "cachewire_sidecar_express_keys",
            "Invalidations whose keys were deleted ahead, while a prefix scan ran",
            ["sink"],
            registry=r,
        )
        self.refused = Counter(
            "cachewire_sidecar_refused",
            "Keys, prefixes and flushes outside --allow-prefixes, not applied, per reason",
            ["sink", "reason"],
            registry=r,
        )

    def watch(self, read: Callable[[], tuple[bool, bool, dict[str, int]]]) -> None:
        self.registry.register(_Gauges(read))
