"""The hub's publish spans, in process: real HTTP publishes, real brokers, gRPC Subscribe.

Spans go to an in-memory exporter; the event a subscriber receives must carry the publish
(or create) span's context, so that downstream spans become its children.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import aiohttp
import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from cachewire.common import telemetry as ct
from cachewire.common.logs import JsonFormatter
from cachewire.hub import telemetry
from cachewire.hub.brokers.memory import MemoryBroker
from cachewire.hub.errors import Unavailable
from cachewire.hub.events import Draft, Event
from cachewire.hub.server import Hub
from cachewire.hub.settings import HubSettings
from cachewire.v1 import hub_pb2, hub_pb2_grpc
from tests.otlp import in_memory_tracing
from tests.servers import Proc, start_redis

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"
HEADERS = {"traceparent": f"00-{TRACE}-{SPAN}-01", "tracestate": "vendor=abc"}
HubFactory = Callable[..., Any]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with in_memory_tracing() as exporter:
        yield exporter


async def post(hub: Hub, body: object, headers: dict[str, str] | None = None) -> list[str]:
    url = f"http://127.0.0.1:{hub.http_port}/v1/publish"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=headers or {}) as resp,
    ):
        assert resp.status == 200, await resp.text()
        ids: list[str] = (await resp.json())["ids"]
        return ids


async def history(hub: Hub, after: str) -> Sequence[Event]:
    replay = await hub.broker.replay(after)
    assert replay.reset is None, replay.detail
    return replay.events


def carried(sp: ReadableSpan) -> str:
    sc = sp.context
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


async def test_publish_span_is_a_child_of_the_publishers_traceparent(
    hub_factory: HubFactory, spans: InMemorySpanExporter
) -> None:
    hub = await hub_factory(grpc_port=None)
    head = hub.broker.head_id()
    (event_id,) = await post(hub, {"type": "user:42", "keys": ["u:42", "u:42:p"]}, HEADERS)
    (span,) = spans.get_finished_spans()
    assert (span.name, span.kind) == ("publish", SpanKind.PRODUCER)
    assert span.context.trace_id == int(TRACE, 16)
    assert span.parent is not None and span.parent.span_id == int(SPAN, 16)
    assert span.parent.is_remote
    assert dict(span.attributes or {}) == {
        "messaging.system": "cachewire",
        "messaging.operation.name": "publish",
        "messaging.operation.type": "send",
        "messaging.destination.name": "user:42",
        "messaging.message.id": event_id,
        "cachewire.keys.count": 2,
        "cachewire.transport": "http",
    }
    # The event carries the publish span's context (and the publisher's tracestate).
    (event,) = await history(hub, head)
    assert (event.traceparent, event.tracestate) == (carried(span), "vendor=abc")


async def test_without_a_traceparent_the_trace_starts_at_the_hub(
    hub_factory: HubFactory, spans: InMemorySpanExporter
) -> None:
    hub = await hub_factory(grpc_port=None)
    head = hub.broker.head_id()
    await post(hub, {"type": "user:42"})
    (span,) = spans.get_finished_spans()
    assert span.parent is None and span.context.trace_id != int(TRACE, 16)
    (event,) = await history(hub, head)
    assert event.traceparent == carried(span)


async def test_a_batch_gets_one_publish_span_whose_context_every_event_carries(
    hub_factory: HubFactory, spans: InMemorySpanExporter
) -> None:
    hub = await hub_factory(grpc_port=None)
    head = hub.broker.head_id()
    body = [{"type": "user:1"}, {"type": "user:2", "keys": ["k"]}, {"type": "group:3"}]
    ids = await post(hub, body, HEADERS)
    (publish,) = spans.get_finished_spans()  # one span per request, not one per event
    assert (publish.name, publish.kind) == ("publish", SpanKind.PRODUCER)
    assert publish.context.trace_id == int(TRACE, 16)
    assert publish.parent is not None and publish.parent.span_id == int(SPAN, 16)
    assert publish.links == ()
    assert dict(publish.attributes or {}) == {
        "messaging.system": "cachewire",
        "messaging.operation.name": "publish",
        "messaging.operation.type": "send",
        "messaging.batch.message_count": 3,
        "cachewire.keys.count": 1,
        "cachewire.transport": "http",
    }
    events = await history(hub, head)
    assert [e.id for e in events] == ids
    for event in events:
        assert (event.traceparent, event.tracestate) == (carried(publish), "vendor=abc")


async def test_tracing_off_passes_the_publishers_traceparent_through(
    hub_factory: HubFactory,
) -> None:
    assert ct.tracer() is None
    hub = await hub_factory(grpc_port=None)
    head = hub.broker.head_id()
    await post(hub, {"type": "user:42"}, HEADERS)
    (event,) = await history(hub, head)
    assert (event.traceparent, event.tracestate) == (HEADERS["traceparent"], "vendor=abc")


class FailingBroker:
    async def publish(self, drafts: Sequence[Draft]) -> list[Event]:
        raise Unavailable("redis is down")


@pytest.mark.parametrize("count", [1, 2])
async def test_a_failed_publish_marks_its_spans_as_errors(
    spans: InMemorySpanExporter, count: int
) -> None:
    drafts = [Draft("user:1")] * count
    with pytest.raises(Unavailable):
        await telemetry.publish(FailingBroker(), drafts)  # type: ignore[arg-type]
    (span,) = spans.get_finished_spans()
    assert span.status.status_code == StatusCode.ERROR
    assert (span.attributes or {})["error.type"] == "Unavailable"
    assert [e.name for e in span.events] == ["exception"]


async def test_the_published_log_line_carries_the_publish_spans_ids(
    hub_factory: HubFactory, spans: InMemorySpanExporter
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("cachewire.hub.publish")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        hub = await hub_factory(grpc_port=None)
        (event_id,) = await post(hub, {"type": "user:42"}, HEADERS)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    (line,) = [json.loads(x) for x in stream.getvalue().splitlines() if '"published"' in x]
    (span,) = spans.get_finished_spans()
    assert line["ids"] == [event_id]
    assert (line["trace_id"], line["span_id"]) == (TRACE, f"{span.context.span_id:016x}")


async def subscribe_first_event(hub: Hub, resume_from: str = "") -> hub_pb2.Event:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{hub.grpc_port}") as channel:
        call = hub_pb2_grpc.HubStub(channel).Subscribe(  # type: ignore[no-untyped-call]
            hub_pb2.SubscribeRequest(topics=["user"], resume_from=resume_from)
        )
        async with asyncio.timeout(20):
            async for resp in call:
                if resp.WhichOneof("message") == "events":
                    call.cancel()
                    event: hub_pb2.Event = resp.events.events[0]
                    return event
    raise AssertionError("the stream ended without an event")


@pytest.mark.parametrize("broker", ["memory", "redis"])
async def test_grpc_subscribers_receive_the_publish_spans_context_live_and_on_resume(
    hub_factory: HubFactory, spans: InMemorySpanExporter, procs: list[Proc], broker: str
) -> None:
    """The context travels in the event through the broker, over gRPC, and in history."""
    if broker == "redis":
        redis = start_redis()
        procs.append(redis)
        settings = HubSettings(
            http_port=0, grpc_port=0, broker="redis", redis_url=f"redis://127.0.0.1:{redis.port}/0"
        )
        hub = Hub(settings)
        await hub.start()
    else:
        hub = await hub_factory()
    try:
        await _check_grpc_delivery(hub, spans)
    finally:
        if broker == "redis":
            await hub.stop(grace=0.5)


async def _check_grpc_delivery(hub: Hub, spans: InMemorySpanExporter) -> None:
    head = hub.broker.head_id()
    live = asyncio.create_task(subscribe_first_event(hub))
    async with asyncio.timeout(20):
        await hub.fanout.wait_subscribers(1, "grpc")
    (event_id,) = await post(hub, {"type": "user:42"}, HEADERS)
    (span,) = spans.get_finished_spans()
    delivered = await live
    replayed = await subscribe_first_event(hub, resume_from=head)
    for event in (delivered, replayed):
        assert event.id == event_id
        assert event.traceparent == carried(span)
        assert event.tracestate == "vendor=abc"
        sc = ct.span_context(event.traceparent, event.tracestate)
        assert sc is not None and sc.trace_id == int(TRACE, 16)
        assert sc.span_id == span.context.span_id


async def test_the_sampler_from_the_environment_is_honoured_and_context_still_flows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OTEL_TRACES_SAMPLER=always_off: nothing is recorded, yet the event carries a context."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    provider = ct.build_provider("cachewire-hub", {"OTEL_TRACES_EXPORTER": "none"})
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    ct.install(provider)
    try:
        broker = MemoryBroker()
        (event,) = await telemetry.publish(
            broker, [Draft("user:1", traceparent=HEADERS["traceparent"])]
        )
    finally:
        ct.install(None)
        provider.shutdown()
    assert exporter.get_finished_spans() == ()
    sc = ct.span_context(event.traceparent)
    assert sc is not None and sc.trace_id == int(TRACE, 16) and not sc.trace_flags.sampled
    assert sc.span_id != int(SPAN, 16)
