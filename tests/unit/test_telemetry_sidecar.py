"""The sidecar's span helpers (receive, apply, flush, the app-side apply) and lag exemplars."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from cachewire.common import telemetry as ct
from cachewire.sidecar import telemetry
from cachewire.sidecar.sinks.base import Invalidation, SinkError
from cachewire.v1 import hub_pb2
from tests.otlp import in_memory_tracing

TRACE_A = "0af7651916cd43dd8448eb211c80319c"
TRACE_B = "4bf92f3577b34da6a3ce929d0e0e4736"


def tp(trace_id: str, span: int) -> str:
    return f"00-{trace_id}-{span:016x}-01"


def inv(n: int, traceparent: str = "", **kw: object) -> Invalidation:
    return Invalidation(f"e-{n}", "user:1", traceparent=traceparent, **kw)  # type: ignore[arg-type]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with in_memory_tracing() as exporter:
        yield exporter


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {s.name: s for s in exporter.get_finished_spans()}


def test_one_event_continues_its_trace_through_receive_and_apply(
    spans: InMemorySpanExporter,
) -> None:
    event = inv(1, tp(TRACE_A, 7), keys=("u:1", "u:1:profile"))
    with telemetry.receive_span([event]), telemetry.apply_span("memcached", [event]):
        pass
    got = by_name(spans)
    receive, apply = got["receive"], got["apply memcached"]
    assert receive.kind == SpanKind.CONSUMER
    assert receive.context.trace_id == int(TRACE_A, 16)
    assert receive.parent is not None and receive.parent.span_id == 7
    assert [(link.context.span_id, dict(link.attributes or {})) for link in receive.links] == [
        (7, {"messaging.message.id": "e-1"})
    ]
    assert dict(receive.attributes or {}) == {
        "messaging.system": "cachewire",
        "messaging.operation.name": "receive",
        "messaging.operation.type": "process",
        "messaging.destination.name": "user:1",
        "messaging.message.id": "e-1",
        "cachewire.keys.count": 2,
    }
    assert apply.kind == SpanKind.CLIENT
    assert apply.parent is not None and apply.parent.span_id == receive.context.span_id
    assert apply.context.trace_id == int(TRACE_A, 16)
    assert apply.attributes is not None
    assert apply.attributes["cachewire.sink.name"] == "memcached"
    assert apply.attributes["messaging.message.id"] == "e-1"
    assert apply.attributes["cachewire.keys.count"] == 2


def test_a_batch_from_one_trace_stays_in_it_and_links_every_event(
    spans: InMemorySpanExporter,
) -> None:
    batch = [inv(1, tp(TRACE_A, 1)), inv(2, tp(TRACE_A, 2), keys=("k",)), inv(3, tp(TRACE_A, 3))]
    with telemetry.receive_span(batch), telemetry.apply_span("redis", batch):
        pass
    receive, apply = by_name(spans)["receive"], by_name(spans)["apply redis"]
    assert receive.parent is not None and receive.parent.span_id == 1
    assert [link.context.span_id for link in receive.links] == [1, 2, 3]
    for sp in (receive, apply):
        assert sp.attributes is not None
        assert sp.attributes["messaging.batch.message_count"] == 3
        assert "messaging.message.id" not in sp.attributes
    assert apply.attributes is not None and apply.attributes["cachewire.keys.count"] == 1


def test_a_batch_from_several_traces_starts_its_own_and_links_each_event(
    spans: InMemorySpanExporter,
) -> None:
    batch = [inv(1, tp(TRACE_A, 1)), inv(2, tp(TRACE_B, 2)), inv(3)]  # e-3 carries no context
    with telemetry.receive_span(batch):
        pass
    (receive,) = spans.get_finished_spans()
    assert receive.parent is None
    assert receive.context.trace_id not in (int(TRACE_A, 16), int(TRACE_B, 16))
    assert [(f"{link.context.trace_id:032x}", link.context.span_id) for link in receive.links] == [
        (TRACE_A, 1),
        (TRACE_B, 2),
    ]


def test_a_failing_sink_marks_its_apply_span_and_the_error_propagates(
    spans: InMemorySpanExporter,
) -> None:
    event = inv(1, tp(TRACE_A, 7))
    with (
        pytest.raises(SinkError),
        telemetry.receive_span([event]),
        telemetry.apply_span("memcached", [event]),
    ):
        raise SinkError("memcached did not confirm delete u:1")
    for sp in spans.get_finished_spans():
        assert sp.status.status_code == StatusCode.ERROR
        assert (sp.attributes or {})["error.type"] == "SinkError"


def test_flush_span_names_the_sink_and_the_reason(spans: InMemorySpanExporter) -> None:
    with telemetry.flush_span("memcached", "gap"):
        pass
    (flush,) = spans.get_finished_spans()
    assert flush.name == "flush memcached"
    assert dict(flush.attributes or {}) == {
        "cachewire.sink.name": "memcached",
        "cachewire.flush": True,
        "cachewire.flush.reason": "gap",
    }


def test_the_app_side_apply_continues_the_events_trace(spans: InMemorySpanExporter) -> None:
    event = inv(1, tp(TRACE_A, 9), keys=("u:1",))
    with telemetry.client_apply_span("cachetools", [event]) as span:
        assert span is not None and span.is_recording()
        assert ct.log_fields()["trace_id"] == TRACE_A
    (apply,) = spans.get_finished_spans()
    assert (apply.name, apply.kind) == ("apply cachetools", SpanKind.CONSUMER)
    assert apply.parent is not None and apply.parent.span_id == 9
    assert (apply.attributes or {})["messaging.message.id"] == "e-1"


def test_the_app_side_apply_reads_the_events_protobuf(spans: InMemorySpanExporter) -> None:
    """The client library holds hub_pb2.Event messages, as the local relay delivers them."""
    event = hub_pb2.Event(
        id="e-5", type="user:5", keys=["u:5"], prefixes=["p:5:"], traceparent=tp(TRACE_B, 5)
    )
    with telemetry.client_apply_span("cachetools", [event]):
        pass
    (apply,) = spans.get_finished_spans()
    assert apply.context.trace_id == int(TRACE_B, 16)
    assert apply.parent is not None and apply.parent.span_id == 5
    assert apply.attributes is not None
    assert (
        apply.attributes["cachewire.keys.count"],
        apply.attributes["cachewire.prefixes.count"],
    ) == (1, 1)


def test_every_helper_is_a_no_op_while_tracing_is_off() -> None:
    assert ct.tracer() is None
    event = inv(1, tp(TRACE_A, 7))
    for cm in (
        telemetry.receive_span([event]),
        telemetry.apply_span("memcached", [event]),
        telemetry.flush_span("memcached", "gap"),
        telemetry.client_apply_span("cachetools", [event]),
    ):
        with cm as span:
            assert span is None
            assert ct.log_fields() == {}


def test_apply_lag_exemplars_carry_each_events_trace_id() -> None:
    registry = CollectorRegistry()
    lag = telemetry.ApplyLag(registry)
    batch = [
        inv(1, tp(TRACE_A, 1), published_at=100.0),
        inv(2, "", published_at=99.0),
        inv(3, tp(TRACE_B, 3)),  # no hub receive time: not observed
    ]
    lag.observe("memcached", batch, now=100.004)
    name = "cachewire_sidecar_apply_lag_seconds"
    assert registry.get_sample_value(f"{name}_count", {"sink": "memcached"}) == 2.0
    body, _ = ct.exposition(registry, "application/openmetrics-text")
    text = body.decode()
    assert f'{name}_bucket{{le="0.005",sink="memcached"}} 1.0 # {{trace_id="{TRACE_A}"}}' in text
    assert TRACE_B not in text
