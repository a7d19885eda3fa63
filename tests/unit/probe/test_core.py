"""The prober's accounting: outcomes → histogram, violations, and the within-T ratios."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from cachewire.probe.core import Outcome, ProbeMetrics, Window, canary_key, probe_topic


def test_window_ratio_counts_only_canaries_gone_in_time() -> None:
    window = Window(size=4)
    assert window.ratio(1.0) is None
    for outcome in (
        Outcome("m", "gone", 0.01),
        Outcome("m", "gone", 1.5),
        Outcome("m", "violation", 5.0),
        Outcome("m", "gone", 0.2),
    ):
        window.add(outcome)
    assert window.ratio(1.0) == 0.5
    assert window.ratio(5.0) == 0.75
    window.add(Outcome("m", "gone", 0.1))  # the oldest falls out of the window
    assert window.ratio(1.0) == 0.5


def test_metrics_record_histogram_violations_and_ratios() -> None:
    registry = CollectorRegistry()
    metrics = ProbeMetrics(registry, bound=2.0)
    metrics.record(Outcome("memcached", "gone", 0.05))
    metrics.record(Outcome("memcached", "violation", 2.0))
    sample = registry.get_sample_value
    assert sample("cachewire_probe_invalidation_seconds_count", {"cache": "memcached"}) == 1
    assert sample("cachewire_probe_violations_total", {"cache": "memcached"}) == 1
    assert sample("cachewire_probe_probes_total", {"cache": "memcached"}) == 2
    labels = {"cache": "memcached", "within": "bound"}
    assert sample("cachewire_probe_within_bound_ratio", labels) == 0.5


def test_canary_keys_and_topics_are_namespaced() -> None:
    assert canary_key("pod-1-ab12", 7) == "cachewire-probe:pod-1-ab12:7"
    assert probe_topic("pod-1-ab12") == "cachewire:probe:pod-1-ab12"
