"""Prometheus metrics, read from the core's plain counters at scrape time.

The hot path only bumps integers; this collector turns them into metric families when
/metrics is scraped, on a registry per Hub so that several hubs can live in one process.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from cachewire.hub.server import Hub

TRANSPORTS = ("sse", "grpc_plasma", "grpc")


class HubCollector(Collector):
    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    def collect(self) -> Iterator[Metric]:
        fanout, broker = self._hub.fanout, self._hub.broker
        connections = GaugeMetricFamily(
            "cachewire_hub_connections", "Open subscriber streams", labels=["transport"]
        )
        for kind in TRANSPORTS:
            connections.add_metric([kind], fanout.count(kind))
        yield connections
        yield CounterMetricFamily(
            "cachewire_hub_events_published",
            "Events dispatched by the broker",
            value=fanout.published,
        )
        yield CounterMetricFamily(
            "cachewire_hub_deliveries", "Event deliveries to subscribers", value=fanout.deliveries
        )
        drops = CounterMetricFamily(
            "cachewire_hub_slow_consumer_drops",
            "Subscribers reset and dropped because they fell behind their queue",
            labels=["transport"],
        )
        for kind in TRANSPORTS:
            drops.add_metric([kind], fanout.slow_drops[kind])
        yield drops
        pressure = fanout.pressure
        yield GaugeMetricFamily(
            "cachewire_hub_lagging_subscribers",
            "Subscribers holding --lag-threshold or more undelivered events",
            value=len(pressure.lagging),
        )
        yield GaugeMetricFamily(
            "cachewire_hub_behind",
            "1 while more than half the subscribers lag: publishes wait",
            value=int(pressure.behind),
        )
        yield CounterMetricFamily(
            "cachewire_hub_publish_waits",
            "Publishes that waited because the hub was behind",
            value=pressure.waited,
        )
        yield CounterMetricFamily(
            "cachewire_hub_publish_overloaded",
            "Publishes refused (503 / RESOURCE_EXHAUSTED) after waiting --publish-wait",
            value=pressure.refused,
        )
        lane = self._hub.connections.lane
        if lane is not None:
            yield CounterMetricFamily(
                "cachewire_hub_fast_publishes",
                "POST /v1/publish requests answered by the fast lane (--fast-publish)",
                value=lane.answered,
            )
            yield CounterMetricFamily(
                "cachewire_hub_fast_lane_deferred",
                "Publish requests the fast lane handed to the full HTTP stack (not plain)",
                value=lane.deferred,
            )
        yield GaugeMetricFamily(
            "cachewire_hub_history_size",
            "Events in the broker's history",
            value=broker.history_size(),
        )
        yield GaugeMetricFamily(
            "cachewire_hub_topics",
            "Topics with at least one subscriber",
            value=fanout.topic_count(),
        )
        yield GaugeMetricFamily(
            "cachewire_hub_ready", "1 when the broker works", value=int(broker.ready())
        )
        if hasattr(broker, "metrics"):  # the Redis broker's reader gaps (hub/brokers/redis.py)
            yield from broker.metrics()
        if self._hub._ingest is not None:  # Plasma's Redis channels (hub/ingest.py)
            yield from self._hub._ingest.metrics()
        auth = self._hub.auth
        if auth is not None:  # --auth protected (hub/auth)
            denied = CounterMetricFamily(
                "cachewire_auth_denied",
                "Requests and streams refused by auth, by reason",
                labels=["reason"],
            )
            for reason in ("missing", "invalid", "expired", "revoked", "insufficient_scope"):
                denied.add_metric([reason], auth.denied[reason])
            yield denied


def make_registry(hub: Hub) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(hub))
    return registry
