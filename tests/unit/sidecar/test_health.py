"""The health port of an in-process Sidecar with in-memory sinks (no hub needed).

The applier is driven directly (as the stream would drive it) so that each endpoint's
answer can be checked in every state.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from cachewire.sidecar.server import Sidecar
from cachewire.sidecar.settings import SidecarSettings
from cachewire.sidecar.sinks.base import Invalidation
from cachewire.sidecar.state import Slot
from tests.servers import free_port
from tests.unit.sidecar.fakes import MemorySink

WAIT = 10.0


@pytest.fixture
async def sidecar() -> AsyncIterator[Sidecar]:
    settings = SidecarSettings(
        hub=f"127.0.0.1:{free_port()}",  # nobody listens: the stream keeps retrying
        topics=("user",),
        health_port=0,
        backoff_base=0.05,
        backoff_cap=0.1,
    )
    sc = Sidecar(settings, slots=[Slot(MemorySink("a")), Slot(MemorySink("b"), False)])
    await sc.start()
    yield sc
    await sc.stop(0)


@pytest.fixture
async def http(sidecar: Sidecar) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{sidecar.health_port}") as session:
        yield session


async def get(http: aiohttp.ClientSession, path: str) -> tuple[int, dict[str, object]]:
    async with http.get(path) as resp:
        return resp.status, await resp.json()


async def test_healthz_and_not_ready_before_subscribing(http: aiohttp.ClientSession) -> None:
    assert await get(http, "/healthz") == (200, {"status": "ok"})
    status, body = await get(http, "/readyz")
    assert status == 503
    assert body["connected"] is False and body["sinks"] == {"a": True, "b": True}


async def test_ready_once_caught_up_and_not_when_a_sink_is_unreachable(
    sidecar: Sidecar, http: aiohttp.ClientSession
) -> None:
    applier = sidecar.applier
    applier.on_connected()
    applier.on_heartbeat("e-5")
    async with asyncio.timeout(WAIT):
        await sidecar.wait_ready()
    status, body = await get(http, "/readyz")
    assert status == 200 and body["state"] == "live"
    sink_b = applier.slots[1].sink
    assert isinstance(sink_b, MemorySink)
    sink_b.failing = True
    status, body = await get(http, "/readyz")
    assert status == 503 and body["sinks"] == {"a": True, "b": False}


async def test_status_reports_positions_and_sinks(
    sidecar: Sidecar, http: aiohttp.ClientSession
) -> None:
    applier = sidecar.applier
    applier.on_connected()
    applier.on_events([Invalidation(id="e-1", type="user", keys=("k",))])
    async with asyncio.timeout(WAIT):
        await sidecar.wait_applied("e-1")
    status, body = await get(http, "/v1/status")
    assert status == 200
    assert body["connected"] is True and body["last_event_id"] == "e-1"
    assert body["applied_id"] == "e-1" and body["topics"] == ["user"]
    assert body["sinks"]["b"] == {  # type: ignore[index]
        "state": "ok",
        "pending": 0,
        "applied_id": "e-1",
        "flush": False,
        "errors": 0,
        "last_error": "",
    }


async def test_applied_barrier(sidecar: Sidecar, http: aiohttp.ClientSession) -> None:
    """200 once applied everywhere; 408 on timeout; 400 on bad input, as JSON."""
    applier = sidecar.applier
    applier.on_connected()
    waiting = asyncio.create_task(get(http, "/v1/applied?id=e-2&timeout=10"))
    applier.on_events([Invalidation(id="e-2", type="user", keys=("k",))])
    assert await waiting == (200, {"id": "e-2", "applied": True})
    status, body = await get(http, "/v1/applied?id=e-99&timeout=0.05")
    assert status == 408 and "not applied" in str(body["error"])
    for query, message in [
        ("", "'id' is required"),
        ("id=nonsense", "is not an event id"),
        ("id=e-1&timeout=abc", "not a number"),
        ("id=e-1&timeout=-1", "timeout must be 0..60"),
        ("id=e-1&timeout=nan", "timeout must be 0..60"),
    ]:
        status, body = await get(http, f"/v1/applied?{query}")
        assert status == 400 and message in str(body["error"]), query


async def test_metrics_exposition(sidecar: Sidecar, http: aiohttp.ClientSession) -> None:
    applier = sidecar.applier
    applier.on_connected()
    applier.on_events([Invalidation(id="e-1", type="user", keys=("k",), published_at=1.0)])
    async with asyncio.timeout(WAIT):
        await sidecar.wait_applied("e-1")
    async with http.get("/metrics") as resp:
        text = await resp.text()
    for line in [
        'cachewire_sidecar_applied_total{sink="a"} 1.0',
        'cachewire_sidecar_pending{sink="b"} 0.0',
        "cachewire_sidecar_connected 1.0",
        'cachewire_sidecar_apply_lag_seconds_count{sink="a"} 1.0',
        "cachewire_sidecar_reconnects_total 0.0",
    ]:
        assert line in text
    assert 'cachewire_sidecar_flushes_skipped_total{reason="start",sink="b"} 1.0' in text
