"""The app-side library continues the trace when it applies an invalidation to its cache.

An in-process hub over real gRPC and HTTP; the `Invalidator` subscribes to it as it would
to the sidecar's relay (same protocol); spans of both go to one in-memory exporter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import cachetools
from opentelemetry.trace import SpanKind

from cachewire.common import telemetry as ct
from cachewire.hub.server import Hub
from cachewire.sidecar import telemetry
from cachewire.sidecar.client import Invalidator
from cachewire.v1 import hub_pb2
from tests.otlp import in_memory_tracing

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"
WAIT = 20.0
HubFactory = Callable[..., Any]


async def post(hub: Hub, body: object, headers: dict[str, str]) -> list[str]:
    url = f"http://127.0.0.1:{hub.http_port}/v1/publish"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=headers) as resp,
    ):
        assert resp.status == 200, await resp.text()
        ids: list[str] = (await resp.json())["ids"]
        return ids


async def test_applying_to_a_cachetools_cache_is_a_span_in_the_events_trace(
    hub_factory: HubFactory,
) -> None:
    cache: cachetools.LRUCache[str, str] = cachetools.LRUCache(maxsize=10)
    with in_memory_tracing() as exporter:
        hub = await hub_factory(subscribe_heartbeat=0.05)
        async with Invalidator(f"127.0.0.1:{hub.grpc_port}", ["user"], cache) as inv:
            async with asyncio.timeout(WAIT):
                await inv.wait_connected_async()
            with inv.lock:
                cache.update({"user:42": "v", "user:7": "v"})
            (event_id,) = await post(
                hub,
                {"type": "user:42", "keys": ["user:42"]},
                {"traceparent": f"00-{TRACE}-{SPAN}-01"},
            )
            async with asyncio.timeout(WAIT):
                await inv.wait_applied_async(event_id)
            assert dict(cache) == {"user:7": "v"}
        spans = {s.name: s for s in exporter.get_finished_spans()}
    publish, apply = spans["publish"], spans["apply cachetools"]
    assert apply.kind == SpanKind.CONSUMER
    assert apply.context.trace_id == int(TRACE, 16)
    assert apply.parent is not None and apply.parent.span_id == publish.context.span_id
    assert [(x.context.span_id, dict(x.attributes or {})) for x in apply.links] == [
        (publish.context.span_id, {"messaging.message.id": event_id})
    ]
    attrs = dict(apply.attributes or {})
    assert attrs["cachewire.sink.name"] == "cachetools"
    assert (attrs["messaging.message.id"], attrs["cachewire.keys.count"]) == (event_id, 1)
    assert attrs["messaging.operation.type"] == "process"


def test_with_tracing_off_the_apply_costs_one_shared_no_op() -> None:
    """No span, no allocation: the same reusable context manager every time."""
    assert ct.tracer() is None
    batch = [hub_pb2.Event(id="e-1", type="user:1", keys=["u:1"])]
    first = telemetry.client_apply_span("cachetools", batch)
    assert first is telemetry.client_apply_span("cachetools", batch)
    with first as span:
        assert span is None
