"""The sidecar's hub stream against an in-process hub over real gRPC: resume, reset, silence.

Hubs restart on the same gRPC port; sharing one MemoryBroker between two hubs keeps the
history (a resume replays), a fresh broker is a new epoch (a reset). Waits are on facts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from cachewire.hub.brokers.memory import MemoryBroker
from cachewire.hub.events import make_draft
from cachewire.hub.server import Hub
from cachewire.sidecar.server import Sidecar
from cachewire.sidecar.settings import SidecarSettings
from cachewire.sidecar.state import Slot
from cachewire.v1 import hub_pb2, hub_pb2_grpc
from tests.otlp import in_memory_tracing
from tests.servers import free_port
from tests.unit.sidecar.fakes import MemorySink

WAIT = 20.0
HubFactory = Callable[..., Any]


async def publish(hub: Hub, *events: hub_pb2.EventInput) -> list[str]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{hub.grpc_port}") as channel:
        stub = hub_pb2_grpc.HubStub(channel)  # type: ignore[no-untyped-call]
        response = await stub.Publish(hub_pb2.PublishRequest(events=list(events)))
    return list(response.ids)


def ev(type_: str, *keys: str) -> hub_pb2.EventInput:
    return hub_pb2.EventInput(type=type_, keys=list(keys))


@pytest.fixture
async def sidecars() -> AsyncIterator[Callable[..., Any]]:
    """Factory: await sidecars(grpc_port, **settings) → (started Sidecar, its MemorySink)."""
    started: list[Sidecar] = []

    async def make(grpc_port: int, **overrides: Any) -> tuple[Sidecar, MemorySink]:
        values: dict[str, Any] = {
            "hub": f"127.0.0.1:{grpc_port}",
            "topics": ("user",),
            "health_port": 0,
            "backoff_base": 0.05,
            "backoff_cap": 0.2,
            **overrides,
        }
        sink = MemorySink()
        sc = Sidecar(SidecarSettings(**values), slots=[Slot(sink)])
        await sc.start()
        started.append(sc)
        return sc, sink

    yield make
    for sc in started:
        await sc.stop(0)


async def test_events_applied_and_other_topics_covered(
    hub_factory: HubFactory, sidecars: Callable[..., Any]
) -> None:
    hub = await hub_factory(subscribe_heartbeat=0.05)
    sc, sink = await sidecars(hub.grpc_port)
    async with asyncio.timeout(WAIT):
        await sc.wait_ready()
    ids = await publish(hub, ev("user:1", "a"), ev("product:1", "p"), ev("user", "b"))
    async with asyncio.timeout(WAIT):
        for event_id in ids:
            await sc.wait_applied(event_id)
    assert sink.applied_ids == [ids[0], ids[2]]
    assert sink.log[0] == "flush:start"


async def test_resume_after_hub_restart_replays_without_flush(
    hub_factory: HubFactory, sidecars: Callable[..., Any]
) -> None:
    """Same history (a shared broker): what was published while away is replayed once."""
    broker, port = MemoryBroker(), free_port()
    hub = await hub_factory(broker=broker, grpc_port=port, subscribe_heartbeat=0.05)
    sc, sink = await sidecars(port, max_staleness=30)
    async with asyncio.timeout(WAIT):
        await sc.wait_ready()
    first = await publish(hub, ev("user:1", "a"))
    async with asyncio.timeout(WAIT):
        await sc.wait_applied(first[0])
    await hub.stop(grace=0.5)
    async with asyncio.timeout(WAIT):
        await sc.applier.changed.wait_for(lambda: not sc.applier.connected)
    missed = await broker.publish([make_draft(type="user:2", keys=["b"])])
    await hub_factory(broker=broker, grpc_port=port, subscribe_heartbeat=0.05)
    async with asyncio.timeout(WAIT):
        await sc.wait_applied(missed[0].id)
    assert sink.applied_ids == [first[0], missed[0].id]
    assert sink.log.count("flush:start") == 1 and len(sink.flushes) == 1
    assert sc.metrics.reconnects._value.get() == 1


async def test_new_epoch_resets_and_flushes(
    hub_factory: HubFactory, sidecars: Callable[..., Any]
) -> None:
    port = free_port()
    hub = await hub_factory(grpc_port=port, subscribe_heartbeat=0.05)
    sc, sink = await sidecars(port, max_staleness=30)
    async with asyncio.timeout(WAIT):
        await sc.wait_ready()
    await publish(hub, ev("user:1", "a"))
    await hub.stop(grace=0.5)
    hub2 = await hub_factory(grpc_port=port, subscribe_heartbeat=0.05)
    async with asyncio.timeout(WAIT):
        await sc.applier.changed.wait_for(lambda: "flush:reset" in sink.log)
    ids = await publish(hub2, ev("user:2", "b"))
    async with asyncio.timeout(WAIT):
        await sc.wait_applied(ids[0])
    assert sink.log[-2:] == ["flush:reset", f"apply:{ids[0]}"]
    assert sc.metrics.resets.labels("epoch_changed")._value.get() == 1


async def test_silence_flushes_after_the_bound_and_keeps_flushing(
    hub_factory: HubFactory, sidecars: Callable[..., Any]
) -> None:
    """Hub gone: a flush once max_staleness has passed since the last contact, then again."""
    hub = await hub_factory(subscribe_heartbeat=0.05)
    sc, sink = await sidecars(hub.grpc_port, max_staleness=0.5)
    async with asyncio.timeout(WAIT):
        await sc.wait_ready()
    await hub.stop(grace=0.5)
    async with asyncio.timeout(WAIT):
        await sc.applier.changed.wait_for(lambda: sink.log.count("flush:stale") >= 2)
    staleness = sc.applier.staleness
    assert staleness.last_flush is not None
    assert staleness.last_flush - staleness.last_contact >= 2 * 0.5
    assert sc.status()["state"] == "stale"


async def test_one_trace_from_publisher_to_the_sink(
    hub_factory: HubFactory, sidecars: Callable[..., Any]
) -> None:
    """The sidecar's receive span continues the publisher's trace; each sink's apply span is
    its child; flushes have spans of their own."""
    trace_id, span_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    with in_memory_tracing() as exporter:
        hub = await hub_factory(subscribe_heartbeat=0.05)
        sc, _ = await sidecars(hub.grpc_port)
        async with asyncio.timeout(WAIT):
            await sc.wait_ready()
        event = ev("user:1", "a")
        event.traceparent = f"00-{trace_id}-{span_id}-01"
        [event_id] = await publish(hub, event)
        async with asyncio.timeout(WAIT):
            await sc.wait_applied(event_id)
        spans = {s.name: s for s in exporter.get_finished_spans()}
    receive, apply = spans["receive"], spans["apply memory"]
    assert receive.context.trace_id == apply.context.trace_id == int(trace_id, 16)
    assert apply.parent is not None and apply.parent.span_id == receive.context.span_id
    assert apply.attributes is not None
    assert apply.attributes["messaging.message.id"] == event_id
    assert "flush memory" in spans
