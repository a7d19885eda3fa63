"""Chaos scenarios: each runs a deployment under load, injects one fault, and holds every
guarded cache to the staleness bound (0 violations). `make chaos` runs them all with longer
phases; the test suite runs the ones not marked `full_only`, short."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.chaos.conftest import record
from tests.chaos.harness import FULL, Deployment, Options

full_only = pytest.mark.skipif(not FULL, reason="make chaos (CACHEWIRE_CHAOS=full) runs this")
pytestmark = pytest.mark.timeout(240)

Make = Callable[..., Deployment]


def test_hub_kill_9_redis_broker(deployment: Make) -> None:
    """One of two hubs on Redis is killed and restarted; sidecars move to the other."""
    dep = deployment(Options())

    def fault(d: Deployment) -> None:
        d.checker.fault("kill -9 hub0")
        d.hubs[0].restart()

    record(dep.run("hub kill -9 (redis, 2 hubs)", fault))
