"""Soak: steady load on 2 hubs (Redis broker) and 2 sidecars for CACHEWIRE_SOAK_DURATION
seconds (20 by default, 60 in CI, `make soak DURATION=600`): no violation, and after
warm-up no process's RSS or open file descriptors grow past the limits in tests.chaos.soak."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import pytest

from tests.chaos import soak
from tests.chaos.conftest import SOAK_LINES, record
from tests.chaos.harness import Deployment, Options

DURATION = float(os.environ.get("CACHEWIRE_SOAK_DURATION", "20"))
WARM_UP = min(30.0, DURATION / 4)
SAMPLE_EVERY = 1.0


@pytest.mark.timeout(DURATION + 240)
def test_soak(deployment: Callable[..., Deployment]) -> None:
    # The relay's history is bounded (--relay-history): filled during warm-up, so that its
    # growth to the bound is not taken for a leak.
    dep = deployment(Options(sidecar_args=("--relay-history", "500")))
    watched = [
        soak.Samples(service.name, service.proc.popen.pid)
        for service in [*dep.hubs, *(n.sidecar for n in dep.nodes)]
        if service.proc is not None
    ]

    def steady(d: Deployment) -> None:
        """No fault: the load runs for DURATION; resources are sampled after warm-up."""
        began = time.monotonic()
        tick = threading.Event()
        while (elapsed := time.monotonic() - began) < DURATION:
            if elapsed >= WARM_UP:
                for samples in watched:
                    samples.take(elapsed)
            tick.wait(SAMPLE_EVERY)  # the sampling pace

    fig = dep.run(f"soak {DURATION:.0f} s (no fault)", steady, warm=0.5)
    SOAK_LINES.extend([f"soak {DURATION:.0f} s, warm-up {WARM_UP:.0f} s", soak.HEADER])
    broken: list[str] = []
    for samples in watched:
        line, bad = samples.verdict()
        SOAK_LINES.append(line)
        broken += bad
    record(fig)
    assert not broken, broken
