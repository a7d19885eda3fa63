"""What a probe round found, and the metrics it feeds (pure: no I/O, a registry in)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CANARY_PREFIX = "cachewire-probe:"
TOPIC_PREFIX = "cachewire:probe"
FAST = 1.0  # seconds: the "within 1 s" nines
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
Result = Literal["gone", "violation"]


def canary_key(instance: str, seq: int) -> str:
    """A canary's key: under the reserved `cachewire-probe:` prefix, so it never names an
    application's entry (keep application keys out of that prefix)."""
    return f"{CANARY_PREFIX}{instance}:{seq}"


def probe_topic(instance: str) -> str:
    """The event type of this prober's canaries; only the sidecar guarding its caches
    subscribes to it (or to `cachewire:probe`, for all probers)."""
    return f"{TOPIC_PREFIX}:{instance}"


@dataclass(frozen=True, slots=True)
class Outcome:
    cache: str
    result: Result
    seconds: float  # publish (first attempt) → gone; for a violation, how long it was watched


class Window:
    """The last `size` outcomes of one cache: the fraction within 1 s and within the bound."""

    def __init__(self, size: int) -> None:
        self.outcomes: deque[Outcome] = deque(maxlen=size)

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    def ratio(self, within: float) -> float | None:
        if not self.outcomes:
            return None
        good = sum(1 for o in self.outcomes if o.result == "gone" and o.seconds <= within)
        return good / len(self.outcomes)


class _Ratios(Collector):
    def __init__(self, metrics: ProbeMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "cachewire_probe_within_bound_ratio",
            "Fraction of the last probes whose canary was gone within 1 s / within the bound",
            labels=["cache", "within"],
        )
        for cache, window in self._metrics.windows.items():
            for label, seconds in (("1s", FAST), ("bound", self._metrics.bound)):
                ratio = window.ratio(seconds)
                if ratio is not None:
                    family.add_metric([cache, label], ratio)
        yield family


class ProbeMetrics:
    """cachewire_probe_* on a registry (the sidecar's, or the probe command's own)."""

    def __init__(self, registry: CollectorRegistry, bound: float, window: int = 100) -> None:
        self.bound = bound
        self.window = window
        self.windows: dict[str, Window] = {}
        self.seconds = Histogram(
            "cachewire_probe_invalidation_seconds",
            "Publish of a canary's invalidation → the canary gone from the cache",
            ["cache"],
            buckets=BUCKETS,
            registry=registry,
        )
        self.probes = Counter(
            "cachewire_probe_probes", "Canaries watched, per cache", ["cache"], registry=registry
        )
        self.violations = Counter(
            "cachewire_probe_violations",
            "Canaries still in the cache longer than the bound after their invalidation",
            ["cache"],
            registry=registry,
        )
        self.errors = Counter(
            "cachewire_probe_errors",
            "Probe steps that failed (write, look-up, publish), per step; retried",
            ["step"],
            registry=registry,
        )
        registry.register(_Ratios(self))

    def record(self, outcome: Outcome) -> None:
        self.probes.labels(outcome.cache).inc()
        self.windows.setdefault(outcome.cache, Window(self.window)).add(outcome)
        if outcome.result == "gone":
            self.seconds.labels(outcome.cache).observe(outcome.seconds)
        else:
            self.violations.labels(outcome.cache).inc()

    def ratio(self, cache: str, within: float) -> float | None:
        window = self.windows.get(cache)
        return window.ratio(within) if window else None
