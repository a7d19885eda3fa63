"""`--probe-interval`: the sidecar runs the consistency prober (cachewire.probe) on the
memcached and Redis it guards, publishing canaries to its own hub on a topic of its own
(`cachewire:probe:<instance>`, added to its subscription). The metrics go to the
sidecar's /metrics; the bound is its --max-staleness."""

from __future__ import annotations

import re
import secrets
import socket
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry

from cachewire.probe.core import ProbeMetrics
from cachewire.probe.prober import GrpcPublisher, Prober
from cachewire.sidecar.settings import SidecarSettings


def instance_name() -> str:
    """hostname (the pod's name in Kubernetes) and a random suffix, as one topic segment."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:40] or "sidecar"
    return f"{host}-{secrets.token_hex(3)}"


def make_prober(
    s: SidecarSettings, registry: CollectorRegistry, ready: Callable[[], Awaitable[None]]
) -> Prober | None:
    if s.probe_interval is None:
        return None
    from cachewire.probe.caches import CanaryCache, MemcachedCanary, RedisCanary

    caches: list[CanaryCache] = []
    if s.memcached:
        caches.append(MemcachedCanary(s.memcached))
    if s.redis_url:
        caches.append(RedisCanary(s.redis_url))
    return Prober(
        caches,
        GrpcPublisher(s.hub),
        ProbeMetrics(registry, bound=s.max_staleness),
        instance=instance_name(),
        interval=s.probe_interval,
        bound=s.max_staleness,
        ready=ready,
    )
