"""Tracing end to end: `cachewire-hub` processes export to a real OTLP receiver.

The hub is started as a user starts it, with OTEL_* variables pointing at a collector built
on opentelemetry-proto's service definitions (gRPC) or at an OTLP/HTTP receiver; the test
publishes over HTTP with and without a W3C traceparent and asserts the spans' parent/child
and link structure, and that gRPC subscribers receive the publish span's context.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from cachewire.v1 import hub_pb2, hub_pb2_grpc
from tests.otlp import Collector, OtlpGrpcCollector, OtlpHttpCollector, ReceivedSpan
from tests.servers import Proc, http_ok, wait_for

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE}-{SPAN}-01"
HubProcess = Callable[..., Proc]


@pytest.fixture(params=["grpc", "http/protobuf"])
def collector(request: pytest.FixtureRequest, procs: list[Proc]) -> Iterator[Collector]:
    """An OTLP receiver for each exporter protocol."""
    with OtlpGrpcCollector() if request.param == "grpc" else OtlpHttpCollector() as c:
        yield c
        stop_first(procs)


@pytest.fixture
def grpc_collector(procs: list[Proc]) -> Iterator[Collector]:
    with OtlpGrpcCollector() as c:
        yield c
        stop_first(procs)


def stop_first(procs: list[Proc]) -> None:
    """Stop the test's processes while the receiver still runs: their last spans are
    flushed to it, and their exit does not wait on an exporter retrying a dead endpoint."""
    for proc in reversed(procs):
        proc.stop()


def publish(hub: Proc, body: Any, traceparent: str = "") -> list[str]:
    headers = {"Content-Type": "application/json"}
    if traceparent:
        headers |= {"traceparent": traceparent, "tracestate": "vendor=abc"}
    req = urllib.request.Request(
        f"http://127.0.0.1:{hub.ports['http']}/v1/publish",
        data=json.dumps(body).encode(),
        headers=headers,
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        ids: list[str] = json.load(resp)["ids"]
        return ids


def head_id(hub: Proc) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{hub.ports['http']}/readyz", timeout=5) as r:
        head: str = json.load(r)["head"]
        return head


def log_lines(hub: Proc) -> list[dict[str, Any]]:
    lines = []
    for line in hub.log().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def carried(span: ReceivedSpan) -> str:
    return f"00-{span.trace_id}-{span.span_id}-"


def test_a_publish_with_a_traceparent_exports_a_child_publish_span(
    hub_process: HubProcess, collector: Collector
) -> None:
    hub = hub_process(
        "--log-level", "debug", grpc=False, env=collector.env(OTEL_SERVICE_NAME="hub-e2e")
    )
    (event_id,) = publish(hub, {"type": "user:42", "keys": ["u:42"]}, TRACEPARENT)
    (span,) = collector.wait_for_spans(lambda s: s.name == "publish")
    assert (span.kind, span.trace_id, span.parent_span_id) == ("PRODUCER", TRACE, SPAN)
    assert span.service == "hub-e2e"
    assert span.attributes["messaging.system"] == "cachewire"
    assert span.attributes["messaging.operation.type"] == "send"
    assert span.attributes["messaging.destination.name"] == "user:42"
    assert span.attributes["messaging.message.id"] == event_id
    assert span.attributes["cachewire.keys.count"] == 1
    assert span.status == "UNSET"
    # The debug line for the publish carries the publish span's ids.
    wait_for(lambda: any(x["msg"] == "published" for x in log_lines(hub)), what="log line")
    (line,) = [x for x in log_lines(hub) if x["msg"] == "published"]
    assert (line["trace_id"], line["span_id"], line["ids"]) == (TRACE, span.span_id, [event_id])


def test_a_publish_without_context_starts_its_trace_at_the_hub(
    hub_process: HubProcess, grpc_collector: Collector
) -> None:
    hub = hub_process(grpc=False, env=grpc_collector.env())
    (event_id,) = publish(hub, {"type": "user:42"})
    (span,) = grpc_collector.wait_for_spans(lambda s: s.name == "publish")
    assert span.parent_span_id == "" and span.trace_id != TRACE
    assert span.attributes["messaging.message.id"] == event_id
    assert span.service == "cachewire-hub"  # the default service.name


def test_a_batch_exports_one_publish_span_whose_context_every_event_carries(
    hub_process: HubProcess, grpc_collector: Collector
) -> None:
    hub = hub_process(env=grpc_collector.env())
    head = head_id(hub)
    ids = publish(hub, [{"type": "user:1"}, {"type": "user:2"}, {"type": "user:3"}], TRACEPARENT)
    (batch,) = grpc_collector.wait_for_spans(lambda s: s.name == "publish")
    assert (batch.kind, batch.trace_id, batch.parent_span_id) == ("PRODUCER", TRACE, SPAN)
    assert batch.attributes["messaging.batch.message_count"] == 3
    assert batch.links == ()
    # Spans that ended before it were exported with it or earlier: it is the only one.
    assert [s.name for s in grpc_collector.spans] == ["publish"]
    events = replayed(hub, head, len(ids))
    assert [e.id for e in events] == ids
    for event in events:
        assert event.traceparent.startswith(carried(batch))


def replayed(hub: Proc, resume_from: str, count: int) -> list[hub_pb2.Event]:
    """The first `count` events of topic user after `resume_from`, over gRPC Subscribe."""
    events: list[hub_pb2.Event] = []
    with grpc.insecure_channel(f"127.0.0.1:{hub.ports['grpc']}") as channel:
        call = hub_pb2_grpc.HubStub(channel).Subscribe(  # type: ignore[no-untyped-call]
            hub_pb2.SubscribeRequest(topics=["user"], resume_from=resume_from), timeout=20
        )
        for resp in call:
            if resp.WhichOneof("message") == "events":
                events.extend(resp.events.events)
                if len(events) >= count:
                    call.cancel()
                    return events
    raise AssertionError(f"the Subscribe stream ended after {len(events)} events")


def first_event(hub: Proc, resume_from: str = "") -> hub_pb2.Event:
    with grpc.insecure_channel(f"127.0.0.1:{hub.ports['grpc']}") as channel:
        call = hub_pb2_grpc.HubStub(channel).Subscribe(  # type: ignore[no-untyped-call]
            hub_pb2.SubscribeRequest(topics=["user"], resume_from=resume_from), timeout=20
        )
        for resp in call:
            if resp.WhichOneof("message") == "events":
                call.cancel()
                event: hub_pb2.Event = resp.events.events[0]
                return event
    raise AssertionError("the Subscribe stream ended without an event")


def grpc_subscribers(hub: Proc) -> int:
    url = f"http://127.0.0.1:{hub.ports['http']}/metrics/plasma"
    with urllib.request.urlopen(url, timeout=5) as resp:
        count: int = json.load(resp)["connections_grpc"]
        return count


@pytest.mark.parametrize("broker", ["memory", "redis"])
def test_grpc_subscribers_receive_the_publish_spans_context(
    hub_process: HubProcess,
    grpc_collector: Collector,
    procs: list[Proc],
    broker: str,
) -> None:
    """Live and on resume, the delivered Event's traceparent names the hub's publish span."""
    args: list[str] = []
    if broker == "redis":
        from tests.servers import start_redis

        redis = start_redis()
        procs.append(redis)
        args = ["--broker", "redis", "--redis-url", f"redis://127.0.0.1:{redis.port}/0"]
    hub = hub_process(*args, env=grpc_collector.env())
    head = head_id(hub)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        live = pool.submit(first_event, hub)
        wait_for(lambda: grpc_subscribers(hub) >= 1, timeout=20, what="a gRPC subscriber")
        (event_id,) = publish(hub, {"type": "user:42"}, TRACEPARENT)
        delivered = live.result(timeout=30)
    replayed = first_event(hub, resume_from=head)
    (span,) = grpc_collector.wait_for_spans(lambda s: s.name == "publish")
    assert span.parent_span_id == SPAN
    for event in (delivered, replayed):
        assert event.id == event_id
        assert event.traceparent.startswith(carried(span))
        assert event.tracestate == "vendor=abc"


def test_spans_still_buffered_are_exported_when_the_hub_stops(
    hub_process: HubProcess, grpc_collector: Collector
) -> None:
    # A one-minute batch delay: only the flush at stop can deliver the span in time.
    env = grpc_collector.env(OTEL_BSP_SCHEDULE_DELAY="60000")
    hub = hub_process(grpc=False, env=env)
    publish(hub, {"type": "user:42"}, TRACEPARENT)
    assert hub.stop() == 0
    assert [s.name for s in grpc_collector.spans] == ["publish"]


def test_tracing_off_exports_nothing(hub_process: HubProcess, grpc_collector: Collector) -> None:
    """OTEL_TRACES_EXPORTER=none wins over an endpoint; the traceparent passes through."""
    hub = hub_process(
        "--log-level", "debug", grpc=False, env=grpc_collector.env(OTEL_TRACES_EXPORTER="none")
    )
    publish(hub, {"type": "user:42"}, TRACEPARENT)
    assert hub.stop() == 0
    assert grpc_collector.requests == 0 and grpc_collector.spans == []
    lines = log_lines(hub)
    assert any(x["msg"].startswith("tracing off") for x in lines)
    (published,) = [x for x in lines if x["msg"] == "published"]
    assert "trace_id" not in published


def test_a_bad_otel_setting_is_logged_and_the_hub_serves_without_tracing(
    hub_process: HubProcess, grpc_collector: Collector
) -> None:
    hub = hub_process(grpc=False, env=grpc_collector.env(OTEL_TRACES_EXPORTER="zipkin"))
    assert publish(hub, {"type": "user:42"})
    assert http_ok(f"http://127.0.0.1:{hub.ports['http']}/readyz")
    (error,) = [x for x in log_lines(hub) if x["level"] == "error"]
    assert error["msg"] == (
        "tracing off: OTEL_TRACES_EXPORTER='zipkin' is not supported (one or more of otlp, "
        "console, none)"
    )
