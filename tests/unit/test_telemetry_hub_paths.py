"""The publish span on every path other than HTTP: gRPC `Publish` (metadata and per-event
traceparents) and Plasma channel ingest; the parent/link rule on its own; and the hub's
/metrics content negotiation (OpenMetrics when asked for).

In-process hubs over real gRPC and HTTP, a real redis-server for ingest; spans go to an
in-memory exporter.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import aiohttp
import grpc
import pytest
import redis.asyncio as aioredis
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from cachewire.hub.events import Draft, Event
from cachewire.hub.server import Hub
from cachewire.hub.telemetry import request_context
from cachewire.v1 import hub_pb2, hub_pb2_grpc
from tests.otlp import in_memory_tracing
from tests.servers import Proc, wait_until

TRACE_A = "0af7651916cd43dd8448eb211c80319c"
TRACE_B = "4bf92f3577b34da6a3ce929d0e0e4736"
WAIT = 20.0
HubFactory = Callable[..., Any]


def tp(trace_id: str, span: int) -> str:
    return f"00-{trace_id}-{span:016x}-01"


def carried(sp: ReadableSpan) -> str:
    sc = sp.context
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"


def linked(sp: ReadableSpan) -> list[tuple[str, int]]:
    return [(f"{link.context.trace_id:032x}", link.context.span_id) for link in sp.links]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with in_memory_tracing() as exporter:
        yield exporter


async def history(hub: Hub, after: str) -> Sequence[Event]:
    replay = await hub.broker.replay(after)
    assert replay.reset is None, replay.detail
    return replay.events


# --- the rule: which context is the parent, which are linked ---


def test_one_shared_context_is_the_parent_and_nothing_is_linked() -> None:
    drafts = [Draft("user:1", traceparent=tp(TRACE_A, 1))] * 3
    parent, links = request_context(drafts)
    assert parent is not None and (parent.trace_id, parent.span_id) == (int(TRACE_A, 16), 1)
    assert links == []


def test_no_context_at_all_starts_a_trace() -> None:
    assert request_context([Draft("user:1"), Draft("user:2")], {}) == (None, [])


def test_different_contexts_hang_under_the_requests_own_and_the_others_are_linked_once() -> None:
    drafts = [
        Draft("user:1", traceparent=tp(TRACE_A, 1)),  # the metadata's, by fallback
        Draft("user:2", traceparent=tp(TRACE_B, 2)),
        Draft("user:3", traceparent=tp(TRACE_B, 2)),  # the same context again: one link
        Draft("user:4", traceparent=tp(TRACE_B, 4)),
    ]
    parent, links = request_context(drafts, {"traceparent": tp(TRACE_A, 1)})
    assert parent is not None and parent.span_id == 1
    assert [(f"{x.context.trace_id:032x}", x.context.span_id) for x in links] == [
        (TRACE_B, 2),
        (TRACE_B, 4),
    ]


def test_different_contexts_without_a_request_context_start_a_trace_linking_each() -> None:
    drafts = [Draft("user:1", traceparent=tp(TRACE_A, 1)), Draft("user:2")]
    parent, links = request_context(drafts, {"traceparent": "garbage"})
    assert parent is None
    assert [x.context.span_id for x in links] == [1]


# --- gRPC Publish ---


async def grpc_publish(
    hub: Hub, events: Sequence[hub_pb2.EventInput], metadata: Sequence[tuple[str, str]] = ()
) -> list[str]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{hub.grpc_port}") as channel:
        stub = hub_pb2_grpc.HubStub(channel)  # type: ignore[no-untyped-call]
        response = await stub.Publish(
            hub_pb2.PublishRequest(events=list(events)), metadata=tuple(metadata), timeout=WAIT
        )
    return list(response.ids)


async def test_grpc_metadata_traceparent_is_the_publish_spans_parent(
    hub_factory: HubFactory, spans: InMemorySpanExporter
) -> None:
    hub = await hub_factory()
    head = hub.broker.head_id()
    metadata = [("traceparent", tp(TRACE_A, 7)), ("tracestate", "vendor=abc")]
    (event_id,) = await grpc_publish(hub, [hub_pb2.EventInput(type="user:1")], metadata)
    (span,) = spans.get_finished_spans()
    assert (span.name, span.kind) == ("publish", SpanKind.PRODUCER)
    assert span.context.trace_id == int(TRACE_A, 16)
    assert span.parent is not None and span.parent.span_id == 7
    attrs = dict(span.attributes or {})
    assert (attrs["cachewire.transport"], attrs["messaging.message.id"]) == ("grpc", event_id)
    (event,) = await history(hub, head)
    assert (event.traceparent, event.tracestate) == (carried(span), "vendor=abc")


async def test_grpc_event_traceparent_wins_over_the_metadata_for_one_event(
    hub_factory: HubFactory, spans: InMemorySpanExporter
) -> None:
    hub = await hub_factory()
    event = hub_pb2.EventInput(type="user:1", traceparent=tp(TRACE_B, 9))
    await grpc_publish(hub, [event], [("traceparent", tp(TRACE_A, 7))])
    (span,) = spans.get_finished_spans()
    assert span.context.trace_id == int(TRACE_B, 16)
    assert span.parent is not None and span.parent.span_id == 9


async def test_a_grpc_batch_is_one_span_under_the_metadata_linking_per_event_contexts(
    hub_factory: HubFactory, spans: InMemorySpanExporter
) -> None:
    """Every event carries the one publish span's context, including those that brought a
    context of their own (gRPC EventInput.traceparent): those are linked from it."""
    hub = await hub_factory()
    head = hub.broker.head_id()
    events = [
        hub_pb2.EventInput(type="user:1"),
        hub_pb2.EventInput(type="user:2", traceparent=tp(TRACE_B, 2)),
        hub_pb2.EventInput(type="user:3", traceparent=tp(TRACE_B, 3)),
    ]
    ids = await grpc_publish(hub, events, [("traceparent", tp(TRACE_A, 7))])
    (span,) = spans.get_finished_spans()
    assert (span.name, span.kind) == ("publish", SpanKind.PRODUCER)
    assert span.context.trace_id == int(TRACE_A, 16)
    assert span.parent is not None and span.parent.span_id == 7
    assert linked(span) == [(TRACE_B, 2), (TRACE_B, 3)]
    assert (span.attributes or {})["messaging.batch.message_count"] == 3
    stored = await history(hub, head)
    assert [e.id for e in stored] == ids
    assert {e.traceparent for e in stored} == {carried(span)}


async def test_a_grpc_batch_from_several_traces_without_metadata_starts_its_own(
    hub_factory: HubFactory, spans: InMemorySpanExporter
) -> None:
    hub = await hub_factory()
    events = [
        hub_pb2.EventInput(type="user:1", traceparent=tp(TRACE_A, 1)),
        hub_pb2.EventInput(type="user:2", traceparent=tp(TRACE_B, 2)),
    ]
    await grpc_publish(hub, events)
    (span,) = spans.get_finished_spans()
    assert span.parent is None
    assert span.context.trace_id not in (int(TRACE_A, 16), int(TRACE_B, 16))
    assert linked(span) == [(TRACE_A, 1), (TRACE_B, 2)]


# --- Plasma channel ingest ---


@pytest.fixture
async def redis_client(redis_server: Proc) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(f"redis://127.0.0.1:{redis_server.port}/0")
    yield client
    await client.aclose()


async def test_channel_ingest_publishes_in_a_span_that_starts_the_trace(
    hub_factory: HubFactory,
    redis_server: Proc,
    redis_client: aioredis.Redis,
    spans: InMemorySpanExporter,
) -> None:
    hub = await hub_factory(
        grpc_port=None,
        redis_url=f"redis://127.0.0.1:{redis_server.port}/0",
        redis_channels=("plasma",),
    )
    head = hub.broker.head_id()

    async def subscribed() -> bool:
        return int((await redis_client.pubsub_numsub("plasma"))[0][1]) == 1

    await wait_until(subscribed, WAIT, "the hub subscribed to the channel")
    message = {"meta": {"type": "program:1", "keys": ["p:1"]}, "data": {"views": 3}}
    await redis_client.publish("plasma", json.dumps(message))

    async def published() -> bool:
        return len(spans.get_finished_spans()) == 1

    await wait_until(published, WAIT, "the ingest's publish span")
    (span,) = spans.get_finished_spans()
    assert (span.name, span.kind, span.parent) == ("publish", SpanKind.PRODUCER, None)
    attrs = dict(span.attributes or {})
    assert attrs["cachewire.transport"] == "redis"
    assert attrs["messaging.destination.name"] == "program:1"
    (event,) = await history(hub, head)
    assert event.traceparent == carried(span)
    assert attrs["messaging.message.id"] == event.id


# --- /metrics ---


async def scrape(hub: Hub, accept: str) -> tuple[str, str]:
    url = f"http://127.0.0.1:{hub.http_port}/metrics"
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={"Accept": accept} if accept else {}) as resp,
    ):
        assert resp.status == 200
        return resp.headers["Content-Type"], await resp.text()


async def test_hub_metrics_are_openmetrics_when_the_scraper_asks_and_text_otherwise(
    hub_factory: HubFactory,
) -> None:
    hub = await hub_factory(grpc_port=None)
    prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.2"
    content_type, body = await scrape(hub, prometheus)
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith("# EOF\n")
    assert "cachewire_hub_events_published_total 0.0" in body
    content_type, body = await scrape(hub, "")
    assert content_type.startswith("text/plain; version=0.0.4")
    assert "# EOF" not in body and "cachewire_hub_events_published_total 0.0" in body
