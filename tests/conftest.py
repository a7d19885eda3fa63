"""Shared fixtures: factories that start real servers and stop them afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from cachewire.hub.server import Hub
from cachewire.hub.settings import HubSettings
from tests.servers import Proc, start_hub, start_memcached, start_redis, start_sidecar


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Processes registered here are stopped (SIGTERM, then SIGKILL) after the test."""
    started: list[Proc] = []
    yield started
    for proc in reversed(started):
        proc.stop()


@pytest.fixture
def redis_server(procs: list[Proc]) -> Proc:
    proc = start_redis()
    procs.append(proc)
    return proc


@pytest.fixture
def memcached_server(procs: list[Proc]) -> Proc:
    proc = start_memcached()
    procs.append(proc)
    return proc


@pytest.fixture
def hub_process(procs: list[Proc]) -> Callable[..., Proc]:
    """Factory: hub_process("--broker", "redis", ...) → a running cachewire-hub process."""

    def make(*args: str, **kwargs: Any) -> Proc:
        proc = start_hub(*args, **kwargs)
        procs.append(proc)
        return proc

    return make


@pytest.fixture
def sidecar_process(procs: list[Proc]) -> Callable[..., Proc]:
    """Factory: sidecar_process("--memcached", addr, hub=hub) → a running cachewire-sidecar."""

    def make(*args: str, **kwargs: Any) -> Proc:
        proc = start_sidecar(*args, **kwargs)
        procs.append(proc)
        return proc

    return make


@pytest.fixture
async def hub_factory() -> AsyncIterator[Callable[..., Any]]:
    """Factory: `await hub_factory(heartbeat=0.05)` → a started in-process Hub on port 0."""
    hubs: list[Hub] = []

    async def make(broker: Any = None, **overrides: Any) -> Hub:
        settings = HubSettings(**{"http_port": 0, "grpc_port": 0, **overrides})
        hub = Hub(settings, broker=broker)
        await hub.start()
        hubs.append(hub)
        return hub

    yield make
    for hub in reversed(hubs):
        await hub.stop(grace=0.5)
